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

Sources: digits from scikit-learn (`sklearn.datasets.load_digits`, an optional extra); CIFAR-10 from
its python-pickle batches (https://www.cs.toronto.edu/~kriz/cifar.html), read by a restricted
unpickler that builds only dicts, lists, strings, numbers and numpy arrays; image folders by Pillow.
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

from solvers.validate import check_int, check_name

__all__ = [
    "CIFAR10_FILES", "IMAGE_EXTENSIONS", "ImageData", "cifar10", "digits", "image_folder", "load",
    "to_model_input",
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


# --- scikit-learn digits ---------------------------------------------------------------------------

def digits(split: str = "train") -> ImageData:
    """scikit-learn's 8x8 digits (17 levels, 10 classes), split as everywhere in the project.

    `train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)`: 1,437 train and 360 test
    images, (N, 1, 8, 8). Needs scikit-learn (`pip install scoresde[data]`).
    """
    check_name("split", split, SPLITS)
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data set needs scikit-learn: pip install 'scoresde[data]'") from e
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    X, y = (X_train, y_train) if split == "train" else (X_test, y_test)
    images = torch.from_numpy(X.astype(np.uint8).reshape(-1, 1, 8, 8))
    return ImageData(images, torch.from_numpy(y.astype(np.int64)), levels=17, num_classes=10,
                     source=f"sklearn digits ({split})")


# --- CIFAR-10 ------------------------------------------------------------------------------------

class _BatchUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds: containers, strings, numbers and numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR batch)")


# Bounds on a CIFAR batch's pickle, checked on its opcodes before anything is built (a real batch:
# ~31 MB, a dict of 4 entries, two lists of 10,000 items, nesting 4 deep).
MAX_CIFAR_FILE_BYTES = 256 * 2**20
MAX_PICKLE_DEPTH = 8
MAX_PICKLE_NODES = 1_000_000  # objects the pickle would build, shared references counted each time
MAX_KEY_NODES = 8  # a dict key: a string, or _codecs.encode(string, "latin1") in protocol-2 files
_PICKLE_LEAVES = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "NONE", "NEWTRUE", "NEWFALSE", "FLOAT",
    "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
}
_NUMPY_DTYPES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "b1"}


class _Node:
    """What one pickled object would be: its children (shared nodes are shared) and, for short
    strings, the value (to check globals and dtypes)."""

    __slots__ = ("children", "value")

    def __init__(self, children=(), value=None):
        self.children, self.value = list(children), value


def _since_mark(stack: list, marks: list) -> list:
    if not marks:
        raise ValueError("an opcode needs a MARK and there is none")
    m = marks.pop()
    items = stack[m:]
    del stack[m:]
    return items


def _pickle_graph(raw: bytes) -> _Node:
    """The object graph of a pickle, built from its opcodes alone (nothing is constructed or called);
    ValueError for opcodes or globals a CIFAR batch does not use."""
    import pickletools

    stack: list[_Node] = []
    marks: list[int] = []
    memo: dict[int, _Node] = {}
    for op, arg, _ in pickletools.genops(raw):
        name = op.name
        if name in ("PROTO", "FRAME", "STOP"):
            continue
        if name in _PICKLE_LEAVES:
            short = isinstance(arg, (str, bytes)) and len(arg) <= 64
            stack.append(_Node(value=(arg.decode("latin1") if isinstance(arg, bytes) else arg) if short else None))
        elif name == "MARK":
            marks.append(len(stack))
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_TUPLE"):
            stack.append(_Node())
        elif name in ("LIST", "TUPLE", "DICT"):
            items = _since_mark(stack, marks)
            if name == "DICT":
                _check_keys(items[0::2])
            stack.append(_Node(items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            del stack[-n:]
            stack.append(_Node(items))
        elif name in ("APPEND", "BUILD"):
            item = stack.pop()
            stack[-1].children.append(item)
        elif name == "APPENDS":
            items = _since_mark(stack, marks)
            stack[-1].children.extend(items)
        elif name in ("SETITEM", "SETITEMS"):
            items = stack[-2:] if name == "SETITEM" else _since_mark(stack, marks)
            if name == "SETITEM":
                del stack[-2:]
            _check_keys(items[0::2])
            stack[-1].children.extend(items)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[int(arg)])
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, attr = arg.split(" ", 1)
            else:
                module, attr = (n.value for n in stack[-2:])
                del stack[-2:]
            if (module, attr) not in _BatchUnpickler._ALLOWED:
                raise ValueError(f"refusing to load {str(module)[:60]}.{str(attr)[:60]} (not part of a CIFAR batch)")
            stack.append(_Node(value=f"{module}.{attr}"))
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            if func.value == "numpy.dtype" and (not args.children or args.children[0].value not in _NUMPY_DTYPES):
                raise ValueError("refusing a numpy dtype other than a plain number type")
            stack.append(_Node([func, args]))
        elif name in ("POP", "DUP", "POP_MARK"):
            if name == "POP":
                stack.pop()
            elif name == "DUP":
                stack.append(stack[-1])
            else:
                _since_mark(stack, marks)
        else:
            raise ValueError(f"refusing pickle opcode {name} (not part of a CIFAR batch)")
    if len(stack) != 1:
        raise ValueError("the pickle does not leave exactly one object")
    return stack[0]


def _check_keys(keys: list[_Node]) -> None:
    for k in keys:
        if _graph_size(k, MAX_KEY_NODES, MAX_PICKLE_DEPTH)[0] > MAX_KEY_NODES:
            raise ValueError(f"a dict key of more than {MAX_KEY_NODES} objects (CIFAR keys are strings)")


def _graph_size(root: _Node, max_nodes: int, max_depth: int) -> tuple[int, int]:
    """(objects, depth) of the tree the graph unfolds to, counting up to just past max_nodes; ValueError
    for a cycle or a depth over max_depth. Iterative, linear in the graph's size."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    todo = [(root, False)]
    while todo:
        node, done = todo.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = node.children
            size[key] = min(max_nodes + 1, 1 + sum(size[id(c)] for c in kids))
            depth[key] = 1 + max((depth[id(c)] for c in kids), default=0)
            if depth[key] > max_depth:
                raise ValueError(f"objects nested more than {max_depth} deep")
            continue
        if key in size:
            continue
        if key in on_path:
            raise ValueError("a pickled object contains itself")
        on_path.add(key)
        todo.append((node, True))
        todo.extend((c, False) for c in node.children if id(c) not in size)
    return size[id(root)], depth[id(root)]


def _check_cifar_pickle(raw: bytes) -> None:
    """Refuse, from the opcodes alone, a pickle that would build more than a CIFAR batch holds."""
    n, _ = _graph_size(_pickle_graph(raw), MAX_PICKLE_NODES, MAX_PICKLE_DEPTH)
    if n > MAX_PICKLE_NODES:
        raise ValueError(f"the pickle would build more than {MAX_PICKLE_NODES:,} objects")


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
        _check_cifar_pickle(raw)
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
    root = Path(root)
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

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    check_int("size", size, 1)
    root = Path(root)
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


DATASETS = ("digits", "cifar10", "folder")


def load(name: str, *, root: str | None = None, split: str = "train", image_size: int | None = None,
         channels: int = 3, class_subfolders: bool = False) -> ImageData:
    """A data set by name: "digits", "cifar10" (needs root) or "folder" (needs root and image_size)."""
    check_name("data set", name, DATASETS)
    if name == "digits":
        return digits(split)
    if name == "cifar10":
        if root is None:
            raise ValueError("data 'cifar10' needs root, the folder of the python batches")
        return cifar10(root, split)
    if root is None or image_size is None:  # "folder"
        raise ValueError("data 'folder' needs root and image_size")
    return image_folder(root, image_size, channels=channels, class_subfolders=class_subfolders)
