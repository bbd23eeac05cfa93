"""MMAI: Multimodal Memory AI.

Two-stage (bi-encoder + fusion re-ranker), graph-augmented retrieval of personal memories,
and the library that the Lightning adapters (``lightning_modules/``, ``datamodules/``,
``callbacks/``, ``lightning_glue/``) and the apps (``mmai_apps/``) are built on. This package
imports neither, and never Lightning or Gradio.
"""

__version__ = "0.1.0"
