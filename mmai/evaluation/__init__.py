"""Measuring retrieval: Recall@K and rankings (``metrics.py``), the binding and burst probes
(``probes.py``), paired intervals over independent units (``stats.py``) and the per-query outcomes
every evaluation stage is scored by (``outcomes.py``)."""
