"""Pictures for people: saliency panels drawn with PIL (``panels.py``). No model code."""
