"""The ``kseg`` command line: thin commands that load the config, call one stage function, and hand
its result to ``kseg.render``; kseg's errors become one red line and a non-zero exit. One module per group
of commands; importing them registers their commands on ``app``, in this order (the order of --help)."""

# ruff: noqa: I001
from kseg.cli import prepare, submitting, training, predict  # noqa: F401
from kseg.cli.common import app

__all__ = ["app"]
