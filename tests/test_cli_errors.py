"""`mmai fit` and `mmai data` user errors: the message alone (exit 2); the traceback with --debug."""

from __future__ import annotations

import pytest

from fit_helpers import tiny_args
from mmai_apps.cli import main


def test_fit_with_a_missing_checkpoint_prints_the_message_without_a_traceback(synth_shards, tmp_path, capsys):
    args = ["fit", *tiny_args(synth_shards, tmp_path / "runs"), "--ckpt_path", str(tmp_path / "nope.ckpt")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "mmai fit: error: " in err and "nope.ckpt" in err and "mmai_apps/lightning_cli.py" not in err
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        main([*args, "--debug"])


def test_fit_from_a_garbage_checkpoint_says_not_a_checkpoint(synth_shards, tmp_path, capsys):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint\\n" * 20)
    assert main(["fit", *tiny_args(synth_shards, tmp_path / "runs"), "--model.init_from", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert f"model.init_from '{garbage}' is not a checkpoint" in err
    assert "weights_only" not in err and "mmai/checkpoint.py" not in err  # no traceback of ours
    assert err.rstrip().endswith("(run with --debug or MMAI_DEBUG=1 for the traceback)")


def test_the_apps_hide_only_the_known_harmless_warnings():
    import warnings

    from mmai_apps.cli import quiet_known_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`")
        warnings.warn(".with_length() only sets the value of __len__ for compatibility")
        warnings.warn("checkpoint directory exists and is not empty")  # a real warning stays
    assert [str(w.message) for w in caught] == ["checkpoint directory exists and is not empty"]


# ------------------------------------------------------------------------------ mmai data
def test_data_shards_on_a_full_disk_is_one_line_naming_the_path(synth_shards, tmp_path, capsys, monkeypatch):
    import errno
    import tarfile

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "addfile", full)
    out = tmp_path / "shards"
    assert main(["data", "shards", "--cub-root", str(synth_shards.parent / "synth"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(out) in err and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]  # beside the progress bar's lines
    assert len(errors) == 1 and errors[0].startswith("mmai data shards: error: ") and not out.exists()


def test_a_standard_split_with_an_empty_val_split_warns_and_inspect_says_so(synth_shards, tmp_path, capsys):
    out = tmp_path / "standard"
    assert main(["data", "shards", "--cub-root", str(synth_shards.parent / "synth"), "--out", str(out),
                 "--split", "standard", "--samples-per-shard", "8"]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "val" in line and "0 images" in line]
    assert len(warning) == 1 and "--split zero-shot" in warning[0]
    assert main(["data", "inspect", "--shards", str(out), "--split", "val", "--num-workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "split 'val'" in err and "0 images" in err and "IndexError" not in err and "Traceback" not in err


# ------------------------------------------------------------------------- saliency and sweep
@pytest.mark.parametrize("checkpoint", ["missing", "garbage"])
def test_saliency_with_a_bad_checkpoint_is_one_line(tmp_path, capsys, checkpoint):
    from PIL import Image

    image = tmp_path / "bird.png"
    Image.new("RGB", (32, 32), "orange").save(image)
    ckpt = tmp_path / "reranker.ckpt"
    if checkpoint == "garbage":
        ckpt.write_bytes(b"not a checkpoint\n" * 20)
    assert main(["saliency", "--checkpoint", str(ckpt), "--image", str(image), "--query", "a bird"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmai saliency: error: ") and str(ckpt) in err and "Traceback" not in err


def test_sweep_run_of_a_missing_or_unreadable_sweep_file_is_one_line(tmp_path, capsys):
    assert main(["sweep", "run", str(tmp_path / "nope.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmai sweep: error: ") and "nope.yaml" in err and "Traceback" not in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: [grid\nparameters: {\n")
    assert main(["sweep", "run", str(broken), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmai sweep: error: ") and str(broken) in err and "Traceback" not in err


def test_inspect_counts_distinct_images_against_the_split(synth_shards, capsys):
    """The training stream repeats images to fill every worker's batches: inspect says how many
    distinct images it saw of the split's, not only how many it streamed."""
    assert main(["data", "inspect", "--shards", str(synth_shards), "--split", "val", "--num-workers", "0",
                 "--batch-size", "4", "--image-size", "32"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("val: "))
    import json
    total = json.loads((synth_shards / "manifest.json").read_text())["splits"]["val"]["images"]
    assert f"{total} images streamed, {total} distinct of the split's {total}," in line, line
