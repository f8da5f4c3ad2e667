"""`scoresde.save_samples`: n samples drawn in chunks and streamed to a .npy or .npz file, written atomically."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from solvers.validate import check_bool, check_int

from .files import atomic_write
from .sampling import Samples, _chunks, _plan, _Tally
from .sampling_args import MAX_COUNT

__all__ = ["SavedSamples", "save_samples"]


@dataclass(frozen=True)
class SavedSamples:
    """What `save_samples` returns (the samples themselves are in the file).

    path: the file written; shape: (n, *D) of its array; dtype: its numpy dtype name; nfe: model
    evaluations of all chunks, nfe_per_chunk: each chunk's; seconds: wall time of the solver;
    settings: as `Samples.settings` (with batch_size and nfe_per_chunk); first: the first
    `keep_first` samples (keep_first, *D) on the CPU.
    """

    path: Path
    shape: tuple
    dtype: str
    nfe: int
    nfe_per_chunk: tuple
    seconds: float
    settings: dict
    first: Tensor


# torch dtype -> the numpy dtype save_samples writes (bfloat16 has none)
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def save_samples(path: str | os.PathLike, *, n: int, batch_size: int | None, progress: bool = False, keep_first: int = 0,
                 **sample_kwargs) -> SavedSamples:
    """Draw n samples in chunks of batch_size and stream them to a .npy or .npz file (array "x", (n, *D)).

    sample_kwargs: `sample`'s (model, sde, solver, steps, shape, seed, dtype, y, ...; not x_T: the prior is
    drawn chunk by chunk). Seeds behave as in `sample(..., batch_size=batch_size)`: an int seed s gives
    row i the per-sample seed s + i, so the rows do not depend on batch_size (fixed-grid solvers).
    batch_size None draws all n at once, exactly as `sample` without batch_size (one generator).
    Memory does not grow with n: each chunk is written before the next is drawn, after the .npy header
    (.npz: one uncompressed ZIP64 entry "x.npy"). The file appears only when complete: it is written to
    a temporary file beside `path` and renamed over it (`scoresde.files.atomic_write`); on any error the
    temporary file is removed and `path` is untouched. dtype float16, float32 (default) or float64.
    progress: a tqdm bar over samples. keep_first: also return the first keep_first samples (e.g. for a
    preview grid). Returns `SavedSamples` (path, shape, dtype, nfe, nfe_per_chunk, seconds, settings, first).
    """
    path = Path(path)
    member = _npz_member(path)
    if "x_T" in sample_kwargs:
        raise ValueError("x_T: save_samples draws the prior chunk by chunk; to save samples of a given x_T "
                         "call sample(x_T=..., batch_size=...) and save its x")
    check_int("keep_first", keep_first, 0, MAX_COUNT)
    check_bool("progress", progress)
    plan = _plan(n=n, batch_size=batch_size, **sample_kwargs)
    if plan.dtype not in _NUMPY_DTYPES:
        raise ValueError(f"dtype: save_samples writes {', '.join(str(d) for d in _NUMPY_DTYPES)}, got {plan.dtype}")
    np_dtype = np.dtype(_NUMPY_DTYPES[plan.dtype])
    header = _npy_header((plan.n, *plan.shape), np_dtype)
    tally, first = _Tally(), []
    rows = _rows(_chunks(plan, batch_size, progress), tally, first, keep_first)
    atomic_write(path, lambda tmp: _write_npy(tmp, member, header, rows))
    return SavedSamples(
        path=path, shape=(plan.n, *plan.shape), dtype=np_dtype.name, nfe=sum(tally.nfe_per_chunk),
        nfe_per_chunk=tuple(tally.nfe_per_chunk), seconds=tally.seconds, settings=tally.settings(plan, batch_size),
        first=torch.cat(first) if first else torch.empty((0, *plan.shape), dtype=plan.dtype),
    )


def _rows(chunks: Iterator[tuple[int, Samples]], tally: _Tally, first: list, keep_first: int) -> Iterator[np.ndarray]:
    """Each chunk's samples as a CPU array (B, *D), after adding it to `tally` and its rows below
    keep_first to `first`."""
    for lo, part in chunks:
        tally.add(part)
        if lo < keep_first:
            first.append(part.x[: keep_first - lo].cpu())
        yield part.x.cpu().numpy()


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


def _write_npy(tmp: Path, member: str | None, header: bytes, rows: Iterator[np.ndarray]) -> None:
    """Write header, then each block of rows, to tmp (.npy) or to the entry `member` of a ZIP (.npz)."""
    if member is None:
        with open(tmp, "wb") as f:
            _write_blocks(f, header, rows)
        return
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        with zf.open(member, "w", force_zip64=True) as f:  # ZIP64: the size is not known in advance
            _write_blocks(f, header, rows)


def _write_blocks(f, header: bytes, rows: Iterator[np.ndarray]) -> None:
    f.write(header)
    for block in rows:
        f.write(np.ascontiguousarray(block).reshape(-1).view(np.uint8))
