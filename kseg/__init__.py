"""kseg: from a Kaggle semantic-segmentation download to a validated submission.csv."""

__version__ = "0.1.0"
