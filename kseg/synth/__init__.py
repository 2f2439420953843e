"""Synthetic competitions (``kseg synth``): aerial scenes and the shapes of other Kaggle downloads."""
