import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def pytest_collection_modifyitems(config, items):
    """Fast tests first, `slow` ones last: CI reports the fast ones even if time runs short."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


@pytest.fixture(scope="session")
def synth_shards(tmp_path_factory):
    """Shards of a tiny synthetic CUB (8 species, 64 images at 64 px, no songs), read-only, shared."""
    from mmai.data.shards import write_shards
    from mmai.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root / "synth", classes=8, images=64, image_size=64, audio=False, workers=1, progress=False)
    write_shards(root / "synth", root / "shards", samples_per_shard=8, progress=False)
    return root / "shards"
