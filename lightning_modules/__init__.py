"""LightningModules: thin adapters over ``mmai`` (``BiEncoderModule``, ``RerankerModule``)."""
