"""Natural-image patches cut from the two photographs that ship with scikit-learn.

`sklearn.datasets.load_sample_images()` holds two 427 x 640 RGB photographs, "china" (a temple
roof and trees) and "flower" (a flower close up). `cut_patches` cuts square RGB patches (16 x 16
or 32 x 32, 8-bit: 256 levels) from them on a regular grid: images (N, 3, S, S) uint8 and labels
(N,) the photograph (0 china, 1 flower). `scoresde.data.patches` (and `scoresde.data.load("patches")`)
returns them as an `ImageData` like the digits, to be scaled with
`scoresde.data.to_model_input(images, 256, ...)`; this module imports nothing from `scoresde.data`.

What it is: two scenes, so a few thousand strongly overlapping patches with the statistics of
natural images (smooth regions, edges, texture, correlated colour channels): the classic patch
density benchmark (small natural-image patches, as in the density-estimation literature) in a form
that needs no download. It is not a data set of objects; CIFAR-10 (`scoresde.data.cifar10`) and
image folders (`scoresde.data.image_folder`) stay the way to use real data sets.

The split is by region, so that no test pixel is ever in a train patch: each photograph is cut at
column TRAIN_COLUMNS = 512; train patches lie entirely in columns [0, 512) and test patches
entirely in columns [512, 640), of every row. (Neighbouring pixels across the cut are correlated,
as in any split of one scene.) Patches start every `stride` pixels (default size / 2) from the
top-left corner of their region; `flips=True` adds the mirror image of every patch (after the
originals, in the same order). The order is photograph, then row, then column, and the result
is the same on every call (the photographs are JPEG files decoded by Pillow; another libjpeg may
decode a few pixel values differently).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from solvers.validate import check_bool, check_int, check_name

__all__ = [
    "PATCH_SIZES", "PHOTOS", "TRAIN_COLUMNS", "PatchGrid", "cut_patches", "patch_grid", "sample_photos",
]

PHOTOS = ("china", "flower")  # label 0, 1: the order of load_sample_images()
PHOTO_SHAPE = (427, 640)  # rows, columns
TRAIN_COLUMNS = 512  # train: columns [0, 512) (80 %), test: columns [512, 640)
PATCH_SIZES = (16, 32)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class PatchGrid:
    """Where the patches of one split lie: photo, top, left (N,) int64, each patch covering rows
    [top, top + size) and columns [left, left + size) of photograph PHOTOS[photo]; flipped copies
    (flips=True) repeat these coordinates after the originals."""

    photo: Tensor
    top: Tensor
    left: Tensor
    size: int


def _region(split: str) -> tuple[int, int]:
    """Columns [start, stop) of a split's region."""
    return (0, TRAIN_COLUMNS) if split == "train" else (TRAIN_COLUMNS, PHOTO_SHAPE[1])


def _check(split: str, size: int, stride: int | None) -> int:
    """Validate the arguments; return the stride (default size // 2)."""
    check_name("split", split, SPLITS)
    if size not in PATCH_SIZES:
        raise ValueError(f"size must be one of {list(PATCH_SIZES)}, got {size!r}")
    stride = size // 2 if stride is None else stride
    check_int("stride", stride, 1, size)
    return stride


def patch_grid(split: str = "train", size: int = 16, *, stride: int | None = None) -> PatchGrid:
    """The top-left corners of the patches of `split` (without flipped copies); see the module docstring."""
    stride = _check(split, size, stride)
    start, stop = _region(split)
    tops = torch.arange(0, PHOTO_SHAPE[0] - size + 1, stride)
    lefts = torch.arange(start, stop - size + 1, stride)
    top = tops.repeat_interleave(len(lefts)).repeat(len(PHOTOS))
    left = lefts.repeat(len(tops) * len(PHOTOS))
    photo = torch.arange(len(PHOTOS)).repeat_interleave(len(tops) * len(lefts))
    return PatchGrid(photo=photo, top=top, left=left, size=size)


def sample_photos() -> Tensor:
    """The two photographs as (2, 3, 427, 640) uint8 (china, flower). Needs scikit-learn and Pillow."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the patch data sets need scikit-learn and Pillow: pip install 'scoresde[data]'") from e
    photos = np.stack(load_sample_images().images)  # (2, 427, 640, 3) uint8
    if photos.shape != (len(PHOTOS), *PHOTO_SHAPE, 3) or photos.dtype != np.uint8:
        raise ValueError(f"scikit-learn's sample images: expected (2, 427, 640, 3) uint8, "
                         f"got {photos.shape} {photos.dtype}")
    return torch.from_numpy(np.ascontiguousarray(photos.transpose(0, 3, 1, 2)))


def cut_patches(split: str = "train", size: int = 16, *, stride: int | None = None,
                flips: bool = False) -> tuple[Tensor, Tensor]:
    """The patches of `split` as tensors: images (N, 3, size, size) uint8 and labels (N,) int64 (the
    photograph), in the order of `patch_grid`, then the mirrored copies when flips=True.

    Needs nothing from `scoresde.data`, so that its loaders can build on it; `scoresde.data.patches` wraps it.
    """
    grid = patch_grid(split, size, stride=stride)
    check_bool("flips", flips)
    photos = sample_photos()
    rows = grid.top[:, None] + torch.arange(size)  # (N, size)
    cols = grid.left[:, None] + torch.arange(size)
    # images[n, c, i, j] = photos[photo[n], c, rows[n, i], cols[n, j]]
    images = photos[grid.photo[:, None, None, None], torch.arange(3)[None, :, None, None],
                    rows[:, None, :, None], cols[:, None, None, :]]
    labels = grid.photo.clone()
    if flips:
        images = torch.cat([images, images.flip(-1)])
        labels = torch.cat([labels, labels])
    return images.contiguous(), labels

