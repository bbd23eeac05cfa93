"""Lightning DataModules: thin adapters over ``mmai.data``."""

from datamodules.cub_web import CUBWebDataModule

__all__ = ["CUBWebDataModule"]
