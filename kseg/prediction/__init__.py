"""Prediction: one image to probabilities (TTA, ensembles of folds and blends), streamed inference."""
