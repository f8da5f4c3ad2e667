"""The shipped patch feature extractor: loading, integrity, determinism, the pretext task, and its
Fréchet distance ranking real patches above a Gaussian mixture's samples."""

import json

import numpy as np
import pytest
import torch

from scoresde.data import patches, to_levels, to_model_input
from scoresde.files import read_safetensors
from scoresde.likelihood import dequantize
from scoresde.patch_features import (ASSET, FORMAT, PatchFeatureConfig, PatchFeatureNet, load_patch_features,
                                     patch_features, patch_frechet_distance, pretext_accuracy, pretext_batch,
                                     save_patch_features, tiled_frechet_distance, tiles)


@pytest.fixture(scope="module")
def net():
    return load_patch_features()


@pytest.fixture(scope="module")
def data():
    return patches("train", 16), patches("test", 16)


def test_shipped_file_loads_with_its_metadata(net):
    assert isinstance(net, PatchFeatureNet) and not net.training
    assert net.config == PatchFeatureConfig()
    assert sum(p.numel() for p in net.parameters()) == 98_720
    _, meta = read_safetensors(ASSET, fmt=FORMAT, what="patch feature extractor")
    assert "sha256" in meta  # the digest load_patch_features checks
    extra = json.loads(meta["extra"])
    assert extra["test_pretext_accuracy"] > 0.25  # 8 classes: chance is 0.125 (measured 0.298)
    assert ASSET.stat().st_size < 500_000


def test_features_shape_deterministic_and_nonnegative(net, data):
    imgs = data[1].images[:100]
    f1, f2 = patch_features(imgs), patch_features(imgs, net)
    assert f1.shape == (100, 128) and f1.dtype == torch.float32
    assert torch.equal(f1, f2) and bool((f1 >= 0).all())
    # batching does not change the features beyond float rounding
    torch.testing.assert_close(patch_features(imgs, net, batch_size=7), f1, rtol=1e-5, atol=1e-5)


def test_pretext_accuracy_above_chance(net, data):
    test = data[1]
    idx = torch.arange(0, len(test.images), 8)  # 195 test patches x 4 rotations
    assert pretext_accuracy(net, test.images[idx], test.labels[idx]) > 0.2  # chance 0.125; all test patches: 0.298


@pytest.mark.slow
def test_pretext_accuracy_matches_the_file(net, data):
    test = data[1]
    _, meta = read_safetensors(ASSET, fmt=FORMAT, what="patch feature extractor")
    recorded = json.loads(meta["extra"])["test_pretext_accuracy"]
    assert pretext_accuracy(net, test.images, test.labels) == pytest.approx(recorded, abs=1e-12)


def test_pretext_batch_rotations_and_labels(data):
    imgs, photos = data[0].images[:5], data[0].labels[:5]
    x, y = pretext_batch(imgs, photos, generator=torch.Generator().manual_seed(0))
    assert x.shape == (20, 3, 16, 16) and y.shape == (20,)
    for r in range(4):
        assert torch.equal(x[5 * r:5 * (r + 1)], torch.rot90(x[:5], r, dims=(-2, -1)))
        assert torch.equal(y[5 * r:5 * (r + 1)], 4 * photos + r)
    base = to_model_input(imgs, 256)
    for i in range(5):  # the unrotated block is each patch, mirrored or not
        assert torch.equal(x[i], base[i]) or torch.equal(x[i], base[i].flip(-1))


def test_refuses_bad_input(net):
    with pytest.raises(ValueError, match="uint8"):
        patch_features(torch.zeros(4, 3, 16, 16), net)
    with pytest.raises(ValueError, match="shape"):
        patch_features(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), net)
    one, four = torch.zeros(1, 3, 16, 16, dtype=torch.uint8), torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="at least 2"):
        patch_frechet_distance(one, four)


def test_save_load_round_trip_and_corruption(tmp_path, net, data):
    path = tmp_path / "pf.safetensors"
    save_patch_features(net, path, extra={"note": "copy"})
    again = load_patch_features(path)
    imgs = data[1].images[:10]
    assert torch.equal(patch_features(imgs, again), patch_features(imgs, net))
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01  # a bit in the last weight
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="digest"):
        load_patch_features(bad)
    with pytest.raises(FileNotFoundError):
        load_patch_features(tmp_path / "missing.safetensors")


@pytest.mark.slow
def test_floor_is_below_a_gaussian_mixture(data):
    # a small N keeps it fast; the benchmark (benchmarks/patches.py) uses all test patches
    from sklearn.mixture import GaussianMixture

    train, test = data
    n = 400
    g = torch.Generator().manual_seed(0)
    floor = patch_frechet_distance(train.images[torch.randperm(len(train.images), generator=g)[:n]], test.images)
    x = dequantize(to_model_input(train.images, 256, dtype=torch.float64), 256, generator=g)
    gm = GaussianMixture(8, covariance_type="diag", random_state=0, max_iter=50).fit(x.flatten(1).numpy())
    xs = torch.from_numpy(gm.sample(n)[0]).float().reshape(n, 3, 16, 16)
    mixture = patch_frechet_distance(to_levels(xs, 256, dequantized=True).to(torch.uint8), test.images)
    assert np.isfinite(floor) and floor > 0
    assert floor < 0.8 * mixture, (floor, mixture)  # measured 69.7 against 122.8


def test_tiles_cut_row_major_and_the_tiled_distance_scores_them(net):
    x = torch.arange(2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    t = tiles(x)
    assert t.shape == (8, 3, 16, 16)
    corners = [(0, 0, 0), (0, 0, 16), (0, 16, 0), (0, 16, 16), (1, 0, 0)]
    for i, (n, r, c) in enumerate(corners):
        assert torch.equal(t[i], x[n, :, r:r + 16, c:c + 16])
    assert torch.equal(tiles(x[:, :, :16, :16]), x[:, :, :16, :16])  # a 16 x 16 patch is its own tile
    for bad in (torch.zeros(2, 3, 24, 24), torch.zeros(2, 1, 32, 32), torch.zeros(2, 3, 32, 16)):
        with pytest.raises(ValueError, match="multiple of 16"):
            tiles(bad)
    big = patches("test", 32).images[:40]
    assert tiled_frechet_distance(big[:20], big[20:], net) == pytest.approx(
        patch_frechet_distance(tiles(big[:20]), tiles(big[20:]), net), rel=1e-12)
