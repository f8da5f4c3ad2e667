"""A small CNN classifier of scikit-learn's 8x8 digits: the feature extractor of the digits metrics.

`DigitsClassifier` maps images (B, 1, 8, 8) in [-1, 1] (`scoresde.data.to_model_input` of the 17
levels, no dequantization) to 10 logits (B, 10); `features` returns its penultimate activations
(B, hidden), the space in which `scoresde.metrics` measures Fréchet distances between image sets.

Architecture: two stages of two 3x3 convolutions (ReLU) and a 2x2 max-pool (8x8 -> 4x4 -> 2x2),
then a fully connected layer to `hidden` features (ReLU) and, behind dropout, the linear layer to
the logits (99,178 parameters). `train_digits_classifier` trains it on the train split only
(1,437 images) with AdamW and a cosine learning-rate decay, optionally with random shifts of up to
`max_shift` pixels (the background level -1 fills the border; off by default: on a held-out fifth
of the train split they did not help, docs/metrics.md). The shipped weights
(`scoresde/assets/digits_classifier.safetensors`, written by `examples/train_digits_classifier.py`,
seed 0) classify 356 of the 360 test images correctly (98.89 %). The file holds only tensors;
the configuration, the training settings and the measured test accuracy sit as JSON in its
safetensors metadata, so loading it executes no code.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solvers.validate import check_int, check_number

from .files import DIGEST_KEY, read_safetensors, write_safetensors

__all__ = [
    "ASSET", "FORMAT", "DigitsClassifier", "DigitsClassifierConfig", "DigitsTrainConfig", "accuracy",
    "load_digits_classifier", "save_digits_classifier", "shift_images", "train_digits_classifier",
]

ASSET = Path(__file__).parent / "assets" / "digits_classifier.safetensors"
FORMAT = "scoresde.digits_classifier/1"
NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitsClassifierConfig:
    """Widths of the CNN: channels of the two conv stages, `hidden` penultimate features, dropout."""

    channels: tuple[int, int] = (32, 64)
    hidden: int = 128
    dropout: float = 0.3

    def __post_init__(self):
        if len(self.channels) != 2 or not all(isinstance(c, int) and c >= 1 for c in self.channels):
            raise ValueError(f"channels must be two positive integers, got {self.channels!r}")
        check_int("hidden", self.hidden, 1)
        check_number("dropout", self.dropout, 0, 1, high_open=True)

    @classmethod
    def from_dict(cls, d: dict) -> DigitsClassifierConfig:
        return cls(channels=tuple(d["channels"]), hidden=d["hidden"], dropout=d["dropout"])


@dataclass(frozen=True)
class DigitsTrainConfig:
    """Training settings of `train_digits_classifier` (defaults: those of the shipped weights)."""

    seed: int = 0
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-2
    max_shift: int = 0

    def __post_init__(self):
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("seed", self.seed)
        check_number("lr", self.lr, 0, low_open=True)
        check_number("weight_decay", self.weight_decay, 0)
        check_int("max_shift", self.max_shift, 0, 3)


class DigitsClassifier(nn.Module):
    """CNN digits classifier: x (B, 1, 8, 8) in [-1, 1] -> logits (B, 10); `features` -> (B, hidden)."""

    def __init__(self, config: DigitsClassifierConfig = DigitsClassifierConfig()):
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.conv1a = nn.Conv2d(1, c1, 3, padding=1)
        self.conv1b = nn.Conv2d(c1, c1, 3, padding=1)
        self.conv2a = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv2b = nn.Conv2d(c2, c2, 3, padding=1)
        self.fc = nn.Linear(c2 * 2 * 2, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (B, hidden), non-negative (after ReLU), of images (B, 1, 8, 8)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"expected images of shape (B, 1, 8, 8), got {tuple(x.shape)}")
        h = F.max_pool2d(F.relu(self.conv1b(F.relu(self.conv1a(x)))), 2)  # (B, c1, 4, 4)
        h = F.max_pool2d(F.relu(self.conv2b(F.relu(self.conv2a(h)))), 2)  # (B, c2, 2, 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, 10)."""
        return self.head(self.dropout(self.features(x)))


def shift_images(x: Tensor, max_shift: int, *, generator: torch.Generator | None = None, fill: float = -1.0) -> Tensor:
    """Shift each image (B, C, H, W) by integers dy, dx uniform in [-max_shift, max_shift], filling with `fill`.

    The shifts are drawn from `generator` on its device; no wrap-around.
    """
    if max_shift == 0:
        return x
    k = max_shift
    gen_device = x.device if generator is None else generator.device
    offsets = torch.randint(0, 2 * k + 1, (2, x.shape[0]), generator=generator, device=gen_device).to(x.device)
    padded = F.pad(x, (k, k, k, k), value=fill)
    H, W = x.shape[-2:]
    out = torch.empty_like(x)
    for i in range(2 * k + 1):
        for j in range(2 * k + 1):
            sel = (offsets[0] == i) & (offsets[1] == j)
            out[sel] = padded[sel, :, i:i + H, j:j + W]
    return out


def accuracy(model: DigitsClassifier, x: Tensor, labels: Tensor, *, batch_size: int = 500) -> float:
    """Fraction of images x (N, 1, 8, 8) in [-1, 1] whose predicted class equals labels (N,)."""
    with torch.no_grad():
        pred = torch.cat([model(xb).argmax(1) for xb in x.split(batch_size)])
    return float((pred == labels.to(pred.device)).double().mean())


def train_digits_classifier(
    seed: int = 0, *, config: DigitsClassifierConfig = DigitsClassifierConfig(),
    train: DigitsTrainConfig | None = None, device: str | torch.device = "cpu", progress: bool = False,
) -> DigitsClassifier:
    """Train a `DigitsClassifier` on the digits train split (1,437 images) from a fixed seed.

    seed sets the initial weights, the batch order, the shifts and the dropout (the global RNG is
    restored afterwards); `train` overrides the other training settings (its own `seed` must then
    equal `seed`). Returns the model in eval mode, on `device`. The same seed gives the same weights
    on the same device and thread count.
    """
    from .data import digits, to_model_input

    train = DigitsTrainConfig(seed=seed) if train is None else train
    if train.seed != seed:
        raise ValueError(f"seed {seed!r} differs from train.seed {train.seed!r}")
    device = torch.device(device)
    data = digits("train")
    x_all = to_model_input(data.images, data.levels).to(device)
    y_all = data.labels.to(device)
    n = x_all.shape[0]
    steps_per_epoch = math.ceil(n / train.batch_size)
    total = train.epochs * steps_per_epoch

    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)  # initial weights and dropout masks
        model = DigitsClassifier(config).to(device)
        gen = torch.Generator(device).manual_seed(seed + 1)  # batch order and shifts
        opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * i / total)))
        model.train()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=train.epochs, desc="digits classifier", unit="epoch")
        for _ in range(train.epochs):
            perm = torch.randperm(n, generator=gen, device=device)
            for idx in perm.split(train.batch_size):
                xb = shift_images(x_all[idx], train.max_shift, generator=gen)
                loss = F.cross_entropy(model(xb), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=float(loss))
        if bar is not None:
            bar.close()
    return model.eval()


def save_digits_classifier(
    model: DigitsClassifier, path: str | os.PathLike, *, train: DigitsTrainConfig | None = None, extra: dict | None = None,
) -> None:
    """Write the weights as safetensors, atomically; the config, the training settings `train` and
    `extra` (JSON-serializable) go in the metadata as JSON (`read_metadata`), with the SHA-256 digest
    of tensors and metadata that `load_digits_classifier` checks (`scoresde.files.write_safetensors`)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "config": json.dumps(asdict(model.config)),
        "train": json.dumps(None if train is None else asdict(train)),
        "extra": json.dumps(extra or {}),
    }
    write_safetensors(path, tensors, meta, mode=0o644)  # a package asset


def read_metadata(path: str | os.PathLike = ASSET) -> dict:
    """The decoded JSON metadata of a classifier file: format, config, train, extra (and the digest
    `sha256` as written, in files that have one)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
    return {k: (v if k in ("format", DIGEST_KEY) else json.loads(v)) for k, v in meta.items()}


def load_digits_classifier(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> DigitsClassifier:
    """The shipped digits classifier (or the one at `path`), in eval mode; reads tensors and JSON only.

    A file's SHA-256 digest is checked when it has one (files written by `save_digits_classifier`;
    the shipped file predates digests)."""
    path = ASSET if path is None else Path(path)
    # examples/train_digits_classifier.py writes the shipped file
    tensors, meta = read_safetensors(path, fmt=FORMAT, what="digits classifier")
    model = DigitsClassifier(DigitsClassifierConfig.from_dict(json.loads(meta["config"])))
    model.load_state_dict(tensors)
    return model.to(device).eval()
