"""A feature extractor for 16x16 RGB patches, trained here, and the Fréchet distance in its features.

The sample-quality measure of the patch models (docs/backbones.md), as the digits classifier's is
for the digits (`scoresde.metrics`): `patch_frechet_distance(a, b)` fits a Gaussian to the
penultimate features of each image set and returns the squared Fréchet distance between the two
(`scoresde.metrics.frechet_distance_features`).

The pretext task. There are no object classes in two photographs, so the network is trained on a
self-supervised task whose answer lies in natural-image statistics: for a train patch turned by
r quarter turns (r in 0..3) it predicts the pair (photograph, r), 8 classes. The rotation
(Gidaris et al. 2018, "Unsupervised representation learning by predicting image rotations",
arXiv:1803.07728) can only be read from how natural scenes are oriented: light from above, vertical
trunks and horizontal roof lines, the direction of shading and colour gradients; the photograph from
colour and texture statistics. Every patch is also mirrored left-right with probability 1/2 (the
patch models train on mirrored copies too; mirroring keeps the four rotation classes apart, because
the scenes are not symmetric under a vertical flip). Noise, blur, wrong colour or wrong edge
statistics move a sample's features away from those of real patches.

Network (`PatchFeatureNet`): 3x3 convolutions with ReLU in three stages (widths 24, 48, 64; two
convolutions in the first two, one in the third), each followed by a 2x2 max-pool (16 -> 8 -> 4 -> 2),
a fully connected layer to 128 features (ReLU; the features) and the linear head to the 8 classes:
98,720 parameters, stored in float32 (396 KB). The shipped weights classify 29.8 % of the test
patches' pretext inputs correctly (33.7 % of the train patches'; chance 12.5 %): many 16 x 16
patches are smooth and carry no orientation cue, so the task is hard, yet the features separate real
patches from a Gaussian mixture's samples (docs/backbones.md).
Input: uint8 patches (N, 3, 16, 16) (the patch data and generated samples mapped to the 256 levels,
`scoresde.data.to_levels`), scaled to [-1, 1] as `scoresde.data.to_model_input` does.

`train_patch_features` trains it on the train split (columns [0, 512) of both photographs, 6,552
patches) from a fixed seed; `examples/train_patch_features.py` writes the shipped weights,
`scoresde/assets/patch_features.safetensors` (safetensors with JSON metadata and the SHA-256
digest of `scoresde.files.write_safetensors`, checked on load; nothing is executed).
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

from .files import read_safetensors, write_safetensors

__all__ = [
    "ASSET", "FORMAT", "NUM_CLASSES", "PatchFeatureConfig", "PatchFeatureNet", "PatchFeatureTrainConfig",
    "load_patch_features", "pretext_accuracy", "pretext_batch", "patch_features", "patch_frechet_distance",
    "save_patch_features", "tiled_frechet_distance", "tiles", "train_patch_features",
]

ASSET = Path(__file__).parent / "assets" / "patch_features.safetensors"
FORMAT = "scoresde.patch_features/1"
SIZE = 16
LEVELS = 256
ROTATIONS = 4
NUM_CLASSES = 2 * ROTATIONS  # (photograph, quarter turns): class = 4 * photograph + r


@dataclass(frozen=True)
class PatchFeatureConfig:
    """Widths of the CNN: channels of the three conv stages and `hidden` penultimate features."""

    channels: tuple[int, int, int] = (24, 48, 64)
    hidden: int = 128

    def __post_init__(self):
        if len(self.channels) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 1024
                                                for c in self.channels):
            raise ValueError(f"channels must be three integers in [1, 1024], got {self.channels!r}")
        check_int("hidden", self.hidden, 1, 4096)

    @classmethod
    def from_dict(cls, d: dict) -> PatchFeatureConfig:
        if not isinstance(d, dict) or set(d) != {"channels", "hidden"}:
            raise ValueError(f"a patch feature config needs exactly the keys channels, hidden; got {d!r:.200}")
        return cls(channels=tuple(d["channels"]), hidden=d["hidden"])


@dataclass(frozen=True)
class PatchFeatureTrainConfig:
    """Training settings of `train_patch_features` (defaults: those of the shipped weights)."""

    seed: int = 0
    epochs: int = 6
    batch_size: int = 64  # patches per step; each enters with all four rotations (256 inputs)
    lr: float = 3e-3
    weight_decay: float = 1e-2

    def __post_init__(self):
        check_int("seed", self.seed, 0)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_number("lr", self.lr, 0, low_open=True)
        check_number("weight_decay", self.weight_decay, 0)


class PatchFeatureNet(nn.Module):
    """x (B, 3, 16, 16) in [-1, 1] -> logits (B, 8) of (photograph, quarter turns); `features` -> (B, hidden)."""

    def __init__(self, config: PatchFeatureConfig = PatchFeatureConfig()):
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        self.conv1a = nn.Conv2d(3, c1, 3, padding=1)
        self.conv1b = nn.Conv2d(c1, c1, 3, padding=1)
        self.conv2a = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv2b = nn.Conv2d(c2, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.fc = nn.Linear(c3 * 2 * 2, config.hidden)
        self.head = nn.Linear(config.hidden, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (B, hidden), non-negative (after ReLU), of images (B, 3, 16, 16) in [-1, 1]."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, SIZE, SIZE):
            raise ValueError(f"expected patches of shape (B, 3, 16, 16), got {tuple(x.shape)}")
        h = F.max_pool2d(F.relu(self.conv1b(F.relu(self.conv1a(x)))), 2)  # (B, c1, 8, 8)
        h = F.max_pool2d(F.relu(self.conv2b(F.relu(self.conv2a(h)))), 2)  # (B, c2, 4, 4)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)  # (B, c3, 2, 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, 8): class 4 * photograph + quarter turns."""
        return self.head(self.features(x))


def _scaled(images: Tensor) -> Tensor:
    """uint8 patches (N, 3, 16, 16) -> float32 in [-1, 1] (k / 127.5 - 1, `to_model_input`'s scaling)."""
    if not isinstance(images, Tensor) or images.dtype != torch.uint8:
        kind = images.dtype if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected uint8 patches (the 256 levels; map samples with scoresde.data.to_levels), "
                         f"got {kind}")
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, SIZE, SIZE):
        raise ValueError(f"expected patches of shape (N, 3, 16, 16), got {tuple(images.shape)}")
    return images.float() / 127.5 - 1.0


def pretext_batch(images: Tensor, photos: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The pretext task on a batch: each patch (B, 3, 16, 16) uint8, mirrored left-right with probability
    1/2, in all four rotations. Returns inputs (4B, 3, 16, 16) in [-1, 1] (rotation r = 0..3 in blocks of
    B) and labels (4B,) = 4 * photograph + r."""
    x = _scaled(images)
    mirror = torch.rand(x.shape[0], generator=generator) < 0.5
    x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    inputs = torch.cat([torch.rot90(x, r, dims=(-2, -1)) for r in range(ROTATIONS)])
    labels = torch.cat([ROTATIONS * photos.long() + r for r in range(ROTATIONS)])
    return inputs, labels


def pretext_accuracy(net: PatchFeatureNet, images: Tensor, photos: Tensor, *, seed: int = 0) -> float:
    """Fraction of the 4N pretext inputs of `images` (N, 3, 16, 16) uint8 (photographs `photos` (N,)) that `net`
    classifies correctly; the mirrors are drawn from `seed`."""
    inputs, labels = pretext_batch(images, photos, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        pred = torch.cat([net(xb).argmax(1) for xb in inputs.split(1024)])
    return float((pred == labels).double().mean())


def train_patch_features(train: PatchFeatureTrainConfig = PatchFeatureTrainConfig(), *,
                         config: PatchFeatureConfig = PatchFeatureConfig(), progress: bool = False) -> PatchFeatureNet:
    """Train a `PatchFeatureNet` on the 16x16 train patches (6,552, no mirrored copies: the task mirrors) on the CPU.

    AdamW with a cosine learning-rate decay; `train.seed` sets the initial weights (the global RNG is
    restored afterwards), the batch order and the mirrors. Returns the net in eval mode. The same seed
    gives the same weights on the same machine and thread count.
    """
    from .data import patches

    data = patches("train", SIZE)
    n = data.images.shape[0]
    total = train.epochs * math.ceil(n / train.batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.seed)
        net = PatchFeatureNet(config)
    gen = torch.Generator().manual_seed(train.seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * i / total)))
    net.train()
    for epoch in range(train.epochs):
        for idx in torch.randperm(n, generator=gen).split(train.batch_size):
            inputs, labels = pretext_batch(data.images[idx], data.labels[idx], generator=gen)
            loss = F.cross_entropy(net(inputs), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress:
            print(f"epoch {epoch + 1}/{train.epochs}: last batch loss {loss.item():.4f}", flush=True)
    return net.eval()


def save_patch_features(net: PatchFeatureNet, path: str | os.PathLike, *, train: PatchFeatureTrainConfig | None = None,
                        extra: dict | None = None) -> None:
    """Write the weights as safetensors, atomically, with the config, training settings and `extra` as JSON
    metadata and the SHA-256 digest that `load_patch_features` checks."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(asdict(net.config)),
            "train": json.dumps(None if train is None else asdict(train)), "extra": json.dumps(extra or {})}
    write_safetensors(path, tensors, meta, mode=0o644)  # a package asset


def load_patch_features(path: str | os.PathLike | None = None) -> PatchFeatureNet:
    """The shipped patch feature extractor (or the one at `path`) on the CPU in eval mode; reads tensors and
    JSON only, and refuses a file whose format, configuration, weight names or shapes, values or digest are wrong."""
    path = ASSET if path is None else Path(path)
    tensors, meta = read_safetensors(path, fmt=FORMAT, what="patch feature extractor")
    try:
        config = PatchFeatureConfig.from_dict(json.loads(meta.get("config", "null")))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: bad patch feature config: {e}") from e
    net = PatchFeatureNet(config)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != expected:
        raise ValueError(f"{path}: weights {sorted(got.items())!r:.300} do not match the config's "
                         f"{sorted(expected.items())!r:.300}")
    if not all(bool(torch.isfinite(v).all()) for v in tensors.values()):
        raise ValueError(f"{path}: the weights hold non-finite values")
    net.load_state_dict({k: v.float() for k, v in tensors.items()})
    return net.eval()


_LOADED: dict[str, PatchFeatureNet] = {}


def _shipped() -> PatchFeatureNet:
    if "net" not in _LOADED:
        _LOADED["net"] = load_patch_features()
    return _LOADED["net"]


def patch_features(images: Tensor, net: PatchFeatureNet | None = None, *, batch_size: int = 1024) -> Tensor:
    """Features (N, hidden) float32 of uint8 patches (N, 3, 16, 16); `net` defaults to the shipped extractor."""
    net = _shipped() if net is None else net
    x = _scaled(images)
    with torch.no_grad():
        return torch.cat([net.features(xb) for xb in x.split(batch_size)])


def patch_frechet_distance(images_a: Tensor, images_b: Tensor, net: PatchFeatureNet | None = None) -> float:
    """Squared Fréchet distance between two sets of uint8 patches (Na / Nb, 3, 16, 16) in the patch features.

    Like every Fréchet distance it shrinks as the sets grow (bias about tr(C)/N): compare figures of
    equal sizes. Generated samples in [-1, 1] go through `scoresde.data.to_levels` first.
    """
    from .metrics import frechet_distance_features

    for name, imgs in (("images_a", images_a), ("images_b", images_b)):
        if isinstance(imgs, Tensor) and imgs.ndim >= 1 and imgs.shape[0] < 2:
            raise ValueError(f"{name}: need at least 2 patches, got {imgs.shape[0]}")
    return frechet_distance_features(patch_features(images_a, net), patch_features(images_b, net))


def tiles(images: Tensor) -> Tensor:
    """The 16 x 16 tiles of patches (N, 3, S, S), S a multiple of 16: (N (S/16)^2, 3, 16, 16), each patch's tiles
    in row-major order, then the next patch's."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] \
            or images.shape[2] % SIZE or images.shape[2] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected square patches (N, 3, S, S) with S a multiple of {SIZE}, got {shape}")
    N, C, S, _ = images.shape
    k = S // SIZE
    return images.reshape(N, C, k, SIZE, k, SIZE).permute(0, 2, 4, 1, 3, 5).reshape(N * k * k, C, SIZE, SIZE)


def tiled_frechet_distance(images_a: Tensor, images_b: Tensor, net: PatchFeatureNet | None = None) -> float:
    """The patch Fréchet distance of larger patches (N, 3, S, S) uint8, S a multiple of 16, at the 16 x 16 scale:
    `patch_frechet_distance` of their 16 x 16 tiles (`tiles`), each tile one sample.

    It measures the local statistics of the tiles, not how tiles fit together across a patch; for that, pair
    it with `patch_frechet_distance` of the patches average-pooled to 16 x 16 (the whole layout at lower
    resolution), as benchmarks/patches32.py does.
    """
    return patch_frechet_distance(tiles(images_a), tiles(images_b), net)
