"""The CUB reader and the shard writer, on a tiny CUB root with the real release's quirks."""

import io
import json
import tarfile

import pytest
from PIL import Image

from cub_fixture import CLASSES, write_tiny_cub
from mmai.data.cub import CUBLayoutError, read_captions, read_cub, split_images
from mmai.data.shards import read_manifest, write_shards


@pytest.fixture()
def cub(tmp_path):
    return write_tiny_cub(tmp_path / "raw")


def _tar_members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_reader_finds_roots_from_parent_and_cleans_captions(cub):
    index = read_cub(cub)
    assert index.root.name == "CUB_200_2011" and index.captions_root.name == "cvpr2016_cub"
    assert [i.image_id for i in index.images] == list(range(1, 17))
    captions = read_captions(index, index.images[0])
    assert len(captions) == 10 and all(c == c.strip() and c for c in captions)


def test_zero_shot_split_follows_class_lists_and_standard_split_keeps_test_apart(cub):
    index = read_cub(cub)
    zero = split_images(index, "zero-shot")
    assert {i.class_name for i in zero["train"]} == set(CLASSES[:2])
    assert {i.class_name for i in zero["val"]} == {CLASSES[2]}
    assert {i.class_name for i in zero["test"]} == {CLASSES[3]}
    standard = split_images(index, "standard")
    assert all(not i.is_train for i in standard["test"])
    assert {i.image_id for i in standard["train"]}.isdisjoint(i.image_id for i in standard["val"])
    assert sum(map(len, standard.values())) == 16


def test_shards_round_trip_every_image_and_caption_as_rgb(cub, tmp_path):
    manifest = write_shards(cub, tmp_path / "shards", samples_per_shard=3, progress=False)
    index = read_cub(cub)
    seen = {}
    for split, info in manifest["splits"].items():
        assert sum(s["samples"] for s in info["shards"]) == info["images"]
        for shard in info["shards"]:
            members = _tar_members(tmp_path / "shards" / shard["file"])
            for name, data in members.items():
                if name.endswith(".json"):
                    meta = json.loads(data)
                    seen[meta["image_id"]] = (split, meta)
                    with Image.open(io.BytesIO(members[name.replace(".json", ".jpg")])) as image:
                        assert image.mode == "RGB"  # grayscale and CMYK converted
    assert sorted(seen) == [i.image_id for i in index.images]
    for image in index.images:
        assert seen[image.image_id][1]["captions"] == read_captions(index, image)
    assert manifest["splits"]["train"]["captions"] == 10 * manifest["splits"]["train"]["images"]
    assert read_manifest(tmp_path / "shards")["skipped"]["count"] == 0


def test_shards_are_byte_identical_across_runs(cub, tmp_path):
    first = write_shards(cub, tmp_path / "a", samples_per_shard=5, progress=False)
    second = write_shards(cub, tmp_path / "b", samples_per_shard=5, progress=False)
    hashes = lambda m: [s["sha256"] for info in m["splits"].values() for s in info["shards"]]  # noqa: E731
    assert hashes(first) == hashes(second)


def test_missing_files_are_listed_all_at_once(cub, tmp_path):
    index = read_cub(cub)
    gone = [index.image_path(index.images[0]), index.caption_path(index.images[5])]
    for path in gone:
        path.unlink()
    with pytest.raises(CUBLayoutError) as error:
        write_shards(cub, tmp_path / "shards", progress=False)
    message = str(error.value)
    assert "2 missing or unreadable" in message and all(str(p) in message for p in gone)
    assert "--skip-bad" in message
    assert not (tmp_path / "shards" / "manifest.json").exists()


def test_skip_bad_counts_corrupt_and_missing_files_in_the_manifest(cub, tmp_path):
    index = read_cub(cub)
    index.image_path(index.images[0]).unlink()
    index.image_path(index.images[1]).write_bytes(b"\xff\xd8 not really a jpeg")
    manifest = write_shards(cub, tmp_path / "shards", skip_bad=True, progress=False)
    assert manifest["skipped"]["count"] == 2
    assert sum(info["images"] for info in manifest["splits"].values()) == 14


def test_broken_tables_name_file_and_line(cub):
    labels = cub / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("5 2\n", "5\n"))
    (cub / "CUB_200_2011" / "classes.txt").unlink()
    with pytest.raises(CUBLayoutError, match="classes.txt") as error:
        read_cub(cub)
    assert "image_class_labels.txt:5" in str(error.value)


def test_manifest_missing_gives_the_command_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="mmai data shards"):
        read_manifest(tmp_path)


def test_shards_mix_classes_instead_of_following_cub_class_order(tmp_path):
    write_tiny_cub(tmp_path / "raw", images_per_class=8)  # 2 train classes x 8 images
    manifest = write_shards(tmp_path / "raw", tmp_path / "shards", samples_per_shard=4, progress=False)
    classes_per_shard = []
    for shard in manifest["splits"]["train"]["shards"]:
        members = _tar_members(tmp_path / "shards" / shard["file"])
        classes_per_shard.append({json.loads(v)["class_id"] for k, v in members.items() if k.endswith(".json")})
    assert sum(len(c) > 1 for c in classes_per_shard) >= 2  # class-ordered writing gives one class per shard


# ---------------------------------------------------------------------- failed runs, stale shards, verification
def _folder(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_a_failed_run_leaves_the_existing_shard_folder_exactly_as_it_was(cub, tmp_path):
    write_shards(cub, tmp_path / "shards", samples_per_shard=3, progress=False)
    before = _folder(tmp_path / "shards")
    index = read_cub(cub)
    index.image_path(index.images[3]).write_bytes(b"\xff\xd8 not really a jpeg")  # found only when decoded
    with pytest.raises(CUBLayoutError, match="1 missing or unreadable"):
        write_shards(cub, tmp_path / "shards", samples_per_shard=5, progress=False)
    assert _folder(tmp_path / "shards") == before  # no new tars beside the old manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "shards"]  # no temporary folder left
    from mmai.data.shards import verify_shards

    verify_shards(tmp_path / "shards", full=True)


def test_a_new_run_removes_the_shards_of_an_earlier_run(cub, tmp_path):
    first = write_shards(cub, tmp_path / "shards", samples_per_shard=1, progress=False)
    second = write_shards(cub, tmp_path / "shards", samples_per_shard=8, progress=False)
    listed = {s["file"] for info in second["splits"].values() for s in info["shards"]}
    assert len(listed) < len({s["file"] for info in first["splits"].values() for s in info["shards"]})
    assert {p.name for p in (tmp_path / "shards").glob("*.tar")} == listed


def test_output_folder_with_other_files_is_refused_and_kept(cub, tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "notes.txt").write_text("mine")
    with pytest.raises(CUBLayoutError, match=r"holds files that are not shards of an earlier run \(notes.txt\)"):
        write_shards(cub, tmp_path / "shards", progress=False)
    assert _folder(tmp_path / "shards") == {"notes.txt": b"mine"}


def test_verify_shards_names_a_truncated_or_changed_shard_and_says_to_rewrite(cub, tmp_path):
    from mmai.data.shards import ShardError, verify_shards

    manifest = write_shards(cub, tmp_path / "shards", samples_per_shard=3, progress=False)
    shards = tmp_path / "shards"
    assert verify_shards(shards, manifest) == 0  # sizes and mtimes as when written: nothing hashed
    assert verify_shards(shards, manifest, full=True) == sum(len(i["shards"]) for i in manifest["splits"].values())
    first = shards / manifest["splits"]["train"]["shards"][0]["file"]
    data = first.read_bytes()
    first.write_bytes(data[:-512])
    with pytest.raises(ShardError, match=rf"shard {first} has {len(data) - 512} bytes.*mmai data shards"):
        verify_shards(shards, manifest)
    first.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes, new mtime
    with pytest.raises(ShardError, match=rf"shard {first} has sha256 .*rewrite the shards"):
        verify_shards(shards, manifest)
    first.unlink()
    with pytest.raises(ShardError, match=rf"shard {first} is missing"):
        verify_shards(shards, manifest)


def test_missing_and_undecodable_files_are_listed_together(cub, tmp_path):
    index = read_cub(cub)
    gone, broken = index.image_path(index.images[0]), index.image_path(index.images[6])
    gone.unlink()
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(CUBLayoutError) as error:
        write_shards(cub, tmp_path / "shards", progress=False)
    assert "2 missing or unreadable" in str(error.value)
    assert f"{gone}: missing" in str(error.value) and f"{broken}: " in str(error.value)
    assert not (tmp_path / "shards").exists()


def test_a_caption_file_with_fewer_lines_is_warned_about_and_counted(cub, tmp_path, capsys):
    index = read_cub(cub)
    short = index.caption_path(index.images[2])
    short.write_text("a bird.\na small bird.\na red bird.\n")
    manifest = write_shards(cub, tmp_path / "shards", progress=False)
    assert manifest["short_captions"] == {"expected": 10, "count": 1, "files": [{"path": str(short), "captions": 3}]}
    assert f"warning: {short}: 3 caption line(s), most files have 10" in capsys.readouterr().err


def test_a_table_that_is_not_utf8_is_named(cub):
    classes = cub / "CUB_200_2011" / "classes.txt"
    classes.write_bytes(classes.read_bytes() + "201 Bécasse\n".encode("latin-1"))
    with pytest.raises(CUBLayoutError, match=rf"{classes} is not UTF-8 text \(byte 0xe9"):
        read_cub(cub)


def test_data_shards_and_inspect_errors_print_the_message_without_a_traceback(cub, tmp_path, capsys, monkeypatch):
    from mmai_apps.cli import main

    (cub / "CUB_200_2011" / "classes.txt").unlink()
    assert main(["data", "shards", "--cub-root", str(cub), "--out", str(tmp_path / "shards")]) == 2
    err = capsys.readouterr().err
    assert "mmai data: error: " in err and "classes.txt" in err and "Traceback" not in err and "--debug" in err
    with pytest.raises(CUBLayoutError):
        main(["data", "shards", "--cub-root", str(cub), "--out", str(tmp_path / "shards"), "--debug"])
    monkeypatch.setenv("MMAI_DEBUG", "1")
    with pytest.raises(CUBLayoutError):
        main(["data", "shards", "--cub-root", str(cub), "--out", str(tmp_path / "shards")])


def test_data_inspect_refuses_a_damaged_shard_naming_it(cub, tmp_path, capsys):
    from mmai_apps.cli import main

    manifest = write_shards(cub, tmp_path / "shards", samples_per_shard=3, progress=False)
    shard = tmp_path / "shards" / manifest["splits"]["val"]["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:1024])
    assert main(["data", "inspect", "--shards", str(tmp_path / "shards"), "--split", "val", "--num-workers", "0"]) == 2
    err = capsys.readouterr().err
    assert f"shard {shard} has 1024 bytes" in err and "rewrite the shards" in err and "Traceback" not in err
