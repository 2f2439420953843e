"""Torch datasets, albumentations pipelines and loaders for training.

Augmentations are seeded per sample from ``(train.seed, epoch, index)``, so an epoch's batches are the
same whatever the number of workers and whether the run was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from kseg.config import AugmentConfig, Config
from kseg.data.images import channel_stats, load_image, normalize, rescale
from kseg.data.reading import MaskSpec, read_mask
from kseg.errors import DataError
from kseg.runtime import epoch_seed


@dataclass(frozen=True)
class PseudoRows:
    """Pseudo-labelled training images (``kseg pseudo``).

    Attributes:
        rows: ``ImageID, image, mask``: index-PNG masks, ``ignore_index`` where the label was not confident.
        share: Share of every training batch given to them (0-1).
    """

    rows: pd.DataFrame
    share: float


def train_transforms(
    size: tuple[int, int], aug: AugmentConfig, *, crop: str = "resize", ignore_index: int = 255, seed: int = 0
) -> A.Compose:
    """Crop (``random_crop``, padded with ``ignore_index``) or ``resize`` to ``size``, then the enabled
    augmentations (``train.augment``), seeded by ``seed``."""
    height, width = size
    ignore = ignore_index
    steps: list = []
    if crop == "resize":
        steps.append(A.Resize(height, width, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    else:
        steps += [
            A.PadIfNeeded(height, width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore),
            A.RandomCrop(height, width),
        ]
    if aug.hflip:
        steps.append(A.HorizontalFlip(p=aug.hflip))
    if aug.vflip:
        steps.append(A.VerticalFlip(p=aug.vflip))
    if aug.rotate90 and height == width:  # a quarter turn swaps H and W; flips already give 180 degrees
        steps.append(A.RandomRotate90(p=aug.rotate90))
    if aug.shift_scale_rotate:
        steps.append(
            A.Affine(
                translate_percent=(-0.0625, 0.0625),
                scale=(0.9, 1.1),
                rotate=(-15, 15),
                border_mode=cv2.BORDER_REFLECT_101,
                p=aug.shift_scale_rotate,
            )
        )
    if aug.brightness_contrast:
        steps.append(A.RandomBrightnessContrast(p=aug.brightness_contrast))
    if aug.color_jitter:  # scenes differ in light and season from tile to tile
        steps.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.3, hue=0.04, p=aug.color_jitter))
    if aug.coarse_dropout:
        steps.append(
            A.CoarseDropout(
                num_holes_range=(1, 8),
                hole_height_range=(0.05, 0.15),
                hole_width_range=(0.05, 0.15),
                fill=0,
                p=aug.coarse_dropout,
            )
        )
    return A.Compose(steps, seed=seed)


class TrainDataset(Dataset):
    """Training images and masks through the augmentation pipeline.

    Shape:
        Items are ``(image (C, H, W) float32, mask (H, W) int64)``.
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        spec: MaskSpec,
        transform: A.Compose | None,
        *,
        mean: list[float],
        std: list[float],
        per_image: bool = False,
        channels: int = 3,
        seed: int = 0,
        scale: float = 1.0,
        repeat: int = 1,
        cache: bool = False,
    ):
        self.images = samples["image"].tolist()
        self.masks = samples["mask"].tolist()
        # pseudo-labelled rows (kseg pseudo) have index masks whatever the competition's mask format
        self.pseudo = samples["pseudo"].astype(bool).tolist() if "pseudo" in samples else [False] * len(samples)
        self.spec = spec
        self.pseudo_spec = MaskSpec("index", spec.n_classes, spec.ignore_index, "error")
        self.transform = transform
        self.mean, self.std = mean, std
        self.per_image = per_image
        self.channels = channels
        self.seed = seed
        self.scale = scale
        self.repeat = repeat
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
        if cache:  # filled here, before loader workers fork, so they share it
            self.cache = {i: self._read(i) for i in range(len(self.images))}
            for arrays in self.cache.values():
                for array in arrays:
                    array.setflags(write=False)  # shared: an in-place change must fail, not spread
        self.epoch = 0

    @classmethod
    def from_config(cls, samples: pd.DataFrame, cfg: Config) -> TrainDataset:
        """The training set of ``cfg``: its mask spec, normalisation, scale, repeats, cache and augmentations."""
        transform = train_transforms(
            cfg.data.image_size,
            cfg.train.augment,
            crop=cfg.train.crop,
            ignore_index=cfg.data.ignore_index,
            seed=cfg.train.seed,
        )
        return cls(
            samples,
            MaskSpec.from_config(cfg.data),
            transform,
            mean=cfg.data.mean,
            std=cfg.data.std,
            per_image=cfg.data.normalize == "per_image",
            channels=cfg.model.in_channels,
            seed=cfg.train.seed,
            scale=cfg.data.scale,
            repeat=cfg.train.repeat,
            cache=cfg.train.cache,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images) * self.repeat

    def _read(self, source: int) -> tuple[np.ndarray, np.ndarray]:
        cache = getattr(self, "cache", None)
        if cache is not None:
            return cache[source]
        image = load_image(self.images[source], self.channels)
        mask = read_mask(Path(self.masks[source]), self.pseudo_spec if self.pseudo[source] else self.spec)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"mask {self.masks[source]} is {mask.shape[0]}x{mask.shape[1]} but image {self.images[source]} is "
                f"{image.shape[0]}x{image.shape[1]}; each mask must have its image's size"
            )
        if self.scale != 1.0:
            image, mask = rescale(image, self.scale), rescale(mask, self.scale, labels=True)
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._read(index % len(self.images))
        mean, std = channel_stats(image) if self.per_image else (self.mean, self.std)  # whole image, not crop
        if self.transform is not None:
            self.transform.set_random_seed(
                int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
            )
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return normalize(image, mean, std), torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))


def rare_class_weights(counts: np.ndarray) -> np.ndarray:
    """Sampling weight per image: the rarest class it contains sets it (inverse share of images, sqrt).

    Shape:
        counts ``(N, K)`` class pixels per image; returns ``(N,)`` summing to 1.
    """
    present = np.asarray(counts) > 0
    share = present.mean(0)
    with np.errstate(divide="ignore"):
        rarity = np.where(share > 0, 1.0 / np.maximum(share, 1e-12), 0.0)
    weight = np.sqrt((present * rarity).max(1))
    weight = np.where(weight > 0, weight, weight[weight > 0].min() if (weight > 0).any() else 1.0)
    return weight / weight.sum()


def _epoch_order(
    n_images: int, repeat: int, generator: torch.Generator, sample_weights: np.ndarray | None
) -> list[int]:
    """Dataset indices of one epoch: each image ``repeat`` times, shuffled, or drawn by weight."""
    if sample_weights is not None:
        weights = np.tile(sample_weights.astype(np.float64), repeat)
        drawn = WeightedRandomSampler(weights.tolist(), n_images * repeat, replacement=True, generator=generator)
        return list(drawn)
    return torch.randperm(n_images * repeat, generator=generator).tolist()


def mixed_order(
    n_real: int,
    n_pseudo: int,
    *,
    batch_size: int,
    share: float,
    repeat: int,
    generator: torch.Generator,
    sample_weights: np.ndarray | None = None,
) -> list[int]:
    """One epoch's indices into a dataset of ``n_real`` labelled then ``n_pseudo`` pseudo-labelled images
    (each ``repeat`` times: index ``j * n + i`` is image ``i``), in batches of ``batch_size`` that each hold
    ``round(share * batch_size)`` pseudo-labelled images (at least one, at most all but one). The
    labelled images are each seen ``repeat`` times, as without pseudo-labels; the epoch has more batches.
    """
    n = n_real + n_pseudo
    per_batch = min(max(1, round(share * batch_size)), batch_size - 1) if batch_size > 1 else 0
    real = _epoch_order(n_real, repeat, generator, sample_weights)
    real = [(i // n_real) * n + i % n_real for i in real]
    taken = batch_size - per_batch
    batches = -(-len(real) // taken)
    pseudo_needed = batches * per_batch
    pseudo: list[int] = []
    while len(pseudo) < pseudo_needed:  # cycle through fresh shuffles of the pseudo-labelled images
        cycle = len(pseudo) // n_pseudo
        pseudo += [cycle * n + n_real + i for i in torch.randperm(n_pseudo, generator=generator).tolist()]
    order: list[int] = []
    for b in range(batches):
        order += real[b * taken : (b + 1) * taken] + pseudo[b * per_batch : (b + 1) * per_batch]
    return order


def train_loader(
    dataset: TrainDataset,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    workers: int,
    sample_weights: np.ndarray | None = None,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
    pseudo_share: float = 0.0,
) -> DataLoader:
    """The loader of one epoch: its shuffling depends only on ``(seed, epoch)`` (and the rank). With
    pseudo-labelled rows in the dataset, every batch holds ``pseudo_share`` of them (``mixed_order``);
    ``sample_weights`` then weighs the labelled rows only."""
    dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    n_pseudo = sum(dataset.pseudo)
    if n_pseudo:
        order = mixed_order(
            len(dataset.images) - n_pseudo,
            n_pseudo,
            batch_size=batch_size,
            share=pseudo_share,
            repeat=dataset.repeat,
            generator=generator,
            sample_weights=sample_weights,
        )
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)][rank::world]
        sampler = [i for batch in batches for i in batch]  # whole batches per rank keep the share
    elif sample_weights is not None:
        drawn = WeightedRandomSampler(
            sample_weights.astype(np.float64).tolist(), len(dataset), replacement=True, generator=generator
        )
        sampler = list(drawn)[rank::world]
    else:
        order = torch.randperm(len(dataset), generator=generator).tolist()
        per_rank = len(order) // world if world > 1 else len(order)
        sampler = order[rank * per_rank : (rank + 1) * per_rank] if world > 1 else order
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=len(sampler) > batch_size,
        persistent_workers=False,
    )


def cutmix(images: torch.Tensor, masks: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix for segmentation: with probability ``p`` per sample, a box of another sample of the batch
    (image and labels together) is pasted in; the box covers a uniform random share of the area.

    Shape:
        images ``(B, C, H, W)``, masks ``(B, H, W)``; returns new tensors of the same shapes.
    """
    batch, _, height, width = images.shape
    if p <= 0 or batch < 2:
        return images, masks
    images, masks = images.clone(), masks.clone()
    source = (torch.arange(batch) + torch.randint(1, batch, ())) % batch  # another sample, never oneself
    chosen = torch.rand(batch) < p
    share = torch.rand(batch)
    originals_i, originals_m = images.clone(), masks.clone()
    for i in torch.nonzero(chosen).flatten().tolist():
        h = max(1, int(round(height * share[i].sqrt().item())))
        w = max(1, int(round(width * share[i].sqrt().item())))
        y = int(torch.randint(0, height - h + 1, ()).item())
        x = int(torch.randint(0, width - w + 1, ()).item())
        j = int(source[i])
        images[i, :, y : y + h, x : x + w] = originals_i[j, :, y : y + h, x : x + w]
        masks[i, y : y + h, x : x + w] = originals_m[j, y : y + h, x : x + w]
    return images, masks


def copy_paste(
    images: torch.Tensor, masks: torch.Tensor, p: float, classes: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-aware copy-paste: with probability ``p`` per sample, the pixels of one of ``classes``
    present in another sample of the batch (picked at random among those present) are pasted in,
    image and labels together, at the same place.

    Shape:
        images ``(B, C, H, W)``, masks ``(B, H, W)``; returns new tensors of the same shapes.
    """
    batch = images.shape[0]
    if p <= 0 or batch < 2 or not classes:
        return images, masks
    wanted = torch.tensor(classes, dtype=masks.dtype)
    originals_i, originals_m = images.clone(), masks.clone()
    images, masks = images.clone(), masks.clone()
    chosen = torch.rand(batch) < p
    for i in torch.nonzero(chosen).flatten().tolist():
        others = [j for j in torch.randperm(batch).tolist() if j != i]
        for j in others:
            present = wanted[torch.isin(wanted, torch.unique(originals_m[j]))]
            if len(present):
                c = present[torch.randint(0, len(present), ())]
                where = originals_m[j] == c
                images[i][:, where] = originals_i[j][:, where]
                masks[i][where] = c
                break
    return images, masks


def paste_classes(names: list[str] | None, classes: list[str], class_pixels: np.ndarray | None) -> list[int]:
    """Class indices for copy-paste: ``names`` (``train.augment.copy_paste_classes``), or by default the
    classes whose share of the training pixels is below the median (all but class 0 without counts)."""
    if names is not None:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(
                f"train.augment.copy_paste_classes names {unknown[0]!r}, which is not in data.classes "
                f"{classes}; use class names from there"
            )
        return [classes.index(n) for n in names]
    k = len(classes)
    if class_pixels is None or class_pixels.sum() == 0:
        return list(range(1, k))
    share = class_pixels / class_pixels.sum()
    return [c for c in range(k) if share[c] < np.median(share)]
