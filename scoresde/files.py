"""Writing files atomically and reading safetensors files without executing anything."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "DIGEST_KEY", "atomic_write", "clean_stale_tmp", "file_sha256", "read_safetensors", "tensor_digest", "write_safetensors",
]

DIGEST_KEY = "sha256"  # metadata entry: `tensor_digest` of the file's tensors and other metadata
# the temporary names `atomic_write` gives: ".<name>.tmp<pid>"
_TMP_NAME = re.compile(r"\.(?P<name>.+)\.tmp(?P<pid>[0-9]{1,10})")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *, mode: int | None = None) -> None:
    """Call write(tmp_path), fsync, rename over `path`, then fsync the folder so the rename itself
    survives a power loss; on failure `path` is untouched.

    mode: permission bits to give the file (e.g. 0o644 for a package asset), else the default.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # _TMP_NAME, cleaned by clean_stale_tmp
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_folder(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename is still atomic there
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return pid != 0  # someone else's process (or an invalid id: not ours to judge)
    return True


def clean_stale_tmp(folder: str | os.PathLike, *, target: str | None = None) -> list[Path]:
    """Delete the temporary files `atomic_write` left in `folder` when a process died mid-write.

    Only plain files named like `atomic_write`'s temporaries (".<name>.tmp<pid>") whose process is
    no longer running are removed (this process's own and live ones are kept); with `target`, only
    those of that file (<name> is target, or starts with target + "."); returns the removed paths.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TMP_NAME.fullmatch(p.name)
        if m is None or not p.is_file() or p.is_symlink():
            continue
        if target is not None and m["name"] != target and not m["name"].startswith(target + "."):
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def tensor_digest(tensors: dict[str, Tensor], meta: dict[str, str]) -> str:
    """SHA-256 (hex) over the metadata (but its DIGEST_KEY entry) and the tensors, in sorted name order:
    each tensor's name, dtype, shape and raw bytes (CPU, contiguous)."""
    h = hashlib.sha256()
    for k in sorted(meta):
        if k != DIGEST_KEY:
            h.update(f"meta {len(k)}:{k} {len(meta[k])}:".encode() + meta[k].encode())
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(f"tensor {len(k)}:{k} {t.dtype} {tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_safetensors(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, str], *,
                      mode: int | None = None) -> Path:
    """Write tensors and metadata (plus its DIGEST_KEY entry, checked by `read_safetensors`) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {**meta, DIGEST_KEY: tensor_digest(tensors, meta)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), mode=mode)
    return path


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
        detail = " ".join(str(e).split())[:200]
        raise ValueError(f"{path}: not a readable safetensors {what} ({type(e).__name__}: {detail})") from e
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: format {str(meta.get('format'))[:80]!r}, expected {fmt!r}")
    if DIGEST_KEY in meta and meta[DIGEST_KEY] != tensor_digest(tensors, meta):
        raise ValueError(f"{path}: {what} is corrupt: its SHA-256 digest does not match its contents")
    return tensors, meta
