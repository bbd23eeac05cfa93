import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def pytest_collection_modifyitems(config, items):
    """Fast tests first, `slow` ones last: CI reports the fast ones even if time runs short."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
