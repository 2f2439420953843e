"""``kseg pseudo``: pseudo-labels for unlabelled images (the test set by default) from the trained folds,
and a new run trained on the labelled images plus the confident pseudo-labelled pixels.

Cross-validation stays honest in two ways:

- pseudo-labelled images are added to a fold's training rows only, never to its validation rows, and
  an image that is also a training image (by id or file) is refused;
- fold ``f``'s pseudo-labels come from fold ``f``'s own model alone, the one model that never saw fold
  ``f``'s validation images. A label from any other fold's model would carry what that model learned
  from fold ``f``'s validation masks into fold ``f``'s training, and its validation score would rise for
  the wrong reason.

Pixels whose top probability is below ``pseudo.threshold`` are written as ``data.ignore_index``: no loss
is taken on them. The new run lives in its own work folder (``pseudo.workdir``, default
``<workdir>-pseudo``) with the same ``folds.csv``, so its out-of-fold score compares with the source run's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from kseg.common import Progress
from kseg.config import Config
from kseg.data.images import load_image
from kseg.data.reading import ID
from kseg.errors import KsegError
from kseg.io import atomic_dir, atomic_write_text, remove_stale
from kseg.prediction.ensemble import load_ensemble
from kseg.prediction.infer import run_predictor
from kseg.training.dataset import PseudoRows
from kseg.workspace.workdir import WorkDir

PSEUDO_DIR = "pseudo"
PSEUDO_INFO = "pseudo.json"
PSEUDO_MARK = ".kseg-pseudo"  # in the root of every run kseg pseudo makes: the one kind of folder it writes into


class PseudoError(KsegError):
    """Pseudo-labelling cannot start or continue."""


def pseudo_workdir(chosen: Path | None, workdir: Path) -> Path:
    """Where the pseudo-labelled run trains: ``pseudo.workdir`` (``chosen``), or ``<workdir>-pseudo`` beside
    the source."""
    return chosen or workdir.with_name(workdir.name + "-pseudo")


def labels_dir(run_dir: Path, fold: int) -> Path:
    """The pseudo-labels fold ``fold`` trains on: ``<run>/pseudo/fold<N>/``."""
    return Path(run_dir) / PSEUDO_DIR / f"fold{fold}"


def prepare_run(cfg: Config) -> Config:
    """The pseudo-labelled run's config (the source config with its own work folder), whose folder gets
    the source's ``folds.csv`` and class pixel counts.

    Raises:
        PseudoError: The source has no folds, or the target folder already holds other folds.
    """
    if cfg.multilabel:
        raise PseudoError(
            "kseg pseudo keeps each pixel's top class, which multilabel runs (data.multilabel: true) do not have; "
            "train without pseudo-labels"
        )
    source = WorkDir(cfg.workdir)
    target_dir = pseudo_workdir(cfg.pseudo.workdir, cfg.workdir)
    if target_dir.resolve() == cfg.workdir.resolve():
        raise PseudoError(f"pseudo.workdir {target_dir} is the source run's own folder; give another folder")
    source.read_folds()  # the source must be split
    _check_target(target_dir)
    target = WorkDir(target_dir)
    if target.folds_csv.is_file():
        if target.folds_csv.read_bytes() != source.folds_csv.read_bytes():
            raise PseudoError(
                f"{target.folds_csv} holds other folds than {source.folds_csv}; give a new pseudo.workdir "
                "(the pseudo-labelled run must use the source run's folds)"
            )
    else:
        target_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target_dir / PSEUDO_MARK, f"kseg pseudo run from {cfg.workdir.resolve()}\n")
        atomic_write_text(target.folds_csv, source.folds_csv.read_text(encoding="utf-8"))
    if source.class_pixels_csv.is_file() and not target.class_pixels_csv.is_file():
        shutil.copyfile(source.class_pixels_csv, target.class_pixels_csv)
    return cfg.model_copy(update={"workdir": target_dir})


def _check_target(folder: Path) -> None:
    """kseg pseudo writes into a new (or empty) folder, or an earlier pseudo run's: never another run's
    folder or a folder of data."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise PseudoError(f"pseudo.workdir {folder} is a file; give a folder for the new run")
    if (folder / PSEUDO_MARK).is_file() or (folder / PSEUDO_DIR).is_dir() or not any(folder.iterdir()):
        return
    raise PseudoError(
        f"pseudo.workdir {folder} already holds files and is not a run kseg pseudo made (no {PSEUDO_MARK}); give a "
        "new folder (--out), so that no other run or data is overwritten"
    )


@dataclass
class FoldLabels:
    """One fold's pseudo-labels."""

    fold: int
    folder: Path
    rows: pd.DataFrame  # ImageID, image, mask
    kept: float  # share of the pixels confident enough to keep a label
    reused: bool = False


def _info(workdir: Path, threshold: float, fold: int, tta: str, images: pd.DataFrame) -> dict:
    work = WorkDir(workdir)
    work.settle(fold)
    best = work.best(fold)
    return {
        "source": str(best),
        "source_mtime_ns": best.stat().st_mtime_ns if best.is_file() else None,
        "threshold": threshold,
        "tta": tta,
        "images": images[ID].tolist(),
    }


def label_fold(
    cfg: Config,
    fold: int,
    images: pd.DataFrame,
    run_dir: Path,
    *,
    tta: str = "none",
    partial: bool = False,
    on_progress: Progress | None = None,
) -> FoldLabels:
    """Pseudo-label ``images`` (``ImageID``, ``image``) with fold ``fold``'s model of ``cfg.workdir`` only,
    into ``<run_dir>/pseudo/fold<N>/<id>.png`` (class indices, ``data.ignore_index`` where the top
    probability is below ``pseudo.threshold``). Labels made before by the same checkpoint, threshold,
    views and images are reused.
    """
    folder = labels_dir(run_dir, fold)
    wanted = _info(cfg.workdir, cfg.pseudo.threshold, fold, tta, images)
    rows = images.assign(mask=[str(folder / f"{i}.png") for i in images[ID]])[[ID, "image", "mask"]]
    done = folder / PSEUDO_INFO
    if done.is_file():
        saved = json.loads(done.read_text(encoding="utf-8"))
        if {k: saved.get(k) for k in wanted} == wanted:
            return FoldLabels(fold, folder, rows, float(saved["kept"]), reused=True)
    ensemble = load_ensemble(cfg, folds=[fold], use_blend=False, partial=partial)
    predictor = run_predictor(ensemble, tta)
    threshold, ignore = cfg.pseudo.threshold, cfg.data.ignore_index
    kept, total = 0, 0
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(folder.parent, target=folder.name)  # what a killed labelling left beside the folder
    with atomic_dir(folder) as tmp:  # a killed run leaves no half set of labels
        for n, (image_id, path) in enumerate(zip(images[ID], images["image"], strict=True)):
            image = load_image(path, cfg.model.in_channels)
            probs = next(iter(predictor.predict([image])))
            confidence, labels = probs.max(0)
            sure = (confidence >= threshold).numpy()
            out = np.where(sure, labels.numpy(), ignore).astype(np.uint8)
            Image.fromarray(out).save(tmp / f"{image_id}.png")
            kept, total = kept + int(sure.sum()), total + sure.size
            if on_progress:
                on_progress(n + 1, len(images))
        share = kept / max(total, 1)
        atomic_write_text(tmp / PSEUDO_INFO, json.dumps({**wanted, "kept": share}, indent=2))
    return FoldLabels(fold, folder, rows, share)


def pseudo_rows(labels: FoldLabels, share: float) -> PseudoRows:
    """What ``train_fold`` takes: the labelled images and their share (``pseudo.share``) of every batch."""
    return PseudoRows(labels.rows, share)
