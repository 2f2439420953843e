"""Prediction: fold ensembles with test-time augmentation, at each image's original size, streamed.

``infer.mode: resize`` predicts at ``data.image_size`` and resizes the probabilities (not the labels)
back to the image. ``infer.mode: tile`` runs sliding windows of ``data.image_size`` over the image at its
own resolution, with ``infer.tile_overlap`` overlap and weights that fall off towards each window's
border, so seams do not show; images smaller than a window are padded (reflected) and cropped back.
Validation uses the same ``Predictor`` as test inference, so the CV score measures what the submission
does.

Images flow loader -> model -> merge -> writer in batches: memory does not grow with the number of
images. Each image leaves ``<id>.png`` (class indices) and, on request, ``<id>.probs.npy`` (uint8
probabilities), ``<id>_color.png`` (palette colours) and ``<id>_overlay.png`` (image | blend).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kseg import __version__
from kseg.config import Config, build_config
from kseg.data import ID, list_samples, palette_rgb
from kseg.dataset import channel_stats, default_workers, load_image, normalize, rescale
from kseg.errors import DataError, KsegError
from kseg.io import atomic_open, atomic_write_text
from kseg.postprocess import PostProcess, apply
from kseg.postprocess import load as load_postprocess
from kseg.tta import predict_views, views

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".npy")
BUNDLE_FORMAT = "kseg-bundle"
BUNDLE_VERSION = 1


class InferError(KsegError):
    """Inference cannot run as asked."""


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision on CUDA when asked; a no-op elsewhere."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def window_weights(height: int, width: int) -> torch.Tensor:
    """Blending weights of one window: highest in the middle, small but positive at the border.

    Shape:
        Returns ``(H, W)`` float32.
    """

    def ramp(n: int) -> np.ndarray:
        x = (np.arange(n) + 0.5) / n
        return np.minimum(x, 1 - x) * 2  # triangle: 1 in the centre, ~0 at the edge

    w = np.outer(ramp(height), ramp(width))
    return torch.from_numpy(np.maximum(w, 1e-3).astype(np.float32))


def tile_origins(size: int, tile: int, overlap: float) -> list[int]:
    """Window starts along one axis covering ``[0, size)`` with windows of ``tile`` (size >= tile)."""
    if size <= tile:
        return [0]
    stride = max(1, int(round(tile * (1 - overlap))))
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def infer_batch(cfg: Config, device: torch.device) -> int:
    """Images per forward pass: ``infer.batch_size``, or by default 16 on a GPU and 2 on a CPU (where
    larger batches fall out of cache and run slower)."""
    if cfg.infer.batch_size is not None:
        return cfg.infer.batch_size
    return 16 if device.type == "cuda" else 2


def _round32(n: float) -> int:
    return max(32, int(round(n / 32)) * 32)


class Predictor:
    """Class probabilities of whole images from one or several models, merged over TTA views.

    Args:
        models: Trained models in eval mode.
        cfg: The experiment config (``data.image_size``, ``infer.*``, normalisation).
        device: Where to run.
        amp: Autocast dtype on CUDA, or ``None``.
        tta: Name of the view set (``none``, ``flip``, ``d4``, ...).
        model_weights: One weight per model (default: equal).
    """

    def __init__(
        self,
        models: list[nn.Module],
        cfg: Config,
        device: torch.device,
        amp: torch.dtype | None = None,
        tta: str = "none",
        model_weights: list[float] | None = None,
    ):
        self.models = models
        self.cfg = cfg
        self.device = device
        self.amp = amp
        self.size = tuple(cfg.data.image_size)
        self.views = views(tta)
        self.model_weights = model_weights
        self.channels_last = cfg.train.channels_last
        self.batch = infer_batch(cfg, device)

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Shape: ``(B, C, h, w)`` -> per-model probabilities ``(M, B, K, h, w)``."""
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            return torch.stack([model(batch).float().softmax(1) for model in self.models])

    @torch.inference_mode()
    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Merged probabilities of a normalised batch at its own size.

        Shape:
            ``(N, C, H, W)`` -> ``(N, K, H, W)`` float32 (on the CPU).
        """
        merged = []
        height, width = batch.shape[-2:]
        for scale in self.cfg.infer.tta_scales:
            scaled = batch
            if scale != 1.0:
                size = (_round32(height * scale), _round32(width * scale))
                scaled = nn.functional.interpolate(batch, size=size, mode="bilinear", align_corners=False)
            probs = predict_views(
                self._forward, scaled, self.views, self.batch, self.cfg.infer.merge, self.model_weights
            )
            if scale != 1.0:
                probs = nn.functional.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
            merged.append(probs)
        out = merged[0] if len(merged) == 1 else torch.stack(merged).mean(0)
        return out.cpu()

    def predict(self, images: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """Yield each image's probabilities at its own size.

        Shape:
            images ``(H, W, C)``; yields ``(K, H, W)`` float32 on the CPU.
        """
        if self.cfg.infer.mode == "tile":
            for image in images:
                yield self._tiled(image)
            return
        batch = torch.stack([self._prepare(im) for im in images])
        for image, p in zip(images, self.predict_batch(batch), strict=True):
            yield self._resize_back(p, image.shape[:2])

    def _stats(self, image: np.ndarray) -> tuple[list[float], list[float]]:
        if self.cfg.data.normalize == "per_image":
            return channel_stats(image)
        return self.cfg.data.mean, self.cfg.data.std

    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        mean, std = self._stats(image)
        height, width = self.size
        if image.shape[:2] != (height, width):
            shrink = image.shape[0] > height or image.shape[1] > width
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            if image.ndim == 2:
                image = image[..., None]
        return normalize(image, mean, std)

    @staticmethod
    def _resize_back(probs: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        if tuple(probs.shape[1:]) != tuple(shape):
            probs = nn.functional.interpolate(probs[None], size=shape, mode="bilinear", align_corners=False)[0]
        return probs

    def _tiled(self, image: np.ndarray) -> torch.Tensor:
        scale = self.cfg.data.scale
        if scale != 1.0:  # predict at the training scale, then back to the image's own size
            probs = self._tiled_native(rescale(image, scale))
            return self._resize_back(probs, image.shape[:2])
        return self._tiled_native(image)

    def _tiled_native(self, image: np.ndarray) -> torch.Tensor:
        tile_h, tile_w = self.size
        height, width = image.shape[:2]
        pad_h, pad_w = max(0, tile_h - height), max(0, tile_w - width)
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
            if image.ndim == 2:
                image = image[..., None]
        full_h, full_w = image.shape[:2]
        tensor = normalize(image, *self._stats(image[:height, :width]))
        weights = window_weights(tile_h, tile_w)
        overlap = self.cfg.infer.tile_overlap
        origins = [(y, x) for y in tile_origins(full_h, tile_h, overlap) for x in tile_origins(full_w, tile_w, overlap)]
        total = None
        norm = torch.zeros(full_h, full_w)
        step = max(1, self.batch // max(1, len(self.views)))
        for first in range(0, len(origins), step):
            part = origins[first : first + step]
            batch = torch.stack([tensor[:, y : y + tile_h, x : x + tile_w] for y, x in part])
            probs = self.predict_batch(batch)
            if total is None:
                total = torch.zeros(probs.shape[1], full_h, full_w)
            for (y, x), p in zip(part, probs, strict=True):
                total[:, y : y + tile_h, x : x + tile_w] += p * weights
                norm[y : y + tile_h, x : x + tile_w] += weights
        return (total / norm)[:, :height, :width].contiguous()


# ------------------------------------------------------------------------------------------ models


def _bare_model(cfg: Config, n_classes: int) -> nn.Module:
    from kseg.models import build_model

    return build_model(cfg.model.model_copy(update={"encoder_weights": None}), n_classes)[0]


@dataclass
class Ensemble:
    """Models ready to predict, and where they came from."""

    cfg: Config
    models: list[nn.Module]
    folds: list[int]
    weights: list[float] | None
    source: str
    post: PostProcess | None = None  # tuned post-processing, when there is one


def trained_folds(cfg: Config) -> list[int]:
    """Folds with a ``best.pt`` in the workdir."""
    found = []
    for path in sorted(cfg.workdir.glob("fold*/best.pt")):
        suffix = path.parent.name[4:]
        if suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)


def load_ensemble(cfg: Config, folds: list[int] | None = None, weights: list[float] | None = None) -> Ensemble:
    """The best checkpoint of each chosen fold (default: every trained fold), loaded once."""
    from kseg.train import checkpoint_mismatch, load_checkpoint

    available = trained_folds(cfg)
    if not available:
        raise InferError(
            f"no trained folds in {cfg.workdir} (no fold*/best.pt); run 'kseg train --fold 0' or --fold all first"
        )
    chosen = available if folds is None else folds
    missing = [f for f in chosen if f not in available]
    if missing:
        raise InferError(
            f"fold {missing[0]} has no {cfg.workdir / f'fold{missing[0]}' / 'best.pt'} (trained folds: "
            f"{', '.join(map(str, available))}); train it or leave it out of --folds"
        )
    if weights is not None and len(weights) != len(chosen):
        raise InferError(f"{len(weights)} fold weights for {len(chosen)} folds; give one weight per fold")
    models = []
    for f in chosen:
        path = cfg.workdir / f"fold{f}" / "best.pt"
        saved = load_checkpoint(path)
        mismatch = checkpoint_mismatch(saved, cfg)
        if mismatch:
            raise InferError(f"{path} {mismatch}; predict with the config it was trained with")
        model = _bare_model(cfg, cfg.n_classes)
        model.load_state_dict(saved["model"])
        models.append(model.eval())
    return Ensemble(
        cfg, models, chosen, weights, f"folds {', '.join(map(str, chosen))} of {cfg.workdir}", load_postprocess(cfg)
    )


def export_bundle(cfg: Config, out: Path, folds: list[int] | None = None, half: bool = False) -> Path:
    """Pack the resolved config and the chosen folds' best weights into one file (``.kseg``)."""
    ensemble = load_ensemble(cfg, folds)
    dtype = torch.float16 if half else None
    states = []
    for model in ensemble.models:
        state = model.state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        states.append(state)
    bundle = {
        "format": BUNDLE_FORMAT,
        "bundle_version": BUNDLE_VERSION,
        "kseg_version": __version__,
        "config": cfg.model_dump(mode="json"),
        "folds": ensemble.folds,
        "state_dicts": states,
        "postprocess": ensemble.post.to_json() if ensemble.post is not None else None,
    }
    with atomic_open(out, "wb") as handle:
        torch.save(bundle, handle)
    return out


def load_bundle(path: Path, overrides: list[str] | None = None) -> Ensemble:
    """An ensemble from a ``kseg export`` bundle: needs nothing but the file."""
    from kseg.config import apply_overrides

    path = Path(path)
    if not path.is_file():
        raise InferError(f"bundle {path} does not exist; make one with 'kseg export -c CFG --out {path.name}'")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise InferError(f"{path} is not a kseg bundle ({type(exc).__name__}); make one with 'kseg export'") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise InferError(f"{path} is not a kseg bundle; make one with 'kseg export'")
    if bundle.get("bundle_version") != BUNDLE_VERSION:
        raise InferError(
            f"{path} is a bundle of format {bundle.get('bundle_version')} (kseg {bundle.get('kseg_version')}) but this "
            f"kseg {__version__} reads format {BUNDLE_VERSION}; export it again with this kseg"
        )
    tree = apply_overrides(bundle["config"], list(overrides or []))
    cfg = build_config(tree, Path.cwd(), source=str(path), overrides=overrides)
    models = []
    for state in bundle["state_dicts"]:
        model = _bare_model(cfg, cfg.n_classes)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        models.append(model.eval())
    post = PostProcess.from_json(bundle["postprocess"], str(path)) if bundle.get("postprocess") else None
    return Ensemble(cfg, models, list(bundle["folds"]), None, f"bundle {path} (folds {bundle['folds']})", post)


# --------------------------------------------------------------------------------------- streaming


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

    @property
    def images_per_s(self) -> float:
        return self.n_images / max(self.seconds, 1e-9)


def _color(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    return table[labels]


def _write_outputs(
    out: Path,
    image_id: str,
    image: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray | None,
    palette: np.ndarray,
    color: bool,
    overlay: bool,
) -> None:
    with atomic_open(out / f"{image_id}.png", "wb") as handle:
        Image.fromarray(labels).save(handle, format="PNG")
    if probs is not None:
        with atomic_open(out / f"{image_id}.probs.npy", "wb") as handle:
            np.save(handle, probs)
    if color or overlay:
        colored = _color(labels, palette)
        if color:
            with atomic_open(out / f"{image_id}_color.png", "wb") as handle:
                Image.fromarray(colored).save(handle, format="PNG")
        if overlay:
            rgb = image[..., :3]
            if rgb.dtype != np.uint8:
                lo, hi = float(rgb.min()), float(rgb.max())
                rgb = ((rgb - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8)
            blend = (0.5 * rgb + 0.5 * colored).astype(np.uint8)
            with atomic_open(out / f"{image_id}_overlay.png", "wb") as handle:
                Image.fromarray(np.concatenate([rgb, blend], axis=1)).save(handle, format="PNG")


def run_inference(
    ensemble: Ensemble,
    images: pd.DataFrame,
    out: Path,
    tta: str = "none",
    save_probs: bool = False,
    color: bool = False,
    overlay: bool = False,
    postprocess: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> InferResult:
    """Predict every image of ``images`` (``ImageID``, ``image``) and write the outputs to ``out``.

    Args:
        ensemble: Models and config (``load_ensemble`` or ``load_bundle``).
        images: The images to predict.
        out: Output folder (created).
        tta: View set name.
        save_probs: Also write uint8 probabilities ``<id>.probs.npy`` ``(K, H, W)``.
        color: Also write ``<id>_color.png`` in the data set's palette.
        overlay: Also write ``<id>_overlay.png``: the image beside its blend with the colour mask.
        postprocess: Apply the ensemble's tuned post-processing (``postprocess.json``), when it has one.
        on_progress: ``callback(done, total)``.

    Raises:
        InferError: On an unreadable image when ``infer.on_error`` is ``stop`` (the default).
    """
    cfg = ensemble.cfg
    post = ensemble.post if postprocess else None
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")
    from kseg.train import amp_dtype

    amp = amp_dtype(cfg, device)
    models = [m.to(device) for m in ensemble.models]
    if cfg.train.channels_last:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    predictor = Predictor(models, cfg, device, amp, tta, ensemble.weights)
    palette = palette_rgb(cfg.data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stream = _ImageStream(images[ID].tolist(), images["image"].tolist(), cfg.model.in_channels)
    workers = min(default_workers() if cfg.train.num_workers is None else cfg.train.num_workers, 4)
    step = infer_batch(cfg, device) if cfg.infer.mode == "resize" else 1
    loader = DataLoader(
        stream, batch_size=step, num_workers=workers, collate_fn=list, prefetch_factor=2 if workers else None
    )
    done, skipped, written = 0, [], []
    pending: list[Future] = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as writer:
        for batch in loader:
            good = []
            for image_id, path, image, error in batch:
                if error is None:
                    good.append((image_id, image))
                elif cfg.infer.on_error == "skip":
                    skipped.append(f"{path}: {error}")
                else:
                    raise InferError(f"{error.rstrip('.')} (set infer.on_error: skip to leave such images out)")
            if good:
                for (image_id, image), probs in zip(good, predictor.predict([im for _, im in good]), strict=True):
                    labels = apply(probs, post)
                    stored = (probs * 255).round().to(torch.uint8).numpy() if save_probs else None
                    pending.append(
                        writer.submit(_write_outputs, out, image_id, image, labels, stored, palette, color, overlay)
                    )
                    written.append((image_id, *labels.shape))
            while len(pending) > 8:  # bounded: memory does not grow with the number of images
                pending.pop(0).result()
            done += len(batch)
            if on_progress:
                on_progress(done, len(stream))
        for future in pending:
            future.result()
    seconds = time.perf_counter() - t0
    manifest = pd.DataFrame(written, columns=[ID, "height", "width"])
    atomic_write_text(out / "predictions.csv", manifest.to_csv(index=False))
    info = {
        "source": ensemble.source,
        "folds": ensemble.folds,
        "tta": tta,
        "mode": cfg.infer.mode,
        "merge": cfg.infer.merge,
        "scales": cfg.infer.tta_scales,
        "kseg_version": __version__,
        "images": len(written),
        "skipped": skipped,
        "postprocess": json.loads(post.to_json()) if post is not None else None,
    }
    atomic_write_text(out / "inference.json", json.dumps(info, indent=2))
    return InferResult(
        out,
        len(written),
        skipped,
        seconds,
        ensemble.folds,
        tta,
        len(predictor.views),
        ensemble.source,
        postprocessed=post is not None,
    )


def competition_test_images(cfg: Config) -> pd.DataFrame:
    """The competition's test images (``ImageID``, ``image``)."""
    return list_samples(cfg.data, "test")[[ID, "image"]]
