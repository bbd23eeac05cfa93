"""The stage-1 model: the towers (``towers/``), the bi-encoder that projects them to one space
(``bi_encoder.py``), its momentum key encoder and queue (``momentum.py``), the contrastive losses
(``losses.py``) and the torch.distributed helpers they gather with (``distributed.py``)."""
