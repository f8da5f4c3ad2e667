"""Natural-image patches of scikit-learn's two sample photographs: shapes, the disjoint split, determinism."""

import pytest
import torch

from scoresde.data import ImageData, patches, to_model_input
from scoresde.patches import PHOTOS, TRAIN_COLUMNS, cut_patches, patch_grid, sample_photos


@pytest.fixture(scope="module")
def photos():
    return sample_photos()


@pytest.mark.parametrize("size, n_train, n_test", [(16, 6552, 1560), (32, 1550, 350)])
def test_shapes_levels_and_labels(size, n_train, n_test):
    for split, n in (("train", n_train), ("test", n_test)):
        d = patches(split, size)
        assert isinstance(d, ImageData)
        assert d.images.shape == (n, 3, size, size) and d.images.dtype == torch.uint8
        assert d.levels == 256 and d.num_classes == len(PHOTOS) == 2
        assert torch.equal(d.labels.bincount(), torch.tensor([n // 2, n // 2]))  # half from each photograph
        x = to_model_input(d.images[:8], d.levels)
        assert x.min() >= -1 and x.max() <= 1


def test_photos(photos):
    assert photos.shape == (2, 3, 427, 640) and photos.dtype == torch.uint8


@pytest.mark.parametrize("size, stride", [(16, None), (32, None), (16, 3), (32, 32), (32, 5)])
def test_no_test_pixel_is_in_a_train_patch(size, stride):
    # pixel-exact, by coordinates: mark every pixel each split's patches cover, per photograph
    covered = {}
    for split in ("train", "test"):
        g = patch_grid(split, size, stride=stride)
        mask = torch.zeros(2, 427, 640, dtype=torch.bool)
        for p, top, left in zip(g.photo.tolist(), g.top.tolist(), g.left.tolist()):
            mask[p, top:top + size, left:left + size] = True
        covered[split] = mask
    assert not (covered["train"] & covered["test"]).any()
    assert not covered["train"][:, :, TRAIN_COLUMNS:].any() and not covered["test"][:, :, :TRAIN_COLUMNS].any()
    assert covered["train"].any(dim=(1, 2)).all() and covered["test"].any(dim=(1, 2)).all()


@pytest.mark.parametrize("split", ["train", "test"])
def test_patches_are_the_photographs_at_their_coordinates(photos, split):
    for size in (16, 32):
        d, g = patches(split, size), patch_grid(split, size)
        assert torch.equal(d.labels, g.photo)
        for n in range(0, len(d), 7):
            p, top, left = g.photo[n].item(), g.top[n].item(), g.left[n].item()
            assert torch.equal(d.images[n], photos[p, :, top:top + size, left:left + size])


def test_deterministic_and_flips():
    a, b = patches("train", 32), patches("train", 32)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    f = patches("train", 32, flips=True)
    n = len(a)
    assert len(f) == 2 * n
    assert torch.equal(f.images[:n], a.images) and torch.equal(f.images[n:], a.images.flip(-1))
    assert torch.equal(f.labels, torch.cat([a.labels, a.labels]))
    images, labels = cut_patches("train", 32, flips=True)
    assert torch.equal(images, f.images) and torch.equal(labels, f.labels)


def test_stride():
    g = patch_grid("test", 16, stride=16)  # non-overlapping: 8 columns x 26 rows per photograph
    assert len(g.photo) == 2 * 8 * 26
    assert patch_grid("train", 16, stride=1).top.max() == 427 - 16


@pytest.mark.parametrize("kw, match", [
    (dict(size=8), "size must be one of"),
    (dict(split="val"), "choose one of"),
    (dict(stride=0), "stride must be"),
    (dict(size=16, stride=17), "stride must be"),
    (dict(flips="yes"), "flips"),
])
def test_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        patches(**kw)
