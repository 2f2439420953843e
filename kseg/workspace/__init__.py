"""The work folder: its paths and files (one owner), folds' status, and what a blend pins."""
