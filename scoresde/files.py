"""Writing files atomically and reading safetensors files without executing anything."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

__all__ = ["atomic_write", "read_safetensors"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *, mode: int | None = None) -> None:
    """Call write(tmp_path), fsync, then rename over `path`; on failure `path` is untouched.

    mode: permission bits to give the file (e.g. 0o644 for a package asset), else the default.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def safetensors_format(path: str | os.PathLike) -> str | None:
    """The "format" entry of a safetensors file's metadata, reading the header only.

    None when the file is missing, unreadable or has no format: a peek to choose a reader, which
    then reports what is wrong (`read_safetensors`).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("format")
    except Exception:
        return None


def read_safetensors(path: str | os.PathLike, *, fmt: str, what: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors on the CPU, metadata) of a safetensors file whose metadata "format" is `fmt`.

    Only tensors and strings are read: nothing is unpickled. `what` names the file in errors
    ("checkpoint", "digits classifier", ...): a missing file raises FileNotFoundError, an unreadable
    one or another format ValueError.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"{path}: not a readable safetensors {what} ({type(e).__name__}: {e})") from e
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {fmt!r}")
    return tensors, meta
