"""Lightning callbacks: thin adapters over ``mmai``."""

from callbacks.run_facts import RunFactsCallback

__all__ = ["RunFactsCallback"]
