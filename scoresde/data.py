"""Image data sets held in memory as integer levels, and the scaling to [-1, 1].

Every loader returns an `ImageData`: `images` (N, C, H, W) uint8 integer levels 0..levels-1,
`labels` (N,) int64 or None, and `levels` (17 for scikit-learn's digits, 256 for 8-bit images).
`to_model_input` turns a batch of levels into floats in [-1, 1]:

- without dequantization, level k maps to 2 k / (levels - 1) - 1 (0 -> -1, levels - 1 -> 1);
- with uniform dequantization (Theis et al. 2016, arXiv:1511.01844; Ho et al. 2019), level k maps to
  2 (k + u) / levels - 1 with u ~ U[0, 1), a continuous density on [-1, 1] whose bits/dim bound
  the discrete model's;
- an optional random horizontal flip with probability 1/2.

Augmentation draws from an explicit generator, so a training run is reproducible and resumable.
Errors name the file or folder at fault and what was expected; nothing is skipped silently.

Sources: digits from scikit-learn (`sklearn.datasets.load_digits`; scikit-learn is a dependency); RGB patches of
scikit-learn's two sample photographs (`patches`, cut by `scoresde.patches`); CIFAR-10 from
its python-pickle batches (https://www.cs.toronto.edu/~kriz/cifar.html), checked on their opcodes
first (`scoresde.cifar_pickle`: size, nesting, globals) and read by a restricted unpickler that builds
only dicts, lists, strings, numbers and numpy arrays; image folders by Pillow.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from solvers.validate import check_bool, check_int, check_name

from .cifar_pickle import CIFAR_GLOBALS, check_cifar_pickle
from .patches import PATCH_SIZES, PHOTOS, cut_patches

__all__ = [
    "CIFAR10_FILES", "DATASETS", "IMAGE_EXTENSIONS", "ImageData", "cifar10", "digits", "image_folder", "load",
    "patches", "to_model_input",
]

CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageData:
    """An in-memory image data set: images (N, C, H, W) uint8 levels, labels (N,) int64 or None.

    levels: number of intensity levels (17 for digits, 256 for 8-bit images); num_classes: number
    of classes when labelled, else None; source: where it came from (for messages).
    """

    images: Tensor
    labels: Tensor | None
    levels: int
    num_classes: int | None
    source: str

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.source}: images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels is not None and self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.source}: {tuple(self.labels.shape)} labels for {self.images.shape[0]} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])


def to_model_input(
    images: Tensor, levels: int, *, flip: bool = False, dequantize: bool = False,
    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Integer levels (B, C, H, W) -> floats in [-1, 1] of `dtype`, optionally flipped and dequantized.

    See the module docstring for the two scalings. Random draws (flip, then dequantization noise)
    come from `generator` on its device and are moved to the images' device. levels: an integer
    >= 2; images: integer values in [0, levels) (ValueError otherwise; the values are read only for
    CPU tensors, so that a training loop on an accelerator does not synchronize).
    """
    check_images_levels(images, levels)
    check_bool("flip", flip)
    check_bool("dequantize", dequantize)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be None or a torch.Generator, got {generator!r}"[:300])
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
    x = images.to(dtype)
    if flip:
        gen_device = images.device if generator is None else generator.device
        mask = torch.rand(x.shape[0], generator=generator, device=gen_device) < 0.5
        mask = mask.to(images.device).reshape(-1, 1, 1, 1)
        x = torch.where(mask, x.flip(-1), x)
    if dequantize:
        gen_device = images.device if generator is None else generator.device
        u = torch.rand(x.shape, generator=generator, device=gen_device, dtype=dtype).to(images.device)
        return 2.0 * (x + u) / levels - 1.0
    return 2.0 * x / (levels - 1) - 1.0


def check_images_levels(images: Tensor, levels: int) -> None:
    """Raise ValueError unless levels is an integer >= 2 and images (B, ...) hold integers in [0, levels).

    A float tensor must hold whole numbers. The values are read only on the CPU (no device sync).
    """
    check_int("levels", levels, 2)
    if not isinstance(images, Tensor) or images.is_complex() or images.dtype == torch.bool:
        raise ValueError(f"images must be an integer (or whole-number float) tensor, got {getattr(images, 'dtype', type(images).__name__)}")
    if images.device.type != "cpu" or images.numel() == 0:
        return
    if images.is_floating_point() and not bool((images == images.round()).all()):  # NaN and inf fail too
        raise ValueError("images must hold integer levels in [0, levels); got non-integer values (NaN, inf or fractions)")
    lo, hi = images.min().item(), images.max().item()
    if lo < 0 or hi >= levels:
        raise ValueError(f"images must hold integer levels in [0, levels) = [0, {levels}), got values in [{lo}, {hi}]")


def to_levels(x: Tensor, levels: int, *, dequantized: bool = False) -> Tensor:
    """Floats in [-1, 1] (B, C, H, W) -> integer levels 0..levels-1 (int64): the inverse of `to_model_input`.

    Values are clipped to [-1, 1] first (samples may overshoot). dequantized=False: the nearest
    level, k = round((x + 1)(levels - 1) / 2); dequantized=True: the dequantization bin that
    contains x, k = floor((x + 1) levels / 2) (the top edge 1.0 belongs to the last level). A model
    trained on dequantized data produces values on the second scale, so its samples need it.
    """
    check_int("levels", levels, 2)
    x = x.clamp(-1.0, 1.0)
    k = torch.floor((x + 1.0) * levels / 2.0) if dequantized else torch.round((x + 1.0) * (levels - 1) / 2.0)
    return k.clamp(0, levels - 1).to(torch.int64)


def _folder(root) -> Path:
    """root as a Path, unless it is not a path (a str or os.PathLike)."""
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise ValueError(f"root must be a folder path (a str or os.PathLike), got {root!r}"[:300])
    return Path(root)


# --- scikit-learn digits ---------------------------------------------------------------------------

def digits(split: str = "train") -> ImageData:
    """scikit-learn's 8x8 digits (17 levels, 10 classes), split as everywhere in the project.

    `train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)`: 1,437 train and 360 test
    images, (N, 1, 8, 8). Needs scikit-learn (a dependency of scoresde).
    """
    check_name("split", split, SPLITS)
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data set needs scikit-learn, a dependency of scoresde: pip install scikit-learn (constraints.txt pins it)") from e
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    X, y = (X_train, y_train) if split == "train" else (X_test, y_test)
    images = torch.from_numpy(X.astype(np.uint8).reshape(-1, 1, 8, 8))
    return ImageData(images, torch.from_numpy(y.astype(np.int64)), levels=17, num_classes=10,
                     source=f"sklearn digits ({split})")


# --- natural-image patches -----------------------------------------------------------------------

def patches(split: str = "train", size: int = 16, *, stride: int | None = None, flips: bool = False) -> ImageData:
    """RGB patches (N, 3, size, size) uint8 (256 levels) of scikit-learn's two sample photographs.

    split: "train" (columns [0, 512) of each photograph) or "test" (columns [512, 640)); size: 16
    or 32; stride: pixels between neighbouring patch corners, 1..size (default size / 2, so that
    neighbours overlap by half); flips: also every patch mirrored left-right (N doubles).
    Labels: the photograph, 0 china, 1 flower (num_classes 2). Counts with the default stride:
    16 x 16: 6,552 train and 1,560 test; 32 x 32: 1,550 train and 350 test. See `scoresde.patches`.
    """
    images, labels = cut_patches(split, size, stride=stride, flips=flips)
    stride = size // 2 if stride is None else stride
    return ImageData(images, labels, levels=256, num_classes=len(PHOTOS),
                     source=f"sklearn sample-image patches {size}x{size} ({split}, stride {stride}"
                            f"{', flips' if flips else ''})")


# --- CIFAR-10 ------------------------------------------------------------------------------------

class _BatchUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds: containers, strings, numbers and numpy arrays."""

    _ALLOWED = CIFAR_GLOBALS

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR batch)")


MAX_CIFAR_FILE_BYTES = 256 * 2**20  # a real batch: ~31 MB


def _cifar_labels(path: Path, labels, n: int) -> np.ndarray:
    """Labels as int64 (n,), from a list of Python ints or an integer array; nothing is converted."""
    if isinstance(labels, np.ndarray):
        ok = labels.dtype.kind in "iu" and labels.shape == (n,)
    else:
        ok = isinstance(labels, list) and len(labels) == n and all(type(v) is int for v in labels)
    if not ok:
        if isinstance(labels, np.ndarray):
            got = f"array {labels.dtype} {labels.shape}"
        elif isinstance(labels, list):
            got = f"list of {len(labels)} ({', '.join(sorted({type(v).__name__ for v in labels}))})"
        else:
            got = type(labels).__name__
        raise ValueError(f"{path}: expected {n} integer labels in 0..9, got {got}"[:300])
    out = np.asarray(labels, dtype=np.int64) if isinstance(labels, list) else labels.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() > 9):
        raise ValueError(f"{path}: expected {n} labels in 0..9, got values in {out.min()}..{out.max()}")
    return out


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    size = path.stat().st_size
    if size > MAX_CIFAR_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than a CIFAR-10 batch (at most {MAX_CIFAR_FILE_BYTES})")
    try:
        raw = path.read_bytes()
        check_cifar_pickle(raw)
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:
        detail = " ".join(str(e).split())[:200]
        raise ValueError(f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {detail})") from e
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        keys = sorted(str(k)[:40] for k in list(batch)[:20])
        raise ValueError(f"{path}: expected keys b'data' and b'labels', got {keys}")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        got = f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: expected data of shape (N, 3072) uint8, got {got}")
    return data.reshape(-1, 3, 32, 32), _cifar_labels(path, labels, data.shape[0])


def cifar10(root: str | os.PathLike, split: str = "train") -> ImageData:
    """CIFAR-10 from the python-pickle batches in `root` (the `cifar-10-batches-py` folder).

    train: data_batch_1 .. data_batch_5 (50,000 images); test: test_batch (10,000). Nothing is
    downloaded; missing files raise an error naming the folder and the files expected.
    """
    check_name("split", split, SPLITS)
    root = _folder(root)
    names = CIFAR10_FILES[split]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 {split} batches missing in folder {str(root)!r}: expected files {list(names)}, "
            f"missing {missing} (download and extract cifar-10-python.tar.gz there)"
        )
    parts = [_read_cifar_batch(root / n) for n in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return ImageData(images, labels, levels=256, num_classes=10, source=f"CIFAR-10 {split} in {root}")


# --- a folder of images --------------------------------------------------------------------------

def image_folder(root: str | os.PathLike, size: int, *, channels: int = 3, class_subfolders: bool = False) -> ImageData:
    """Every image file under `root` (recursively, sorted by path), resized to size x size.

    channels: 3 (RGB) or 1 (gray). Images are resized with Pillow's bicubic filter (a centre crop
    to a square first when not square). Files whose name starts with "." are ignored; any other
    file must be an image with one of IMAGE_EXTENSIONS that Pillow can decode, else the error
    names it. class_subfolders=True labels each image by its first-level subfolder (sorted names
    -> 0..K-1); images directly in `root` are then an error.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    check_int("size", size, 1)
    check_bool("class_subfolders", class_subfolders)
    root = _folder(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise ValueError(f"image folder {str(root)!r} holds no image files (expected {list(IMAGE_EXTENSIONS)})")
    classes = None
    if class_subfolders:
        top = [p for p in files if p.parent == root]
        if top:
            raise ValueError(f"class_subfolders=True but {str(top[0])!r} is not inside a class subfolder")
        classes = sorted({p.relative_to(root).parts[0] for p in files})
    mode = "RGB" if channels == 3 else "L"
    arrays, labels = [], []
    for path in files:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"{path}: not an image file (expected one of {list(IMAGE_EXTENSIONS)})")
        try:
            with Image.open(path) as im:
                im = im.convert(mode)
                w, h = im.size
                if w != h:
                    s = min(w, h)
                    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BICUBIC)
                a = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
        arrays.append(a.reshape(size, size, channels).transpose(2, 0, 1))
        if classes is not None:
            labels.append(classes.index(path.relative_to(root).parts[0]))
    images = torch.from_numpy(np.stack(arrays))
    return ImageData(
        images, None if classes is None else torch.tensor(labels, dtype=torch.long), levels=256,
        num_classes=None if classes is None else len(classes), source=f"image folder {root}",
    )


DATASETS = ("digits", "patches", "cifar10", "folder")


def load(name: str, *, root: str | None = None, split: str = "train", image_size: int | None = None,
         channels: int = 3, class_subfolders: bool = False) -> ImageData:
    """A data set by name: "digits", "patches" (image_size 16 or 32, default 16), "cifar10" (needs
    root) or "folder" (needs root and image_size)."""
    check_name("data set", name, DATASETS)
    if name == "digits":
        return digits(split)
    if name == "patches":
        if image_size is not None and (isinstance(image_size, bool) or image_size not in PATCH_SIZES):
            raise ValueError(f"data 'patches': image_size must be one of {list(PATCH_SIZES)}, got {image_size!r}")
        return patches(split, PATCH_SIZES[0] if image_size is None else image_size)
    if name == "cifar10":
        if root is None:
            raise ValueError("data 'cifar10' needs root, the folder of the python batches")
        return cifar10(root, split)
    if root is None or image_size is None:  # "folder"
        raise ValueError("data 'folder' needs root and image_size")
    check_int("image_size", image_size, 1)
    return image_folder(root, image_size, channels=channels, class_subfolders=class_subfolders)
