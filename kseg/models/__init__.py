"""Models: building them from the config, pretrained weights offline, checkpoints and their averages."""
