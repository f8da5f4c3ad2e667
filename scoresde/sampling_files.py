"""`scoresde.save_samples`: n samples drawn in chunks and streamed to a .npy or .npz file, written atomically,
and optionally to one PNG file per sample."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from solvers.validate import check_bool, check_int

from .files import atomic_write, clean_stale_tmp
from .sampling import Samples, _chunks, _plan, _Tally
from .sampling_args import MAX_COUNT

__all__ = ["SavedSamples", "quantize_images", "save_samples"]


@dataclass(frozen=True)
class SavedSamples:
    """What `save_samples` returns (the samples themselves are in the file).

    path: the file written (None: none); shape: (n, *D) of its array; dtype: its numpy dtype name;
    nfe: model evaluations of all chunks, nfe_per_chunk: each chunk's; seconds: wall time of the
    solver; settings: as `Samples.settings` (with batch_size and nfe_per_chunk); first: the first
    `keep_first` samples (keep_first, *D) on the CPU; image_dir: the folder of PNG files (None: none).
    """

    path: Path | None
    shape: tuple
    dtype: str
    nfe: int
    nfe_per_chunk: tuple
    seconds: float
    settings: dict
    first: Tensor
    image_dir: Path | None = None


# torch dtype -> the numpy dtype save_samples writes (bfloat16 has none)
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def save_samples(path: str | os.PathLike | None, *, n: int, batch_size: int | None, progress: bool = False,
                 keep_first: int = 0, image_dir: str | os.PathLike | None = None, **sample_kwargs) -> SavedSamples:
    """Draw n samples in chunks of batch_size and stream them to a .npy or .npz file (array "x", (n, *D)).

    sample_kwargs: `sample`'s (model, sde, solver, steps, shape, seed, dtype, y, ...; not x_T: the prior is
    drawn chunk by chunk). Seeds behave as in `sample(..., batch_size=batch_size)`: an int seed s gives
    row i the per-sample seed s + i, so the rows do not depend on batch_size (fixed-grid solvers).
    batch_size None draws all n at once, exactly as `sample` without batch_size (one generator).
    Memory does not grow with n: each chunk is written before the next is drawn, after the .npy header.
    The file appears only when complete: it is written to a temporary file beside `path` and renamed
    over it (`scoresde.files.atomic_write`); on any error the temporary file is removed and `path` is
    untouched. dtype float16, float32 (default) or float64.

    A .npz file holds, besides x (one uncompressed ZIP64 entry "x.npy", streamed): `images`, the
    samples as uint8 images (n, H, W, C), the layout FID tools read, quantized by `quantize_images`
    (only for image samples, D = (C, H, W) with C 1 or 3; streamed through a temporary file beside
    `path`); `labels` (n,) int64, the class of each sample, when y is given; and `settings`, a JSON
    string of the run's settings (those returned). A .npy file holds x alone. path None: no array file.

    image_dir: also write sample i as the PNG file image_dir/{i:06d}.png (quantized as `images`;
    D = (C, H, W) with C 1 or 3), chunk by chunk; the folder is created if missing; a failure leaves
    the files of the chunks already written. progress: a tqdm bar over samples. keep_first: also return
    the first keep_first samples (e.g. for a preview grid). Returns `SavedSamples` (path, shape, dtype,
    nfe, nfe_per_chunk, seconds, settings, first, image_dir).
    """
    path = None if path is None else Path(path)
    member = None if path is None else _npz_member(path)
    if "x_T" in sample_kwargs:
        raise ValueError("x_T: save_samples draws the prior chunk by chunk; to save samples of a given x_T "
                         "call sample(x_T=..., batch_size=...) and save its x")
    check_int("keep_first", keep_first, 0, MAX_COUNT)
    check_bool("progress", progress)
    if image_dir is not None:
        image_dir = Path(image_dir)
        if image_dir.exists() and not image_dir.is_dir():
            raise ValueError(f"image_dir {str(image_dir)!r} is a file, not a folder")
    plan = _plan(n=n, batch_size=batch_size, **sample_kwargs)
    if plan.dtype not in _NUMPY_DTYPES:
        raise ValueError(f"dtype: save_samples writes {', '.join(str(d) for d in _NUMPY_DTYPES)}, got {plan.dtype}")
    # what the rows hold: the solver's shape, or a latent model's decoded images
    shape = tuple(plan.model.pixel_shape) if hasattr(plan.model, "latent_shape") else plan.shape
    is_image = len(shape) == 3 and shape[0] in (1, 3)
    if image_dir is not None and not is_image:
        raise ValueError(f"image_dir: image files need samples of shape (C, H, W) with C 1 or 3, got {shape}")
    np_dtype = np.dtype(_NUMPY_DTYPES[plan.dtype])
    tally, first = _Tally(), []
    rows = _rows(_chunks(plan, batch_size, progress), tally, first, keep_first)
    if image_dir is not None:
        image_dir.mkdir(parents=True, exist_ok=True)
        rows = _write_image_files(rows, image_dir)
    header = _npy_header((plan.n, *shape), np_dtype)
    if path is not None:  # what a killed earlier run of this file left: its temporary file and image spool
        clean_stale_tmp(path.parent, target=path.name)
    if path is None:
        for _ in rows:
            pass
    elif member is None:
        atomic_write(path, lambda tmp: _write_npy(tmp, header, rows))
    else:
        def extras() -> dict[str, np.ndarray]:  # written once x is complete
            out = {}
            if plan.y is not None:
                out["labels"] = plan.y.cpu().to(torch.int64).expand(plan.n).numpy()
            out["settings"] = np.asarray(json.dumps(tally.settings(plan, batch_size), default=str))
            return out

        images = _npy_header((plan.n, *shape[1:], shape[0]), np.dtype(np.uint8)) if is_image else None
        atomic_write(path, lambda tmp: _write_npz(tmp, header, rows, images, extras))
    return SavedSamples(
        path=path, shape=(plan.n, *shape), dtype=np_dtype.name, nfe=sum(tally.nfe_per_chunk),
        nfe_per_chunk=tuple(tally.nfe_per_chunk), seconds=tally.seconds, settings=tally.settings(plan, batch_size),
        first=torch.cat(first) if first else torch.empty((0, *shape), dtype=plan.dtype), image_dir=image_dir,
    )


def quantize_images(x: np.ndarray | Tensor) -> np.ndarray:
    """Samples (B, C, H, W) in [-1, 1] as uint8 images (B, H, W, C): level k = round((x + 1) * 255 / 2).

    The inverse of `scoresde.data.to_model_input` for 256 levels (k -> 2 k / 255 - 1), values outside
    [-1, 1] clipped first; the grids of `save_image_grid` use the same map. NaN has no level: ValueError."""
    x = np.asarray(x.detach().cpu().float() if isinstance(x, Tensor) else x, dtype=np.float32)
    if np.isnan(x).any():
        raise ValueError(f"quantize_images: {int(np.isnan(x).sum())} NaN value(s) in the samples; NaN has no 8-bit level")
    k = np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(k.transpose(0, 2, 3, 1))


def _rows(chunks: Iterator[tuple[int, Samples]], tally: _Tally, first: list, keep_first: int) -> Iterator[np.ndarray]:
    """Each chunk's samples as a CPU array (B, *D), after adding it to `tally` and its rows below
    keep_first to `first`."""
    for lo, part in chunks:
        tally.add(part)
        if lo < keep_first:
            first.append(part.x[: keep_first - lo].cpu())
        yield part.x.cpu().numpy()


def _write_image_files(rows: Iterator[np.ndarray], folder: Path) -> Iterator[np.ndarray]:
    """Pass the blocks of rows on, after writing each row i as folder/{i:06d}.png."""
    from PIL import Image

    i = 0
    for block in rows:
        for img in quantize_images(block):
            pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            # atomic: a killed run leaves whole files only (FID tools read every file in the folder)
            atomic_write(folder / f"{i:06d}.png", lambda tmp, pil=pil: pil.save(tmp, format="PNG"))
            i += 1
        yield block


def _npz_member(path: Path) -> str | None:
    """None for a .npy path, the entry name "x.npy" for a .npz one; else ValueError."""
    if path.suffix not in (".npy", ".npz") or path.is_dir():
        raise ValueError(f"path must be a file name ending in .npy or .npz, got {str(path)!r}")
    return "x.npy" if path.suffix == ".npz" else None


def _npy_header(shape: tuple, dtype: np.dtype) -> bytes:
    """The .npy header (format 1.0) of a C-order array of `shape` and `dtype`."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _write_npy(tmp: Path, header: bytes, rows: Iterator[np.ndarray]) -> None:
    """Write header, then each block of rows, to the .npy file tmp."""
    with open(tmp, "wb") as f:
        _write_blocks(f, header, rows)


def _write_npz(tmp: Path, header: bytes, rows: Iterator[np.ndarray], images: bytes | None, extras) -> None:
    """The ZIP tmp: entry x.npy streamed from rows; with an `images` header, images.npy (their uint8
    images, kept in a temporary file beside tmp while x is written); then the arrays extras() returns."""
    stem, pid = tmp.name.rsplit(".tmp", 1)
    spool = tmp.with_name(f"{stem}.images.tmp{pid}")  # .<name>.images.tmp<pid>: what clean_stale_tmp finds
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            with zf.open("x.npy", "w", force_zip64=True) as f:  # ZIP64: the size is not known in advance
                if images is None:
                    _write_blocks(f, header, rows)
                else:
                    with open(spool, "wb") as g:
                        g.write(images)
                        _write_blocks(f, header, _also_images(rows, g))
            if images is not None:
                with open(spool, "rb") as g, zf.open("images.npy", "w", force_zip64=True) as f:
                    shutil.copyfileobj(g, f, 1 << 20)
            for name, array in extras().items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, array, allow_pickle=False)
    finally:
        spool.unlink(missing_ok=True)


def _also_images(rows: Iterator[np.ndarray], f) -> Iterator[np.ndarray]:
    """Pass the blocks of rows on, after appending their uint8 images to the open file f."""
    for block in rows:
        f.write(quantize_images(block).reshape(-1).view(np.uint8))
        yield block


def _write_blocks(f, header: bytes, rows: Iterator[np.ndarray]) -> None:
    f.write(header)
    for block in rows:
        f.write(np.ascontiguousarray(block).reshape(-1).view(np.uint8))
