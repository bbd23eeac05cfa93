"""Record what a run was made of: code version and the dataset manifest, in every logger."""

from __future__ import annotations

import lightning as L

from lightning_glue.tracking import code_version


def manifest_summary(manifest: dict) -> dict:
    """The manifest without per-file detail too long for a config: split, counts, shard hashes."""
    return {
        "split": manifest.get("split"),
        "source": manifest.get("cub_root"),
        "skipped_files": manifest.get("skipped", {}).get("count"),
        **{f"{name}_images": info["images"] for name, info in manifest.get("splits", {}).items()},
        **{f"{name}_captions": info["captions"] for name, info in manifest.get("splits", {}).items()},
        "shard_sha256": {s["file"]: s["sha256"] for info in manifest.get("splits", {}).values()
                         for s in info["shards"]},
    }


class RunFactsCallback(L.Callback):
    """At the start of fit/validate/test, log the code version and the dataset manifest."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        facts = {"code": code_version()}
        manifest = getattr(trainer.datamodule, "manifest", None)
        if manifest is not None:
            facts["data_manifest"] = manifest_summary(manifest)
        for logger in trainer.loggers:
            logger.log_hyperparams(facts)
