import numpy as np
import pytest
import torch

from kseg.config import load_config
from kseg.data.images import rescale
from kseg.data.reading import list_samples
from kseg.errors import DataError
from kseg.training.dataset import TrainDataset, rare_class_weights

ALL_AUG = [
    "train.crop=random_crop",
    "data.image_size=[32,32]",
    "train.augment.shift_scale_rotate=1",
    "train.augment.coarse_dropout=1",
    "train.augment.color_jitter=1",
    "train.augment.brightness_contrast=1",
]


def _dataset(comp, *extra):
    cfg = load_config(comp / "kseg.yaml", list(extra))
    return TrainDataset.from_config(list_samples(cfg.data), cfg)


def _same(a, b):
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_samples_are_deterministic_per_epoch_and_index(comp):
    d = _dataset(comp, *ALL_AUG)
    first = [d[i] for i in range(4)]
    assert all(_same(x, d[i]) for i, x in enumerate(first))
    d.set_epoch(1)
    assert not all(_same(x, d[i]) for i, x in enumerate(first))


def test_cache_gives_the_same_samples_and_is_read_only(comp):
    cached = _dataset(comp, *ALL_AUG, "train.cache=true", "data.scale=0.5")
    plain = _dataset(comp, *ALL_AUG, "data.scale=0.5")
    assert all(_same(cached[i], plain[i]) for i in range(len(plain)))
    image, _ = cached.cache[0]
    with pytest.raises(ValueError):
        image[0, 0] = 0


def test_repeat_gives_different_crops_of_each_image(comp):
    d = _dataset(comp, *ALL_AUG, "train.repeat=3")
    assert len(d) == 3 * 24
    assert not _same(d[0], d[24])  # image 0 again, another crop


def test_scale_resizes_images_and_masks(comp):
    d = _dataset(comp, "data.scale=0.5", "train.crop=random_crop", "data.image_size=[32,32]")
    image, mask = d._read(0)
    assert image.shape == (32, 48, 3) and mask.shape == (32, 48)
    assert set(np.unique(mask)) <= set(range(6))  # nearest: no invented labels
    assert rescale(np.zeros((10, 20), np.uint8), 0.3, labels=True).shape == (3, 6)


def test_exclude_leaves_files_out(comp):
    cfg = load_config(comp / "kseg.yaml", ["data.exclude=['images/img_000*']"])
    ids = list_samples(cfg.data)["ImageID"]
    assert len(ids) == 14 and not ids.str.startswith("img_000").any()
    with pytest.raises(DataError, match="leaves no train image"):
        list_samples(load_config(comp / "kseg.yaml", ["data.exclude=['*']"]).data)


def test_rare_class_weights_favour_rare_classes():
    counts = np.array([[10, 0], [10, 0], [10, 0], [10, 5]])
    w = rare_class_weights(counts)
    assert w.sum() == pytest.approx(1) and w[3] > w[0]
