"""LightningModules and the LightningCLI entry point: thin adapters over ``mmai``."""
