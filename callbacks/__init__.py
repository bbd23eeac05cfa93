"""Lightning callbacks: thin adapters over ``mmai``."""

from callbacks.model_summary import ParameterSummary
from callbacks.retrieval import RetrievalEvalCallback
from callbacks.run_facts import RunFactsCallback
from callbacks.saliency import SaliencyPanelCallback
from callbacks.sweep_metrics import SweepMetricsCallback

__all__ = ["ParameterSummary", "RetrievalEvalCallback", "RunFactsCallback", "SaliencyPanelCallback", "SweepMetricsCallback"]
