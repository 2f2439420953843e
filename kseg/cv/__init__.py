"""Cross-validation on out-of-fold predictions: blends of runs and the report."""
