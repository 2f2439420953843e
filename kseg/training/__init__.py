"""Training: the fold run, its loop and state, datasets and loaders, losses, optimisers, validation, trackers, several
processes, pseudo-labels.
"""
