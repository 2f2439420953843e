import numpy as np
import pytest
import torch
from torch import nn

from kseg.errors import ConfigError
from kseg.prediction.tta import VIEW_SETS, View, merge_views, predict_views, views

ALL_VIEWS = sorted({v for vs in VIEW_SETS.values() for v in vs}, key=lambda v: (v.flip, v.k))


def numpy_view(x: np.ndarray, view: View) -> np.ndarray:
    """An independent implementation of a view on the last two axes (numpy, not torch)."""
    if view.flip:
        x = x[..., ::-1]
    return np.rot90(x, view.k, axes=(-2, -1)).copy()


def numpy_inverse(y: np.ndarray, view: View) -> np.ndarray:
    y = np.rot90(y, -view.k, axes=(-2, -1))
    return (y[..., ::-1] if view.flip else y).copy()


class PositionalModel(nn.Module):
    """Deliberately not equivariant: output depends on where a pixel is and on its neighbours."""

    def __init__(self, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ramp = torch.linspace(0, 1, w).view(1, 1, 1, w) + torch.linspace(0, 2, h).view(1, 1, h, 1)
        return self.conv(x) + ramp


def _forward(model):
    def forward(batch):
        probs = model(batch).softmax(1)[None]
        return probs, probs.amax((3, 4))

    return forward


@pytest.mark.parametrize("shape", [(5, 5), (4, 7)])
@pytest.mark.parametrize("view", ALL_VIEWS, ids=lambda v: v.name)
def test_every_view_inverts_exactly_and_matches_numpy(view, shape):
    x = torch.arange(2 * 3 * shape[0] * shape[1], dtype=torch.float32).reshape(2, 3, *shape)  # asymmetric
    augmented = view.augment(x)
    np.testing.assert_array_equal(augmented.numpy(), numpy_view(x.numpy(), view))
    assert torch.equal(view.deaugment(augmented), x)
    expected_shape = shape[::-1] if view.transposes else shape
    assert tuple(augmented.shape[-2:]) == tuple(expected_shape)


@pytest.mark.parametrize("view", [v for v in ALL_VIEWS if v != View()], ids=lambda v: v.name)
@pytest.mark.parametrize("shape", [(16, 16), (12, 20)])
def test_each_view_on_its_own_with_an_asymmetric_model(view, shape):
    """TTA over {identity, view} equals the mean computed independently with numpy."""
    model = PositionalModel()
    x = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = predict_views(_forward(model), x, [View(), view], chunk=64)[0]
        plain = model(x).softmax(1).numpy()
        seen = model(torch.from_numpy(numpy_view(x.numpy(), view))).softmax(1).numpy()
    expected = (plain + numpy_inverse(seen, view)) / 2
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    assert not np.allclose(plain, numpy_inverse(seen, view), atol=1e-3)  # the view really changes things


def test_view_sets():
    assert len(views("d4")) == 8 and len(set(views("d4"))) == 8
    assert len(views("flip")) == 4 and len(views("rot90")) == 4 and views("none") == [View()]
    with pytest.raises(ConfigError, match="TTA views 'd8' are unknown; choose from none, hflip"):
        views("d8")


@pytest.mark.parametrize("name", ["flip", "d4"])
@pytest.mark.parametrize("shape", [(32, 32), (32, 64)])
def test_mirrored_image_gets_exactly_the_mirrored_prediction(name, shape):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=4).eval()
    x = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = predict_views(_forward(model), x, views(name), chunk=16)[0]
        b = predict_views(_forward(model), x.flip(-1), views(name), chunk=16)[0]
    assert torch.equal(b, a.flip(-1))  # bit for bit, not just close
    assert torch.equal(b.argmax(1), a.argmax(1).flip(-1))


@pytest.mark.parametrize("name", ["flip", "d4"])
def test_every_symmetry_of_the_view_set_commutes_bit_for_bit(name):
    """For each view h of the set, predicting h(x) gives exactly h(prediction of x)."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(1)
    model = smp.Unet("resnet18", encoder_weights=None, classes=3).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        base = predict_views(_forward(model), x, views(name), chunk=16)[0]
        for h in views(name):
            moved = predict_views(_forward(model), h.augment(x), views(name), chunk=16)[0]
            assert torch.equal(moved, h.augment(base)), h.name


def test_merge_does_not_depend_on_view_order():
    per_view = {
        v: torch.rand(1, 1, 3, 6, 5, generator=torch.Generator().manual_seed(i)) for i, v in enumerate(views("d4"))
    }
    shuffled = dict(reversed(list(per_view.items())))
    assert torch.equal(merge_views(per_view, None, "mean"), merge_views(shuffled, None, "mean"))


def test_geometric_mean_does_not_underflow():
    probs = torch.full((1, 1, 3, 2, 2), 1e-30)
    probs[:, :, 0] = 1.0 - 2e-30
    merged = merge_views({v: probs for v in views("d4")}, None, "gmean")
    assert torch.isfinite(merged).all()
    torch.testing.assert_close(merged.sum(1), torch.ones(1, 2, 2))
    assert (merged[:, 0] > 0.99).all()


def test_weighted_models():
    a = torch.full((1, 1, 2, 3, 3), 0.2)
    b = torch.full((1, 1, 2, 3, 3), 0.8)
    merged = merge_views({View(): torch.cat([a, b])}, [1.0, 3.0], "mean")  # one view, two models
    torch.testing.assert_close(merged, torch.full((1, 2, 3, 3), 0.65))


def test_views_are_batched_into_few_forward_passes():
    calls = []

    def forward(batch):
        calls.append(tuple(batch.shape))
        probs = batch[:, :2].softmax(1)[None]
        return probs, probs.amax((3, 4))

    predict_views(forward, torch.randn(2, 3, 8, 12), views("d4"), chunk=64)
    assert calls == [(8, 3, 8, 12), (8, 3, 12, 8)]  # 4 upright views, then the 4 turned ones
    calls.clear()
    predict_views(forward, torch.randn(2, 3, 8, 8), views("flip"), chunk=3)
    assert [c[0] for c in calls] == [3, 3, 2]  # chunked when memory asks


ttach = pytest.importorskip("ttach")


@pytest.mark.parametrize(
    ("name", "transform", "shape"),
    [
        ("hflip", "hflip_transform", (32, 64)),
        ("vflip", "vlip_transform", (32, 64)),
        ("flip", "flip_transform", (32, 64)),
        ("d4", "d4_transform", (64, 64)),
        ("d4", "d4_transform", (32, 64)),
    ],
)
def test_same_as_ttach_mean_merge(name, transform, shape):
    """kseg's batched views against ttach's one-pass-per-view wrapper, on the same model."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=5).eval()
    probs_model = nn.Sequential(model, nn.Softmax(dim=1))  # both merge probabilities
    wrapper = ttach.SegmentationTTAWrapper(probs_model, getattr(ttach.aliases, transform)(), merge_mode="mean")
    x = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = wrapper(x)
        ours = predict_views(_forward(model), x, views(name), chunk=64)[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
