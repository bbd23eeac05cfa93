"""MMAI: Multimodal Memory AI.

Two-stage (bi-encoder + fusion re-ranker), graph-augmented retrieval of personal memories,
and the library the Lightning experiment project in ``lightning_modules/``, ``datamodules/``
and ``callbacks/`` is built on. This package never imports Lightning.
"""

__version__ = "0.1.0"
