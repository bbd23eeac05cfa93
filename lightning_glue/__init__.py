"""Lightning glue: the Lightning-side code that more than one adapter package needs.

``lightning_modules/`` (LightningModules), ``datamodules/`` (LightningDataModules) and
``callbacks/`` (Callbacks) are independent of one another; whatever two of them share lives
here instead: the evaluation-set collection and gathering (``eval_set``), the W&B logger and code
facts (``tracking``), and the feature cache's Lightning side (``feature_cache``). It may import
``mmai`` and Lightning, never an adapter package or an app (pyproject.toml's import-linter
contract checks this).
"""
