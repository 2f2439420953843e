"""Errors kseg raises on bad input.

Every message is one sentence that names the bad value (file, key, number) and says how to fix it;
the command line prints it as one red line and exits non-zero.
"""


class KsegError(Exception):
    """Base class of every error caused by the user's data, config or command line."""


class ConfigError(KsegError):
    """The config file or a --set override is missing, malformed or invalid."""


class DataError(KsegError):
    """A data file or folder is missing, unreadable or inconsistent with its config."""


class SplitError(KsegError):
    """The folds cannot be made as configured."""


class SubmissionError(KsegError):
    """A submission cannot be written, read, validated, scored or uploaded."""


class ModelError(KsegError):
    """The model cannot be built or its weights cannot be loaded."""


class TrainError(KsegError):
    """Training cannot start or resume as asked."""


class AuditError(KsegError):
    """The data audit cannot run, or its results are missing where a command needs them."""


class TileError(KsegError):
    """A raster cannot be tiled, or tile predictions cannot be stitched, as asked."""


class InferError(KsegError):
    """Inference cannot run as asked."""


class TuneError(KsegError):
    """Post-processing cannot be tuned or applied as asked."""


class InitError(KsegError):
    """``kseg init`` cannot read a download as a competition, or cannot write its config."""
