"""Scores as Kaggle computes them: per-row Dice and IoU, instance F-beta."""
