"""A noise-conditional digits classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021).

`NoisyClassifier(config, sde)` is called as classifier(x_t, t) -> logits (B, K) with x_t (B, C, H, W)
a sample of q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I) in the model's [-1, 1] data scaling and t
(B,) continuous time. It holds its forward process and conditions the network the way `ScoreModel`
does (EDM-style preconditioning, Karras et al. 2022, Table 1):

    logits = net(c_in x_t, c_noise),  c_in = 1 / sqrt(alpha^2 + sigma^2),  c_noise = log(sigma / alpha),

so the network sees inputs of unit-order scale and a smooth, low-frequency noise input for VP,
sub-VP, VE and flow processes alike. Taking t itself, it serves
`ClassifierGuidedModel(model, classifier, y, scale, c_noise="t")`; `classifier_guidance` builds that
wrapper and refuses a model whose SDE differs from the classifier's (the same t would then mean
another noise level).

`NoisyClassifierNet` is architecture only, (x (B, C, H, W), c_noise (B,)) -> logits (B, K): two
stages of two 3x3 convolutions, each followed by GroupNorm, a FiLM modulation by an embedding of
c_noise (Perez et al. 2018) and SiLU, with 2x2 average pooling after each stage (8x8 -> 4x4 -> 2x2),
then a hidden layer (also FiLM-modulated) and the linear layer to the logits.

`train_noisy_classifier(sde)` minimizes the cross-entropy of the labels of the digits train split
(1,437 images, no dequantization) at x_t ~ q(x_t | x_0), t ~ U(t_eps, T) with Adam and a cosine
learning-rate decay, from a fixed seed. `noisy_accuracy` measures the accuracy at one time on
fresh noise; `time_at_sigma` finds the time of a given sigma(t).

Files hold tensors only; the network config, the SDE, the training settings and measured
accuracies sit as JSON in the safetensors metadata, so loading executes no code. The shipped
`scoresde/assets/digits_noisy_classifier_vp.safetensors` (written by
`examples/train_noisy_classifier.py --sde vp`) is loaded by `load_noisy_classifier()`; its test
accuracies by noise level are in its metadata and in docs/guidance.md.
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

from solvers.validate import dataclass_from_dict

from .files import DIGEST_KEY, read_safetensors, write_safetensors
from .guidance import ClassifierGuidedModel
from .nn.layers import PositionalEmbedding, group_norm
from .sde import SDE
from .sde_names import sde_from_config

__all__ = [
    "ASSETS", "FORMAT", "SHIPPED", "NoisyClassifier", "NoisyClassifierConfig", "NoisyClassifierNet", "NoisyTrainConfig",
    "classifier_guidance", "load_noisy_classifier", "noisy_accuracy", "read_metadata", "save_noisy_classifier",
    "time_at_sigma", "train_noisy_classifier",
]

ASSETS = Path(__file__).parent / "assets"
# sde name (scoresde.sde.SDE_NAMES) -> shipped file in ASSETS
SHIPPED = {"vp": "digits_noisy_classifier_vp.safetensors"}
FORMAT = "scoresde.noisy_classifier/1"


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class NoisyClassifierConfig:
    """Shape of the data (`in_channels`, `image_size`, divisible by 4), `num_classes`, the widths of
    the two conv stages `channels`, `hidden` features before the logits and `emb_dim` of the noise
    embedding (even, >= 4)."""

    in_channels: int = 1
    image_size: int = 8
    num_classes: int = 10
    channels: tuple[int, int] = (32, 64)
    hidden: int = 128
    emb_dim: int = 64

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))  # JSON gives lists
        for name in ("in_channels", "image_size", "num_classes", "hidden", "emb_dim"):
            _positive_int(name, getattr(self, name))
        if len(self.channels) != 2:
            raise ValueError(f"channels must be two positive integers, got {self.channels!r}")
        for c in self.channels:
            _positive_int("channels", c)
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two 2x2 poolings), got {self.image_size}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.emb_dim % 2 or self.emb_dim < 4:
            raise ValueError(f"emb_dim must be even and >= 4, got {self.emb_dim}")

    @classmethod
    def from_dict(cls, d: dict) -> NoisyClassifierConfig:
        return dataclass_from_dict(cls, d)


@dataclass(frozen=True)
class NoisyTrainConfig:
    """Settings of `train_noisy_classifier` (defaults: those of the shipped VP weights).

    steps of Adam (lr with cosine decay to 0, weight_decay as L2 in Adam) on batches of
    `batch_size` train images (each epoch a new permutation); t ~ U(t_eps, T), t_eps None meaning
    the SDE's own `t_eps`.
    """

    seed: int = 0
    steps: int = 4000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    t_eps: float | None = None

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        _positive_int("steps", self.steps)
        _positive_int("batch_size", self.batch_size)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.t_eps is not None and (isinstance(self.t_eps, bool) or not isinstance(self.t_eps, (int, float))
                                       or not 0 <= self.t_eps < 1):
            raise ValueError(f"t_eps must be None or a number in [0, 1), got {self.t_eps!r}")

    @classmethod
    def from_dict(cls, d: dict) -> NoisyTrainConfig:
        return dataclass_from_dict(cls, d)


class FiLMConv(nn.Module):
    """3x3 conv -> GroupNorm -> FiLM by emb -> SiLU: h (B, Cin, H, W), emb (B, E) -> (B, Cout, H, W)."""

    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm = group_norm(c_out)
        self.film = nn.Linear(emb, 2 * c_out)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        # FiLM (Perez et al. 2018): (1 + scale) * h + shift, scale = shift = 0 for a zero embedding
        return F.silu(self.norm(self.conv(h)) * (1 + scale) + shift)


class NoisyClassifierNet(nn.Module):
    """Architecture only: x (B, C, H, W), c_noise (B,) -> logits (B, num_classes); knows no SDE."""

    def __init__(self, config: NoisyClassifierConfig = NoisyClassifierConfig()):
        super().__init__()
        self.config = config
        c1, c2, e = *config.channels, config.emb_dim
        # c_noise = log(sigma / alpha) spans about [-7, 5] (VP) or [-4.6, 3.9] (VE): periods from 2 pi to 2 pi 100
        self.embed = PositionalEmbedding(e, max_period=100.0)
        self.emb_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e), nn.SiLU())
        self.stage1 = nn.ModuleList([FiLMConv(config.in_channels, c1, e), FiLMConv(c1, c1, e)])
        self.stage2 = nn.ModuleList([FiLMConv(c1, c2, e), FiLMConv(c2, c2, e)])
        side = config.image_size // 4
        self.fc = nn.Linear(c2 * side * side, config.hidden)
        self.fc_film = nn.Linear(e, 2 * config.hidden)
        self.head = nn.Linear(config.hidden, config.num_classes)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected x of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if c_noise.shape != (x.shape[0],):
            raise ValueError(f"expected c_noise of shape ({x.shape[0]},), got {tuple(c_noise.shape)}")
        emb = self.emb_mlp(self.embed(c_noise).to(x.dtype))  # (B, E)
        h = x
        for stage in (self.stage1, self.stage2):
            for layer in stage:
                h = layer(h, emb)
            h = F.avg_pool2d(h, 2)  # (B, c1, H/2, W/2), then (B, c2, H/4, W/4)
        scale, shift = self.fc_film(emb).chunk(2, dim=1)
        h = F.silu(self.fc(h.flatten(1)) * (1 + scale) + shift)  # (B, hidden)
        return self.head(h)


class NoisyClassifier(nn.Module):
    """classifier(x_t (B, C, H, W), t (B,)) -> logits (B, K) of p(y | x_t, t) under the process `sde`.

    The network gets c_in x_t and c_noise = log(sigma / alpha) (module docstring); inputs are cast
    to the network's parameter dtype and the logits returned in x's dtype. Differentiable in x_t.
    """

    def __init__(self, config: NoisyClassifierConfig = NoisyClassifierConfig(), sde: SDE | None = None):
        super().__init__()
        if not isinstance(sde, SDE):
            raise ValueError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE, ...), got {sde!r}")
        self.config = config
        self.sde = sde
        self.net = NoisyClassifierNet(config)

    def preconditioning(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """c_in = 1 / sqrt(alpha^2 + sigma^2) and c_noise = log(sigma / alpha) at times t (B,), both (B,)."""
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        return torch.rsqrt(alpha**2 + sigma**2), -self.sde.lambda_(t)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if not isinstance(t, Tensor) or t.shape != (x.shape[0],):
            raise ValueError(f"expected t of shape ({x.shape[0]},), got {tuple(getattr(t, 'shape', ()))}")
        dtype = next(self.net.parameters()).dtype
        c_in, c_noise = self.preconditioning(t)
        x_in = x.to(dtype) * c_in.to(dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return self.net(x_in, c_noise.to(dtype)).to(x.dtype)


def classifier_guidance(model, classifier: NoisyClassifier, y, scale: float) -> ClassifierGuidedModel:
    """`ClassifierGuidedModel(model, classifier, y, scale, c_noise="t")` after checking that the
    classifier was trained for the model's process (equal `sde.config()`), so that t means the same
    noise level for both. model: any Model (for a class-conditional ScoreModel, its unconditional
    branch, y=None, is used). See `ClassifierGuidedModel` for y, scale and the counters."""
    if not isinstance(classifier, NoisyClassifier):
        raise ValueError(f"classifier must be a NoisyClassifier, got {type(classifier).__name__}; "
                         "use ClassifierGuidedModel directly for other classifiers")
    model_sde = getattr(model, "sde", None)
    if not isinstance(model_sde, SDE) or model_sde.config() != classifier.sde.config():
        raise ValueError(f"the classifier was trained for {classifier.sde!r} but the model's process is {model_sde!r}; "
                         "train a classifier for that process (examples/train_noisy_classifier.py --sde ...)")
    return ClassifierGuidedModel(model, classifier, y, scale, c_noise="t")


# --- evaluation -----------------------------------------------------------------------------------

def time_at_sigma(sde: SDE, sigma: float) -> float:
    """The time t in [0, T] with sigma(t) = sigma (sigma increases with t), by bisection in float64."""
    lo, hi = torch.zeros(1, dtype=torch.float64), torch.full((1,), sde.T, dtype=torch.float64)
    s_lo, s_hi = float(sde.sigma(lo)), float(sde.sigma(hi))
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not s_lo <= sigma <= s_hi:
        raise ValueError(f"sigma must be a number in [{s_lo:.6g}, {s_hi:.6g}] (sigma(0), sigma(T) of {sde!r}), got {sigma!r}")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(sde.sigma(mid)) < sigma:
            lo = mid
        else:
            hi = mid
    return float(0.5 * (lo + hi))


def noisy_accuracy(classifier: NoisyClassifier, x0: Tensor, labels: Tensor, t: float, *, repeats: int = 10,
                   generator: torch.Generator | None = None, batch_size: int = 1000) -> float:
    """Accuracy of argmax p(y | x_t, t) on `repeats` noisy copies x_t ~ q(x_t | x_0) of each image.

    x0: (N, C, H, W) clean images in [-1, 1]; labels (N,); t: a time in [0, T]. The noise comes
    from `generator` on x0's device. Returns the fraction correct over N * repeats draws.
    """
    _positive_int("repeats", repeats)
    if labels.shape != (x0.shape[0],):
        raise ValueError(f"expected labels of shape ({x0.shape[0]},), got {tuple(labels.shape)}")
    correct = 0
    with torch.no_grad():
        for _ in range(repeats):
            for xb, yb in zip(x0.split(batch_size), labels.split(batch_size)):
                tt = torch.full((xb.shape[0],), float(t), dtype=xb.dtype, device=xb.device)
                x_t, _ = classifier.sde.perturb(xb, tt, generator=generator)
                correct += int((classifier(x_t, tt).argmax(1) == yb.to(xb.device)).sum())
    return correct / (repeats * x0.shape[0])


# --- training -------------------------------------------------------------------------------------

def noisy_cross_entropy(classifier: NoisyClassifier, x0: Tensor, labels: Tensor, t_eps: float, *,
                        generator: torch.Generator | None = None) -> Tensor:
    """Mean cross-entropy -log p(y | x_t, t) at t ~ U(t_eps, T), x_t ~ q(x_t | x_0); x0 (B, C, H, W), labels (B,)."""
    sde = classifier.sde
    gen_device = x0.device if generator is None else generator.device
    u = torch.rand(x0.shape[0], generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    t = t_eps + (sde.T - t_eps) * u
    x_t, _ = sde.perturb(x0, t, generator=generator)
    return F.cross_entropy(classifier(x_t, t), labels)


def train_noisy_classifier(
    sde: SDE, *, config: NoisyClassifierConfig = NoisyClassifierConfig(), train: NoisyTrainConfig = NoisyTrainConfig(),
    x0: Tensor | None = None, labels: Tensor | None = None, device: str | torch.device = "cpu",
    progress: bool = False, losses: list | None = None,
) -> NoisyClassifier:
    """Train a `NoisyClassifier` for `sde` by cross-entropy on noisy images (module docstring).

    Data: x0 (N, C, H, W) in [-1, 1] with labels (N,), by default the digits train split. The seed
    `train.seed` sets the initial weights; a generator seeded with seed + 1 draws the batch order,
    times and noise (the global RNG is restored afterwards). Per-step losses are appended to
    `losses` when given. Returns the classifier in eval mode on `device`; the same seed gives the
    same weights on the same device and thread count.
    """
    if not isinstance(sde, SDE):
        raise ValueError(f"sde must be a scoresde SDE, got {sde!r}")
    if (x0 is None) != (labels is None):
        raise ValueError("give both x0 and labels, or neither (the digits train split)")
    if x0 is None:
        from .data import digits, to_model_input

        data = digits("train")
        x0, labels = to_model_input(data.images, data.levels), data.labels
    if labels.shape != (x0.shape[0],) or labels.is_floating_point():
        raise ValueError(f"labels must be integers of shape ({x0.shape[0]},), got {labels.dtype} {tuple(labels.shape)}")
    if x0.shape[0] > 0 and not 0 <= int(labels.min()) <= int(labels.max()) < config.num_classes:
        raise ValueError(f"labels must lie in 0..{config.num_classes - 1}")
    t_eps = sde.t_eps if train.t_eps is None else train.t_eps
    if not 0 <= t_eps < sde.T:
        raise ValueError(f"t_eps must lie in [0, T = {sde.T}), got {t_eps}")
    device = torch.device(device)
    x0, labels = x0.to(device, torch.float32), labels.to(device)
    n = x0.shape[0]

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(train.seed)  # initial weights
        classifier = NoisyClassifier(config, sde).to(device)
    gen = torch.Generator(device).manual_seed(train.seed + 1)  # batch order, times and noise
    opt = torch.optim.Adam(classifier.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * i / train.steps)))
    classifier.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=train.steps, desc="noisy classifier", unit="step")
    perm, pos = torch.randperm(n, generator=gen, device=device), 0
    for _ in range(train.steps):
        if pos + train.batch_size > n:  # a new epoch: a new permutation (the remainder is dropped)
            perm, pos = torch.randperm(n, generator=gen, device=device), 0
        idx = perm[pos:pos + train.batch_size]
        pos += train.batch_size
        loss = noisy_cross_entropy(classifier, x0[idx], labels[idx], t_eps, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if losses is not None:
            losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            if bar.n % 100 == 0:
                bar.set_postfix(loss=float(loss.detach()))
    if bar is not None:
        bar.close()
    return classifier.eval()


# --- files ----------------------------------------------------------------------------------------

def save_noisy_classifier(
    classifier: NoisyClassifier, path: str | os.PathLike, *, train: NoisyTrainConfig | None = None,
    extra: dict | None = None, dtype: torch.dtype = torch.float32,
) -> None:
    """Write the weights (cast to `dtype`) as safetensors, atomically; the config, the SDE
    (`sde.config()`), the training settings and `extra` (JSON-serializable) go in the metadata, with
    the SHA-256 digest of tensors and metadata that `load_noisy_classifier` checks
    (`scoresde.files.write_safetensors`)."""
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be one of torch.float32, torch.float16, torch.bfloat16, got {dtype}")
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in classifier.net.state_dict().items()}
    meta = {
        "format": FORMAT,
        "config": json.dumps(asdict(classifier.config)),
        "sde": json.dumps(classifier.sde.config()),
        "train": json.dumps(None if train is None else asdict(train)),
        "extra": json.dumps(extra or {}),
    }
    write_safetensors(path, tensors, meta, mode=0o644)  # a package asset


def _shipped_path(sde: str) -> Path:
    available = {name: file for name, file in SHIPPED.items() if (ASSETS / file).is_file()}
    if sde not in available:
        raise ValueError(f"no shipped noisy classifier for sde {sde!r}; shipped: {sorted(available)}; "
                         "train one with examples/train_noisy_classifier.py and pass its path")
    return ASSETS / available[sde]


def read_metadata(path: str | os.PathLike | None = None) -> dict:
    """The decoded JSON metadata (format, config, sde, train, extra; the digest `sha256` as written, in
    files that have one) of a noisy classifier file (the shipped VP one when None)."""
    _, meta = read_safetensors(_shipped_path("vp") if path is None else path, fmt=FORMAT, what="noisy classifier")
    return {k: (v if k in ("format", DIGEST_KEY) else json.loads(v)) for k, v in meta.items()}


def load_noisy_classifier(path: str | os.PathLike | None = None, *, sde: str = "vp", device=None) -> NoisyClassifier:
    """A `NoisyClassifier` (eval mode, float32, parameters without gradients) from `path`, or the
    shipped one for `sde` when path is None. Reads tensors and JSON only; the SDE is rebuilt from
    its recorded config."""
    path = _shipped_path(sde) if path is None else Path(path)
    tensors, meta = read_safetensors(path, fmt=FORMAT, what="noisy classifier")
    try:
        config = NoisyClassifierConfig.from_dict(json.loads(meta["config"]))
        process = sde_from_config(json.loads(meta["sde"]))
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: broken noisy classifier metadata ({type(e).__name__}: {e})") from e
    classifier = NoisyClassifier(config, process)
    classifier.net.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    return classifier.to(device).eval().requires_grad_(False)
