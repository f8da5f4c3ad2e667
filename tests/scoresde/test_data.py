"""Data: the digits split, CIFAR-10 batches, image folders, scaling and every error path."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde import data


def test_digits_split():
    train, test = data.digits("train"), data.digits("test")
    assert len(train) == 1437 and len(test) == 360
    assert train.shape == (1, 8, 8) and train.levels == 17 and train.num_classes == 10
    assert int(train.images.max()) == 16 and int(train.images.min()) == 0
    # stratified: 174 to 183 images per class overall, so 35 to 37 per class in the test split
    counts = torch.bincount(test.labels)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37
    # the same split as sklearn's call, image for image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, _, y_tr, _ = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    assert np.array_equal(train.images.reshape(1437, 64).numpy(), X_tr.astype(np.uint8))
    assert np.array_equal(train.labels.numpy(), y_tr)
    with pytest.raises(ValueError, match="choose one of"):
        data.digits("val")


def test_scaling_to_minus_one_one():
    levels = torch.tensor([0, 8, 16], dtype=torch.uint8).reshape(3, 1, 1, 1)
    x = data.to_model_input(levels, 17)
    torch.testing.assert_close(x.flatten(), torch.tensor([-1.0, 0.0, 1.0]))
    # uniform dequantization: level k -> 2 (k + u) / K - 1, u ~ U[0, 1); inside its bin of width 2 / K
    lv = torch.randint(0, 17, (4096, 1, 2, 2), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    xd = data.to_model_input(lv, 17, dequantize=True, generator=torch.Generator().manual_seed(1))
    k = lv.float()
    assert bool(((xd >= 2 * k / 17 - 1) & (xd < 2 * (k + 1) / 17 - 1)).all())
    assert float(xd.min()) >= -1.0 and float(xd.max()) < 1.0


def test_random_flip_is_seeded_and_half():
    img = torch.arange(4, dtype=torch.uint8).reshape(1, 1, 1, 4).expand(2000, 1, 1, 4)
    a = data.to_model_input(img, 256, flip=True, generator=torch.Generator().manual_seed(0))
    b = data.to_model_input(img, 256, flip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    flipped = a[:, 0, 0, 0] > a[:, 0, 0, 3]
    torch.testing.assert_close(a[flipped], data.to_model_input(img[:1], 256).flip(-1).expand(int(flipped.sum()), 1, 1, 4))
    assert 0.45 < float(flipped.float().mean()) < 0.55  # n = 2000: 4.5 standard deviations


def _write_batch(path, n, *, seed=0, shape=(None, 3072), labels=None):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(n, shape[1]), dtype=np.uint8)
    lab = list(rng.integers(0, 10, size=n)) if labels is None else labels
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"labels": [int(v) for v in lab], b"data": arr}, f)
    return arr, lab


def test_cifar10_from_pickles(tmp_path):
    arrays = [_write_batch(tmp_path / f"data_batch_{i}", 3, seed=i)[0] for i in range(1, 6)]
    _write_batch(tmp_path / "test_batch", 2, seed=9)
    ds = data.cifar10(tmp_path, "train")
    assert ds.images.shape == (15, 3, 32, 32) and ds.levels == 256 and ds.labels.shape == (15,)
    # rows are the channel-major 3 x 32 x 32 layout of the CIFAR files
    assert np.array_equal(ds.images[3].numpy().reshape(-1), arrays[1][0])
    assert len(data.cifar10(tmp_path, "test")) == 2


def test_cifar10_missing_files_name_folder_and_files(tmp_path):
    _write_batch(tmp_path / "data_batch_1", 2)
    with pytest.raises(FileNotFoundError) as e:
        data.cifar10(tmp_path, "train")
    msg = str(e.value)
    assert str(tmp_path) in msg and "data_batch_5" in msg and "missing ['data_batch_2'" in msg


def test_cifar10_corrupt_and_malformed_files_are_named(tmp_path):
    for i in range(1, 6):
        _write_batch(tmp_path / f"data_batch_{i}", 2)
    (tmp_path / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="data_batch_3: not a readable CIFAR-10"):
        data.cifar10(tmp_path)
    _write_batch(tmp_path / "data_batch_3", 2, shape=(None, 100))
    with pytest.raises(ValueError, match=r"data_batch_3: expected data of shape \(N, 3072\)"):
        data.cifar10(tmp_path)
    _write_batch(tmp_path / "data_batch_3", 2, labels=[0, 12])
    with pytest.raises(ValueError, match="data_batch_3: expected 2 labels in 0..9"):
        data.cifar10(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar10_refuses_code_in_pickles(tmp_path):
    for i in range(1, 6):
        _write_batch(tmp_path / f"data_batch_{i}", 2)
    with open(tmp_path / "data_batch_2", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="data_batch_2.*refusing to load"):
        data.cifar10(tmp_path)


def _save(path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder_resizes_and_scales(tmp_path):
    _save(tmp_path / "a.png", (20, 20), (255, 0, 0))
    _save(tmp_path / "sub" / "b.jpg", (40, 30), (0, 0, 255))  # not square: centre crop, then resize
    _save(tmp_path / "c.bmp", (8, 8), 128, mode="L")
    (tmp_path / ".DS_Store").write_bytes(b"ignored")
    ds = data.image_folder(tmp_path, 8)
    assert ds.images.shape == (3, 3, 8, 8) and ds.labels is None and ds.levels == 256
    x = data.to_model_input(ds.images, ds.levels)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))  # a.png, sorted first
    gray = data.image_folder(tmp_path, 4, channels=1)
    assert gray.images.shape == (3, 1, 4, 4)


def test_image_folder_class_subfolders(tmp_path):
    _save(tmp_path / "cat" / "1.png", (8, 8), (0, 0, 0))
    _save(tmp_path / "dog" / "1.png", (8, 8), (0, 0, 0))
    _save(tmp_path / "dog" / "2.png", (8, 8), (0, 0, 0))
    ds = data.image_folder(tmp_path, 8, class_subfolders=True)
    assert ds.labels.tolist() == [0, 1, 1] and ds.num_classes == 2
    _save(tmp_path / "loose.png", (8, 8), (0, 0, 0))
    with pytest.raises(ValueError, match="loose.png.*not inside a class subfolder"):
        data.image_folder(tmp_path, 8, class_subfolders=True)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.image_folder(tmp_path / "nope", 8)
    with pytest.raises(ValueError, match="holds no image files"):
        data.image_folder(tmp_path, 8)
    _save(tmp_path / "ok.png", (8, 8), (0, 0, 0))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png: cannot read image"):
        data.image_folder(tmp_path, 8)
    (tmp_path / "broken.png").unlink()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: not an image file"):
        data.image_folder(tmp_path, 8)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        data.image_folder(tmp_path, 8, channels=2)


def test_load_by_name(tmp_path):
    assert len(data.load("digits", split="test")) == 360
    with pytest.raises(ValueError, match="choose one of"):
        data.load("mnist")
    with pytest.raises(ValueError, match="needs root"):
        data.load("cifar10")


# --- to_levels: the inverse of to_model_input ------------------------------------------------------

from hypothesis import given, strategies as st  # noqa: E402


@given(levels=st.integers(2, 256), seed=st.integers(0, 2**31 - 1), dequantize=st.booleans())
def test_to_levels_inverts_to_model_input(levels, seed, dequantize):
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, levels, (4, 1, 3, 3), generator=g)
    x = data.to_model_input(k, levels, dequantize=dequantize, generator=g, dtype=torch.float64)
    assert torch.equal(data.to_levels(x, levels, dequantized=dequantize), k)


def test_to_levels_clips_overshoot_and_picks_the_scale():
    x = torch.tensor([-1.3, -1.0, 0.0, 0.99, 1.0, 1.7])
    assert data.to_levels(x, 17).tolist() == [0, 0, 8, 16, 16, 16]
    # bins of width 2/17: 0.0 lies in bin 8 ([-1/17, 1/17)), 0.99 in bin 16 ([15/17, 1])
    assert data.to_levels(x, 17, dequantized=True).tolist() == [0, 0, 8, 16, 16, 16]
    x = torch.tensor([-0.95, 0.9])  # (x + 1) 16 / 2 = 0.4, 15.2 -> round 0, 15; (x + 1) 17 / 2 = 0.425, 16.15 -> floor 0, 16
    assert data.to_levels(x, 17).tolist() == [0, 15]
    assert data.to_levels(x, 17, dequantized=True).tolist() == [0, 16]


@pytest.mark.parametrize("levels", [1, 0, 2.0, True])
def test_to_levels_rejects_bad_levels(levels):
    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
        data.to_levels(torch.zeros(1), levels)
