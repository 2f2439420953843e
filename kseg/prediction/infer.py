"""Streaming inference: images flow loader -> model -> merge -> writer in batches, so memory does not grow
with the number of images. Each image leaves ``<id>.png`` (class indices) and, on request,
``<id>.probs.npy`` (uint8 probabilities; with a presence head ``<id>.presence.npy``, its ``(K,)``
float32 scores), ``<id>_color.png`` (palette colours) and ``<id>_overlay.png``
(image | blend); the folder gets ``predictions.csv`` and ``inference.json`` (how it was made).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from kseg import __version__
from kseg.common import Progress
from kseg.config import DataConfig, RuntimeConfig
from kseg.data.images import load_image
from kseg.data.reading import ID, list_samples
from kseg.errors import DataError, InferError
from kseg.io import atomic_dir, atomic_open, remove_stale
from kseg.plotting import colorize, palette_rgb, to_uint8
from kseg.postprocess import PostProcess, apply
from kseg.prediction.ensemble import Ensemble
from kseg.prediction.predictor import BlendPredictor, PredictOptions, Predictor, infer_batch
from kseg.runtime import amp_dtype, loader_workers, resolve_device
from kseg.workspace.workdir import prediction_file, read_inference_info, write_inference_info

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".npy")


class _ImageStream(Dataset):
    def __init__(self, ids: list[str], paths: list[str], channels: int):
        self.ids, self.paths, self.channels = ids, paths, channels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        try:
            return self.ids[i], self.paths[i], load_image(self.paths[i], self.channels), None
        except DataError as exc:
            return self.ids[i], self.paths[i], None, str(exc)


def list_images(folder: Path) -> pd.DataFrame:
    """Every image in a folder (``ImageID`` = file stem), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InferError(f"--images {folder} is not a folder; give the folder that holds the images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InferError(f"no images in {folder} (looked for {', '.join(IMAGE_SUFFIXES)}); check the folder")
    table = pd.DataFrame({ID: [p.stem for p in files], "image": [str(p) for p in files]})
    dup = table[ID][table[ID].duplicated()]
    if len(dup):
        raise InferError(f"{folder} holds two images named {dup.iloc[0]!r} (different extensions); keep one")
    return table


@dataclass
class InferResult:
    """What ``run_inference`` wrote."""

    out: Path
    n_images: int
    skipped: list[str]
    seconds: float
    folds: list[int]
    tta: str
    views: int
    source: str
    postprocessed: bool = False
    gated: list[str] = field(default_factory=list)  # classes the post-processing gates

    @property
    def images_per_s(self) -> float:
        return self.n_images / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class OutputOptions:
    """Which files ``kseg infer`` writes for each image besides ``<id>.png``."""

    probs: bool = False
    color: bool = False
    overlay: bool = False


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        Image.fromarray(array).save(handle, format="PNG")


def _write_outputs(
    out: Path,
    image_id: str,
    image: np.ndarray,
    labels: np.ndarray,
    probs: tuple[np.ndarray, np.ndarray | None] | None,
    palette: np.ndarray,
    options: OutputOptions,
) -> None:
    _save_png(prediction_file(out, image_id), labels)
    if probs is not None:
        with atomic_open(prediction_file(out, image_id, "probs"), "wb") as handle:
            np.save(handle, probs[0])
        if probs[1] is not None:
            with atomic_open(prediction_file(out, image_id, "presence"), "wb") as handle:
                np.save(handle, probs[1])
    if options.color or options.overlay:
        colored = colorize(labels, palette)
        if options.color:
            _save_png(prediction_file(out, image_id, "color"), colored)
        if options.overlay:
            rgb = to_uint8(image[..., :3])
            blend = (0.5 * rgb + 0.5 * colored).astype(np.uint8)
            _save_png(prediction_file(out, image_id, "overlay"), np.concatenate([rgb, blend], axis=1))


def _predictor(ensemble: Ensemble, tta: str) -> Predictor | BlendPredictor:
    """The ensemble's models on the runtime's device, under its precision and memory layout; a blend
    predicts with each run's own sizes and normalisation, and averages with the run weights."""
    if ensemble.members:
        return BlendPredictor([(run_predictor(member, tta), weight) for member, weight in ensemble.members])
    return run_predictor(ensemble, tta)


def run_predictor(ensemble: Ensemble, tta: str) -> Predictor:
    """One run's models on the runtime's device (``ensemble`` must not be a blend)."""
    cfg = ensemble.cfg
    device = resolve_device(cfg.runtime)
    models = [m.to(device) for m in ensemble.models]
    if cfg.runtime.channels_last:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    amp = amp_dtype(cfg.runtime.amp, device)
    return Predictor(models, PredictOptions.from_config(cfg), device, amp, tta, ensemble.weights)


def _loader(in_channels: int, runtime: RuntimeConfig, images: pd.DataFrame, step: int) -> DataLoader:
    stream = _ImageStream(images[ID].tolist(), images["image"].tolist(), in_channels)
    workers = loader_workers(runtime, cap=4)
    return DataLoader(
        stream, batch_size=step, num_workers=workers, collate_fn=list, prefetch_factor=2 if workers else None
    )


def run_inference(
    ensemble: Ensemble,
    images: pd.DataFrame,
    out: Path,
    tta: str = "none",
    *,
    outputs: OutputOptions | None = None,
    postprocess: bool = True,
    on_progress: Progress | None = None,
) -> InferResult:
    """Predict every image of ``images`` (``ImageID``, ``image``) and write the outputs to ``out``.

    Args:
        ensemble: Models and config (``load_ensemble`` or ``load_bundle``).
        images: The images to predict.
        out: Output folder (created).
        tta: View set name.
        outputs: Extra files per image: uint8 probabilities ``<id>.probs.npy`` ``(K, H, W)``,
            ``<id>_color.png`` in the data set's palette, ``<id>_overlay.png`` (the image beside its
            blend with the colour mask).
        postprocess: Apply the ensemble's tuned post-processing (``postprocess.json``), when it has one.
        on_progress: ``callback(done, total)``.

    Raises:
        InferError: On an unreadable image when ``infer.on_error`` is ``stop`` (the default).
    """
    cfg = ensemble.cfg
    outputs = outputs or OutputOptions()
    post = ensemble.post if postprocess else None
    predictor = _predictor(ensemble, tta)
    if post is not None and post.needs_presence and not predictor.has_presence:
        raise InferError(
            f"the post-processing of {ensemble.source} gates classes {', '.join(post.gated)} on the presence head's "
            "score, which these models do not have (trained without model.presence_head); run 'kseg tune' on "
            "this run again, or predict with --no-postprocess"
        )
    out = Path(out)
    check_output_folder(out)
    remove_stale(out.parent, target=out.name)  # what a killed run of this output left next to it
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:  # a failed or killed run leaves the previous folder whole, or none
        step = infer_batch(cfg.infer.batch_size, predictor.device) if cfg.infer.mode == "resize" else 1
        batches = _loader(cfg.model.in_channels, cfg.runtime, images, step)
        stream = _Stream(batches, len(images), palette_rgb(cfg.data), cfg.infer.on_error, cfg.multilabel)
        written, skipped = _predict_into(tmp, predictor, stream, post, outputs, on_progress)
        info = _inference_info(ensemble, tta, post, written, skipped)
        write_inference_info(tmp, info, pd.DataFrame(written, columns=[ID, "height", "width"]))
    seconds = time.perf_counter() - t0
    return InferResult(
        out,
        len(written),
        [message for _, message in skipped],
        seconds,
        ensemble.folds,
        tta,
        len(predictor.views),
        ensemble.source,
        post is not None,
        post.gated if post is not None else [],
    )


def _inference_info(
    ensemble: Ensemble,
    tta: str,
    post: PostProcess | None,
    written: list[tuple[str, int, int]],
    skipped: list[tuple[str, str]],
) -> dict[str, Any]:
    """``inference.json``: what made the predictions (``kseg submit`` checks it against the config)."""
    cfg = ensemble.cfg
    return {
        "source": ensemble.source,
        "folds": ensemble.folds,
        "partial_folds": ensemble.partial,  # unfinished folds used with --partial
        "tta": tta,
        "mode": cfg.infer.mode,
        "merge": cfg.infer.merge,
        "scales": cfg.infer.tta_scales,
        "kseg_version": __version__,
        "config_hash": hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16],
        "images": len(written),
        "image_ids": [image_id for image_id, _, _ in written],
        "skipped": [message for _, message in skipped],
        "skipped_ids": [image_id for image_id, _ in skipped],
        "postprocess": json.loads(post.to_json()) if post is not None else None,
    }


def check_output_folder(out: Path) -> None:
    """Refuse an output folder that holds files kseg did not write: it is replaced whole."""
    if out.exists() and not out.is_dir():
        raise InferError(f"--out {out} is a file; give a folder for the predictions")
    if out.is_dir() and any(out.iterdir()) and read_inference_info(out) is None:
        example = next(iter(sorted(p.name for p in out.iterdir())))
        raise InferError(
            f"--out {out} holds files kseg infer did not write (e.g. {example}) and would be replaced whole; "
            "give a new or empty folder"
        )


@dataclass
class _Stream:
    """The images to predict and how their outputs are made."""

    batches: Iterable[list]  # lists of (id, path, image, error)
    total: int
    palette: np.ndarray  # the colours of the colour and overlay pictures
    on_error: str  # infer.on_error
    multilabel: bool


def _predict_into(
    folder: Path,
    predictor: Predictor | BlendPredictor,
    stream: _Stream,
    post: PostProcess | None,
    outputs: OutputOptions,
    on_progress: Progress | None,
) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    """Stream every image through the model into ``folder``; returns ``(written (id, H, W), skipped (id, why))``."""
    palette = stream.palette
    done = 0
    skipped: list[tuple[str, str]] = []
    written: list[tuple[str, int, int]] = []
    pending: list[Future] = []
    keep_scores = outputs.probs and predictor.has_presence  # <id>.presence.npy beside <id>.probs.npy
    with ThreadPoolExecutor(max_workers=2) as writer:
        for batch in stream.batches:
            good = _readable(batch, stream.on_error, skipped)
            predicted = predictor.predict_scored([im for _, im in good]) if good else iter(())
            for (image_id, image), (probs, presence) in zip(good, predicted, strict=True):
                labels = apply(probs, post, stream.multilabel, presence)
                stored = None
                if outputs.probs:
                    scores = presence.numpy() if keep_scores else None
                    stored = ((probs * 255).round().to(torch.uint8).numpy(), scores)
                args = (folder, image_id, image, labels, stored, palette, outputs)
                pending.append(writer.submit(_write_outputs, *args))
                written.append((image_id, *labels.shape))
            while len(pending) > 8:  # bounded: memory does not grow with the number of images
                pending.pop(0).result()
            done += len(batch)
            if on_progress:
                on_progress(done, stream.total)
        for future in pending:
            future.result()
    return written, skipped


def _readable(batch: list, on_error: str, skipped: list[tuple[str, str]]) -> list[tuple[str, np.ndarray]]:
    """The batch's readable images; unreadable ones stop the run, or are listed in ``skipped``."""
    good = []
    for image_id, path, image, error in batch:
        if error is None:
            good.append((image_id, image))
        elif on_error == "skip":
            skipped.append((image_id, f"{path}: {error}"))
        else:
            raise InferError(f"{error.rstrip('.')} (set infer.on_error: skip to leave such images out)")
    return good


def competition_test_images(data: DataConfig) -> pd.DataFrame:
    """The competition's test images (``ImageID``, ``image``).

    Raises:
        InferError: The test set lists no image.
    """
    table = list_samples(data, "test")[[ID, "image"]]
    if table.empty:
        where = data.test_csv if data.layout == "csv" else data.test_image_pattern
        raise InferError(f"the test set ({where} under {data.root}) lists no images; check it, or pass --images DIR")
    return table
