"""``python -m kseg`` (and ``torchrun -m kseg train ...``) run the command line."""

from kseg.cli import app

if __name__ == "__main__":
    app()
