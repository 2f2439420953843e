"""The work folder's schema: the one owner of every path under ``workdir`` and of each file's read/write pair.

::

    <workdir>/
      config.yaml          resolved config of the last split              kseg split
      folds.csv            ImageID,fold                                   kseg split
      class_pixels.csv     '# spec' line, then per-image class pixels     kseg split (scan cache)
      .fold<N>.lock        held while a live run trains fold N          kseg train
      fold<N>/
        config.yaml        resolved config of the fold's run              kseg train
        best.pt, last.pt   best epoch (weights) / resumable state         kseg train
        metrics.csv        one row per epoch                              kseg train
        curves.png         loss and Dice curves                           kseg train
        oof.npy            uint8 probabilities (N, K, H, W) of best.pt    kseg train
        oof_presence.npy   presence head's scores (N, K) float32 of best.pt  kseg train (model.presence_head)
        oof_masks.npy      true labels (N, H, W) at data.image_size       kseg train
        oof.csv            ImageID,height,width of the OOF rows           kseg train
        epoch<NNN>.pt      weights of the epochs train.average will take  kseg train
        average.json       the averaged checkpoint's epochs and scores    kseg train
        tensorboard/       tracker logs (train.log)                       kseg train
      postprocess.json     tuned thresholds and minimum areas             kseg tune
      blend.json           runs, weights, scores, tuned post-processing   kseg blend
      report/              folds.csv, classes.csv, confusion.png, ...     kseg report
      audit/               audit.md, duplicates.csv, ...                  kseg audit
      predictions/         <ImageID>.png, predictions.csv, inference.json kseg infer (submission.predictions)

An epoch's fold files are committed together through the fold's journal (``journal(fold)``,
``kseg.workspace.journal``). The path accessors are paths only; the readers (``read_metrics``,
``read_average``, ``kseg.workspace.oof.read_oof``) and fold discovery (``folds_with``,
``trained_folds``) first complete a commit that a killed run left half done (``settle``), so every reader
sees one epoch's set; code that opens a fold's file by its path calls ``settle`` first.
``.fold<N>.lock`` is held (``flock``) by the live run training the fold: readers leave its commits to it.

A predictions folder may live anywhere (``kseg infer --out``); its files are named here too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from kseg.common import ID  # re-exported: the id column of every table
from kseg.errors import KsegError
from kseg.io import atomic_write_text
from kseg.workspace.journal import FoldJournal

FOLDS_NAME = "folds.csv"
STATS_NAME = "class_pixels.csv"
CONFIG_NAME = "config.yaml"
POSTPROCESS_NAME = "postprocess.json"
BLEND_NAME = "blend.json"
AUDIT_DIR = "audit"
DUPLICATES_NAME = "duplicates.csv"
REPORT_DIR = "report"
PREDICTIONS_DIR = "predictions"
INFERENCE_NAME = "inference.json"
PREDICTIONS_TABLE = "predictions.csv"


class WorkDir:
    """Paths and files of one work folder (``Config.workdir``)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"WorkDir({str(self.root)!r})"

    # ------------------------------------------------------------------------------------ paths

    @property
    def folds_csv(self) -> Path:
        return self.root / FOLDS_NAME

    @property
    def class_pixels_csv(self) -> Path:
        return self.root / STATS_NAME

    @property
    def config_yaml(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def postprocess_json(self) -> Path:
        return self.root / POSTPROCESS_NAME

    @property
    def blend_json(self) -> Path:
        return self.root / BLEND_NAME

    @property
    def report_dir(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def audit_dir(self) -> Path:
        return self.root / AUDIT_DIR

    @property
    def duplicates_csv(self) -> Path:
        return self.audit_dir / DUPLICATES_NAME

    @property
    def predictions_dir(self) -> Path:
        return self.root / PREDICTIONS_DIR

    def fold_dir(self, fold: int) -> Path:
        return self.root / f"fold{fold}"

    def best(self, fold: int) -> Path:
        return self.fold_dir(fold) / "best.pt"

    def last(self, fold: int) -> Path:
        return self.fold_dir(fold) / "last.pt"

    def metrics(self, fold: int) -> Path:
        return self.fold_dir(fold) / "metrics.csv"

    def curves(self, fold: int) -> Path:
        return self.fold_dir(fold) / "curves.png"

    def fold_config(self, fold: int) -> Path:
        return self.fold_dir(fold) / CONFIG_NAME

    def tensorboard(self, fold: int) -> Path:
        return self.fold_dir(fold) / "tensorboard"

    def oof(self, fold: int) -> Path:
        return self.fold_dir(fold) / "oof.npy"

    def journal(self, fold: int) -> FoldJournal:
        """The fold's commit journal and lock (``kseg.workspace.journal``); the lock lies beside the fold
        folder, so a run that stops before its first write leaves no fold folder."""
        return FoldJournal(self.fold_dir(fold), self.root / f".fold{fold}.lock")

    def settle(self, fold: int) -> bool:
        """Complete a commit that a killed run left half done (``FoldJournal.settle``); readers of a fold's
        files call it, or ``folds_with``, before they read."""
        return self.journal(fold).settle()

    def snapshot(self, fold: int, epoch: int) -> Path:
        """One epoch's weights, kept while ``train.average`` may take them."""
        return self.fold_dir(fold) / f"epoch{epoch:03d}.pt"

    def snapshot_epochs(self, fold: int) -> list[int]:
        """Epochs (1-based) whose weights are kept in ``fold<N>/``, ascending."""
        names = (p.name for p in self.fold_dir(fold).glob("epoch*.pt"))
        return sorted(int(n[5:-3]) for n in names if n[5:-3].isdigit())

    def average_json(self, fold: int) -> Path:
        return self.fold_dir(fold) / "average.json"

    def oof_presence(self, fold: int) -> Path:
        return self.fold_dir(fold) / "oof_presence.npy"

    def oof_masks(self, fold: int) -> Path:
        return self.fold_dir(fold) / "oof_masks.npy"

    def oof_csv(self, fold: int) -> Path:
        return self.fold_dir(fold) / "oof.csv"

    def folds_with(self, name: str) -> list[int]:
        """Fold numbers whose ``fold<N>/`` holds a file ``name``, ascending (each fold settled first: pending
        commits completed, a dead writer's staged files removed)."""
        for fold in self._folds_holding(""):
            self.settle(fold)
        return self._folds_holding(name)

    def _folds_holding(self, name: str) -> list[int]:
        found = (path.parent.name[4:] if name else path.name[4:] for path in self.root.glob(f"fold*/{name}"))
        return sorted(int(suffix) for suffix in found if suffix.isdigit())

    def trained_folds(self) -> list[int]:
        """Folds with a ``best.pt``."""
        return self.folds_with("best.pt")

    def oof_folds(self) -> list[int]:
        """Folds with out-of-fold probabilities (``oof.npy``)."""
        return self.folds_with("oof.npy")

    # ---------------------------------------------------------------------------- folds.csv

    def write_folds(self, table: pd.DataFrame) -> Path:
        atomic_write_text(self.folds_csv, table[[ID, "fold"]].to_csv(index=False))
        return self.folds_csv

    def read_folds(self) -> pd.DataFrame:
        """``folds.csv`` as written by ``kseg split``: ``ImageID, fold``."""
        path = self.folds_csv
        if not path.is_file():
            raise KsegError(f"{path} does not exist; run 'kseg split' first")
        table = pd.read_csv(path, dtype={ID: str})
        if list(table.columns[:2]) != [ID, "fold"]:
            raise KsegError(f"{path} does not start with columns ImageID,fold; run 'kseg split' again")
        return table

    def n_folds(self) -> int:
        return int(self.read_folds()["fold"].max()) + 1

    # ------------------------------------------------------------------------ class_pixels.csv

    def write_class_pixels(self, table: pd.DataFrame, fingerprint: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        text = f"# kseg class pixel counts, spec {fingerprint}\n" + table.to_csv(index=False)
        atomic_write_text(self.class_pixels_csv, text)

    def read_class_pixels(self, fingerprint: str | None = None) -> pd.DataFrame | None:
        """The scan table, or ``None`` when absent, damaged or (with ``fingerprint``) made for another spec."""
        path = self.class_pixels_csv
        if not path.is_file():
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                head = handle.readline()
            if fingerprint is not None and fingerprint not in head:
                return None
            return pd.read_csv(
                path, skiprows=1, dtype={ID: str, "mask": str, "image": str, "unknown": str}, keep_default_na=False
            )
        except (OSError, ValueError, pd.errors.ParserError):
            return None  # a damaged cache is only a cache: scan again

    # ----------------------------------------------------------------------------- fold files

    def write_metrics(self, fold: int, table: pd.DataFrame, staged: bool = False) -> None:
        path = self.journal(fold).staged("metrics.csv") if staged else self.metrics(fold)
        atomic_write_text(path, table.to_csv(index=False))

    def read_metrics(self, fold: int) -> pd.DataFrame:
        self.settle(fold)
        return pd.read_csv(self.metrics(fold))

    def write_average(self, fold: int, info: dict[str, Any], staged: bool = False) -> None:
        path = self.journal(fold).staged("average.json") if staged else self.average_json(fold)
        atomic_write_text(path, json.dumps(info, indent=2))

    def read_average(self, fold: int) -> dict[str, Any] | None:
        """``average.json`` of a fold, or ``None`` when absent or unreadable."""
        self.settle(fold)
        path = self.average_json(fold)
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    # ------------------------------------------------------------------------ postprocess.json

    def write_postprocess(self, text: str) -> Path:
        atomic_write_text(self.postprocess_json, text)
        return self.postprocess_json

    def read_postprocess(self) -> str | None:
        path = self.postprocess_json
        return path.read_text(encoding="utf-8") if path.is_file() else None

    # ------------------------------------------------------------------------------ blend.json

    def write_blend(self, info: dict[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.blend_json, json.dumps(info, indent=2))
        return self.blend_json

    def read_blend(self) -> dict[str, Any] | None:
        """``blend.json`` (``kseg blend``), or ``None`` when there is none.

        Raises:
            KsegError: The file exists but is not a kseg blend.
        """
        path = self.blend_json
        if not path.is_file():
            return None
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KsegError(f"{path} cannot be read ({exc}); run 'kseg blend' again or delete it") from None
        if not isinstance(info, dict) or info.get("format") != "kseg-blend":
            raise KsegError(f"{path} is not a kseg blend file; run 'kseg blend' again or delete it")
        return info

    # ---------------------------------------------------------------------------- audit files

    def read_duplicates(self) -> pd.DataFrame | None:
        path = self.duplicates_csv
        return pd.read_csv(path, dtype={ID: str}) if path.is_file() else None


# -------------------------------------------------------------------------------- predictions


def default_predictions(chosen: Path | None, workdir: Path) -> Path:
    """Where ``kseg infer`` writes, ``kseg submit`` reads: ``submission.predictions``, or ``<workdir>/predictions``."""
    return chosen or WorkDir(workdir).predictions_dir


def prediction_file(directory: Path, image_id: str, kind: str = "labels") -> Path:
    """One output of ``kseg infer`` for one image: ``labels`` (``<id>.png``), ``probs``, ``presence``, ``color``,
    ``overlay``."""
    names = {
        "labels": f"{image_id}.png",
        "probs": f"{image_id}.probs.npy",
        "presence": f"{image_id}.presence.npy",
        "color": f"{image_id}_color.png",
        "overlay": f"{image_id}_overlay.png",
    }
    return Path(directory) / names[kind]


def write_inference_info(directory: Path, info: dict[str, Any], table: pd.DataFrame) -> None:
    """The predictions folder's ``predictions.csv`` (ids and sizes) and, last, its manifest ``inference.json``:
    how it was made, the images, and the size of every file in the folder (``files``)."""
    directory = Path(directory)
    atomic_write_text(directory / PREDICTIONS_TABLE, table.to_csv(index=False))
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != INFERENCE_NAME}
    atomic_write_text(directory / INFERENCE_NAME, json.dumps({**info, "files": files}, indent=2))


def read_inference_info(directory: Path) -> dict[str, Any] | None:
    """``inference.json`` of a predictions folder, or ``None`` when absent or unreadable."""
    path = Path(directory) / INFERENCE_NAME
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return info if isinstance(info, dict) else None
