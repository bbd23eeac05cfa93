"""The stage-2 re-ranker: the fusion model whose caption tokens cross-attend to image patches
(``fusion.py``), the negatives it is trained on (``negatives.py``), its grounding supervision and
pointing game (``grounding.py``) and the saliency maths over its attention (``saliency.py``; the
panels are drawn by :mod:`mmai.viz`)."""
