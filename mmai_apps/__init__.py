"""MMAI's apps: the ``mmai`` command and everything it runs.

The top of three layers, each importing only downward (docs/ARCHITECTURE.md, "Layers"):

* apps, this package: the entry point (``cli``), the LightningCLI wiring (``lightning_cli``),
  ``ablate``, ``demo``, the sweep runner, the dashboard (``serve``), the memory CLI
  (``memory_cli``), ``mmai saliency`` (``explain``), the benchmarks (``bench``), and the packaged
  ``configs/`` and ``sweeps/`` (``resources``);
* adapters: ``lightning_modules``, ``datamodules``, ``callbacks`` and their shared
  ``lightning_glue``;
* the library: ``mmai``.

Nothing imports an app.
"""
