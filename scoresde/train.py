"""Training by denoising score matching, Improved DDPM's hybrid loss or flow matching, on one device
or many (DDP launched by torchrun).

    from scoresde.train import TrainConfig, train
    res = train(TrainConfig(data="digits", net="digits", steps=2000, out_dir="runs/digits"))
    res.model.eps(x, t)                                  # ScoreModel over the EMA weights

What a run writes to `out_dir` (rank 0 only):

- `checkpoint.safetensors`, every `ckpt_every` steps and at the end, written to a temporary file
  and renamed over the previous one (an interrupted write leaves the previous checkpoint intact).
  It holds the weights ("net.*"), their EMA ("ema.*"), the optimizer state ("opt.<i>.<key>") and,
  for the hybrid loss, its timestep history ("loss_history.values", "loss_history.count") as
  tensors, and in its metadata the step and the JSON of the TrainConfig, UNetConfig and SDE.
  Loading reads tensors and JSON only; nothing is unpickled.
- `config.json`, a readable copy of that configuration and step (never read back).
- `metrics.jsonl`, one JSON object per `log_every` steps: step, loss (mean over the interval and
  over ranks), lr, grad_norm, images_per_s.
- `samples/step_XXXXXXX.png`, every `sample_every` steps: a grid drawn from the EMA model.

Exact resume. When `out_dir` holds a checkpoint, `train` continues from it. All randomness of a
step (training times, noise, label dropout, flips, augmentations, dequantization and dropout) is drawn from
generators seeded with a function of (seed, rank, step), and the data order of an epoch is a
function of (seed, epoch) (DistributedSampler), so the checkpoint's step is the whole RNG state
(the hybrid loss's timestep history, the only other state a step depends on, is checkpointed
too): a resumed run repeats the uninterrupted run's losses and weights exactly (same device,
world size, `compile` and `optimizer_impl`: compiled and fused kernels may round differently, and
inductor may draw dropout masks with its own random kernels). The caller's global RNG state is
saved and restored around training.

Optimizer details: Adam or AdamW, learning rate warmed up linearly over `warmup_steps`, gradients
clipped to global norm `grad_clip`, EMA with decay min(ema_decay, (1 + n) / (10 + n)) after n
updates (the warm-up of Song et al.'s `ExponentialMovingAverage`). On CUDA: TF32 matmuls and
convolutions (`tf32`), bf16 autocast (`precision="bf16"`), channels_last (`channels_last`).

Speed (docs/gpu.md): `optimizer_impl` "auto" takes PyTorch's fused Adam on CUDA and the foreach
(multi-tensor) implementation elsewhere or when the update is compiled. `compile` "net" runs the network's forward and backward
through torch.compile; "step" also compiles what follows the backward pass (gradient clipping, the
optimizer step and the EMA update) into one function, with the learning rate and the EMA decay
held in device tensors so that warm-up does not recompile. The loss's random draws stay eager
(dynamo does not trace torch.Generator arguments). A step makes no host synchronization: the loss
and gradient norm are read once per log interval. Checkpoints hold the uncompiled modules' state
(no `_orig_mod.` prefixes), so a run may resume with a different `compile` or `optimizer_impl`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

import solvers

from . import data as datasets
from .augment import AUGMENTATIONS, augment, augment_dim
from .augment import check_kinds as check_augment_kinds
from .files import atomic_write, read_safetensors, safetensors_format
from .losses import TIME_SAMPLING, HybridLoss, LossHistory, dsm_loss, flow_matching_loss, hybrid_loss
from .nn import PRESETS, UNet, UNetConfig, preset
from .param import C_NOISE, ScoreModel
from .sde import AffineSDE, DiscreteVPSDE, FlowSDE, SubVPSDE, VESDE, VPSDE
from .speed import COMPILE_BACKENDS

__all__ = [
    "CHECKPOINT", "COMPILE", "OPTIMIZER_IMPLS", "SDES", "Checkpoint", "ParameterUpdate", "TrainConfig",
    "TrainResult", "build_sde", "compute_loss", "ema_update", "load_checkpoint", "load_model", "make_optimizer",
    "optimizer_impl", "sample_images", "save_image_grid", "setup_distributed", "train",
]

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "scoresde.train/1"
SDES = ("vp", "vp_cosine", "subvp", "ve", "ddpm", "flow")
LOSSES = ("dsm", "hybrid", "flow_matching")
TRAIN_PREDICTIONS = ("eps", "x0", "score", "v", "flow")
OPTIMIZERS = ("adam", "adamw")
PRECISIONS = ("fp32", "bf16")
COMPILE = ("none", "net", "step")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for_loop")
# fields that may change between a run and its resumption
RESUMABLE_CHANGES = frozenset({
    "steps", "out_dir", "data_root", "ckpt_every", "log_every", "sample_every", "sample_n",
    "sample_steps", "progress", "compile", "compile_backend", "optimizer_impl",
    "lr", "time_sampling", "augment_p",  # a second phase of one run (e.g. likelihood weighting at a lower lr)
})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored in every checkpoint.

    Data: `data` ("digits", "cifar10" from the python batches in `data_root`, "folder" of images
    in `data_root` resized to `image_size` with `channels`), `flip`, `dequantize` (see
    scoresde.data), `conditional` (class-conditional with label dropout `p_uncond`), `augment`
    (non-leaking augmentation kinds of scoresde.augment, e.g. ("translate",) or "xflip,translate";
    the network is told each image's transformation and sampling uses the identity), each applied with probability
    `augment_p`, translations by at most `augment_max_shift` pixels.
    Model: `net` (a UNet preset, image size and channels taken from the data) with `net_options`
    overriding preset fields (e.g. {"ch": 16}); `sde` ("vp", "vp_cosine", "subvp", "ve", "ddpm"
    for a 1000-step linear DiscreteVPSDE, or "flow" for FlowSDE) with beta_min, beta_max (vp, subvp)
    and sigma_min, sigma_max (ve); `prediction` and `c_noise` as in ScoreModel; `learn_variance`:
    the network also outputs Improved DDPM's variance channels (UNetConfig.learn_variance,
    ScoreModel(learned_variance=True)).
    Loss (scoresde.losses): `loss` "dsm" (denoising score matching with `time_sampling` "uniform",
    "likelihood" or "discrete", and `t_eps`); "hybrid" (Improved DDPM's L_simple + hybrid_lambda
    L_vlb with importance-sampled timesteps; needs sde "ddpm", time_sampling "discrete",
    learn_variance and data on their integer grid, dequantize=False); "flow_matching" (MSE of the
    flow velocity, t ~ U(t_eps, T); needs sde "flow" and time_sampling "uniform").
    Optimizer: `optimizer` ("adam", "adamw"), lr, betas, adam_eps, weight_decay, warmup_steps,
    grad_clip (0 disables), ema_decay; `batch_size` (global, split evenly over ranks), `steps`,
    `seed`; `optimizer_impl` ("auto": "fused" on CUDA unless compile is "step", else "foreach";
    "fused", "foreach", "for_loop": PyTorch's implementations, the same update up to rounding).
    `init_from`: a checkpoint whose network and EMA weights start this run (fine-tuning, e.g. with
    time_sampling "likelihood" after a "uniform" run); its U-Net configuration must equal this
    run's; the optimizer, step count, warm-up and EMA ramp start afresh. Ignored once out_dir holds
    a checkpoint of this run (resumption).
    Runtime: `device` ("auto": CUDA when available), `precision` ("fp32", "bf16": autocast, CUDA
    only), `channels_last`, `tf32` (CUDA), `compile` ("none"; "net": torch.compile the network;
    "step": also compile clipping, optimizer step and EMA as one function) with `compile_backend`
    ("inductor"; "aot_eager", "eager": tracing only, for debugging and tests), `out_dir`,
    `ckpt_every`, `log_every`, `sample_every` (0: never), `sample_n`, `sample_steps`
    (Euler-Maruyama steps for the grids), `progress`.
    """

    data: Literal["digits", "cifar10", "folder"] = "digits"
    data_root: str | None = None
    image_size: int | None = None
    channels: int = 3
    flip: bool = False
    dequantize: bool = False
    conditional: bool = False
    p_uncond: float = 0.1
    augment: tuple[str, ...] = ()
    augment_p: float = 0.0
    augment_max_shift: int = 1

    net: str = "digits"
    net_options: dict = field(default_factory=dict)
    sde: Literal["vp", "vp_cosine", "subvp", "ve", "ddpm", "flow"] = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    prediction: Literal["eps", "x0", "score", "v", "flow"] = "eps"
    c_noise: str = "log_noise"
    learn_variance: bool = False
    loss: Literal["dsm", "hybrid", "flow_matching"] = "dsm"
    time_sampling: Literal["uniform", "likelihood", "discrete"] = "uniform"
    t_eps: float = 1e-5
    hybrid_lambda: float = 0.001

    optimizer: Literal["adam", "adamw"] = "adam"
    optimizer_impl: Literal["auto", "fused", "foreach", "for_loop"] = "auto"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 5000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    batch_size: int = 128
    steps: int = 100_000
    seed: int = 0
    init_from: str | None = None

    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    tf32: bool = True
    compile: Literal["none", "net", "step"] = "none"
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    out_dir: str = "runs/train"
    ckpt_every: int = 5000
    log_every: int = 100
    sample_every: int = 0
    sample_n: int = 64
    sample_steps: int = 250
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(self.betas))
        augment = self.augment.split(",") if isinstance(self.augment, str) else self.augment  # "xflip,translate"
        object.__setattr__(self, "augment", check_augment_kinds(k.strip() for k in augment if k.strip()))
        # JSON round trips give lists; keep tuples so that configs compare equal
        object.__setattr__(self, "net_options",
                           {k: tuple(v) if isinstance(v, list) else v for k, v in dict(self.net_options).items()})

        def choice(name, valid):
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {list(valid)}")

        def integer(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")

        def number(name, lo, hi, *, lo_open=False, hi_open=False):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                raise ValueError(f"{name} must be a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {v!r}")

        choice("data", datasets.DATASETS)
        choice("net", sorted(PRESETS))
        choice("sde", SDES)
        choice("prediction", TRAIN_PREDICTIONS)
        choice("loss", LOSSES)
        choice("c_noise", sorted(C_NOISE))
        choice("time_sampling", TIME_SAMPLING)
        choice("optimizer", OPTIMIZERS)
        choice("precision", PRECISIONS)
        choice("optimizer_impl", OPTIMIZER_IMPLS)
        choice("compile", COMPILE)
        choice("compile_backend", COMPILE_BACKENDS)
        if self.compile == "none" and self.compile_backend != "inductor":
            raise ValueError(f"compile_backend {self.compile_backend!r} applies when compiling; compile is 'none' "
                             "(choose compile 'net' or 'step', or leave compile_backend 'inductor')")
        if self.data != "digits" and self.data_root is None:
            raise ValueError(f"data {self.data!r} needs data_root")
        if self.data == "folder" and self.image_size is None:
            raise ValueError("data 'folder' needs image_size")
        if self.image_size is not None:
            integer("image_size", 1)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        for name in ("flip", "dequantize", "conditional", "learn_variance", "channels_last", "tf32", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        number("p_uncond", 0.0, 1.0)
        number("augment_p", 0.0, 1.0)
        integer("augment_max_shift", 1)
        if self.augment_p > 0 and not self.augment:
            raise ValueError(f"augment_p is {self.augment_p} but augment names no kind; choose from {list(AUGMENTATIONS)}")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise ValueError(f"init_from must be None or a checkpoint path, got {self.init_from!r}")
        if "learn_variance" in self.net_options:
            raise ValueError("net_options may not set learn_variance; use TrainConfig.learn_variance (the model needs it too)")
        bad = sorted(set(self.net_options) - {f.name for f in dataclasses.fields(UNetConfig)})
        if bad or {"image_size", "in_channels", "num_classes", "augment_dim"} & set(self.net_options):
            raise ValueError(
                f"net_options {sorted(self.net_options)}: may set UNetConfig fields except image_size, in_channels "
                f"and num_classes (taken from the data) and augment_dim (from augment); unknown {bad}"
            )
        for name in ("beta_min", "beta_max", "sigma_min", "sigma_max"):
            number(name, 0.0, math.inf, lo_open=True, hi_open=True)
        if self.beta_max <= self.beta_min or self.sigma_max <= self.sigma_min:
            raise ValueError("need beta_min < beta_max and sigma_min < sigma_max")
        if self.c_noise == "timestep" and self.sde != "ddpm":
            raise ValueError("c_noise 'timestep' needs sde 'ddpm'")
        if self.time_sampling == "discrete" and self.sde != "ddpm":
            raise ValueError("time_sampling 'discrete' (DDPM's L_simple) needs sde 'ddpm'")
        number("t_eps", 0.0, 0.5, lo_open=True, hi_open=True)
        number("hybrid_lambda", 0.0, math.inf, hi_open=True)
        if self.loss == "hybrid":
            if self.sde != "ddpm":
                raise ValueError(f"loss 'hybrid' needs sde 'ddpm' (L_vlb on the discrete schedule's timesteps), got {self.sde!r}")
            if self.time_sampling != "discrete":
                raise ValueError(f"loss 'hybrid' needs time_sampling 'discrete' (integer timesteps), got {self.time_sampling!r}")
            if not self.learn_variance:
                raise ValueError("loss 'hybrid' needs learn_variance=True (L_vlb trains the variance channels)")
            if self.dequantize:
                raise ValueError("loss 'hybrid' needs dequantize=False (its decoder term scores the integer levels)")
        if self.loss == "flow_matching":
            if self.sde != "flow":
                raise ValueError(f"loss 'flow_matching' needs sde 'flow', got {self.sde!r}")
            if self.time_sampling != "uniform":
                raise ValueError(
                    f"loss 'flow_matching' needs time_sampling 'uniform' (t ~ U(t_eps, T)), got {self.time_sampling!r}"
                )
        number("lr", 0.0, math.inf, lo_open=True, hi_open=True)
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        for b in self.betas:
            if not (isinstance(b, (int, float)) and 0.0 <= b < 1.0):
                raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        number("adam_eps", 0.0, math.inf, lo_open=True, hi_open=True)
        number("weight_decay", 0.0, math.inf, hi_open=True)
        integer("warmup_steps", 0)
        number("grad_clip", 0.0, math.inf, hi_open=True)
        number("ema_decay", 0.0, 1.0, hi_open=True)
        integer("batch_size", 1)
        integer("steps", 0)
        integer("seed", 0)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as e:
                raise ValueError(f"device must be 'auto' or a torch device string, got {self.device!r}") from e
            if self.precision == "bf16" and torch.device(self.device).type != "cuda":
                raise ValueError(f"precision 'bf16' is for CUDA only; device is {self.device!r} (use precision 'fp32')")
        for name in ("ckpt_every", "log_every"):
            integer(name, 1)
        integer("sample_every", 0)
        integer("sample_n", 1)
        integer("sample_steps", 1)

    def to_dict(self) -> dict:
        """JSON-serializable fields."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        d["net_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.net_options.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; valid: {sorted(names)}")
        return cls(**d)


def build_sde(config: TrainConfig) -> AffineSDE:
    """The forward process named by config.sde."""
    if config.sde == "vp":
        return VPSDE(config.beta_min, config.beta_max)
    if config.sde == "vp_cosine":
        return VPSDE(schedule="cosine")
    if config.sde == "subvp":
        return SubVPSDE(config.beta_min, config.beta_max)
    if config.sde == "ve":
        return VESDE(config.sigma_min, config.sigma_max)
    if config.sde == "flow":
        return FlowSDE()
    return DiscreteVPSDE()


def _unet_config(config: TrainConfig, shape: tuple[int, int, int], num_classes: int | None) -> UNetConfig:
    C, H, W = shape
    if H != W:
        raise ValueError(f"the UNet needs square images, got {H}x{W}")
    if config.conditional and num_classes is None:
        raise ValueError(f"conditional=True but data {config.data!r} has no labels (use class_subfolders)")
    return preset(config.net, **{**config.net_options, "image_size": H, "in_channels": C,
                                 "num_classes": num_classes if config.conditional else None,
                                 "learn_variance": config.learn_variance, "augment_dim": augment_dim(config.augment)})


# --- checkpoints ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: step, configs, and CPU state dicts (opt: the optimizer's `state` by param
    index; loss_history: the hybrid loss's `LossHistory.state_dict()`, empty for other losses)."""

    step: int
    config: TrainConfig
    unet_config: UNetConfig
    sde_config: dict
    net: dict[str, Tensor]
    ema: dict[str, Tensor]
    opt: dict[int, dict[str, Tensor]]
    loss_history: dict[str, Tensor] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, *, step: int, config: TrainConfig, unet_config: UNetConfig,
                    sde: AffineSDE, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                    loss_history: LossHistory | None = None) -> None:
    """Write a checkpoint atomically (module docstring)."""
    from safetensors.torch import save_file

    tensors = {}
    for prefix, module in (("net", net), ("ema", ema)):
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().to("cpu").contiguous()
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).detach().to("cpu").contiguous()
    if loss_history is not None:
        for k, v in loss_history.state_dict().items():
            tensors[f"loss_history.{k}"] = v.contiguous()
    meta = {
        "format": FORMAT, "step": str(step), "config": json.dumps(config.to_dict()),
        "unet_config": json.dumps(unet_config.to_dict()), "sde": json.dumps(sde.config()),
    }
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by `train` (tensors and JSON only; nothing is unpickled)."""
    tensors, meta = read_safetensors(path, fmt=FORMAT, what="checkpoint")
    net = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    opt: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            opt.setdefault(int(i), {})[name] = v
    history = {k[len("loss_history."):]: v for k, v in tensors.items() if k.startswith("loss_history.")}
    return Checkpoint(
        step=int(meta["step"]), config=TrainConfig.from_dict(json.loads(meta["config"])),
        unet_config=UNetConfig.from_dict(json.loads(meta["unet_config"])), sde_config=json.loads(meta["sde"]),
        net=net, ema=ema, opt=opt, loss_history=history,
    )


def load_model(path: str | os.PathLike, *, ema: bool = True, device=None) -> ScoreModel:
    """A ScoreModel (in eval mode) over the EMA (or raw) weights of a checkpoint.

    path: a training checkpoint, or a model file written by `scoresde.pretrained.export_model`
    (the shipped models are such files; they hold the EMA weights only, so `ema` must stay True).
    The model also carries `image_shape` (C, H, W), the shape of one image it was trained on,
    `config` (the TrainConfig as a dict) and `null_label` (the class count K of a
    class-conditional net, which reads label K as "no class"; None otherwise).
    """
    from . import pretrained

    if safetensors_format(path) == pretrained.FORMAT:
        if not ema:
            raise ValueError(f"{path} is an exported model: it holds the EMA weights only (ema=True)")
        return pretrained.load_pretrained(path, device=device)
    ckpt = load_checkpoint(path)
    net = UNet(ckpt.unet_config)
    net.load_state_dict(ckpt.ema if ema else ckpt.net)
    net = net.to(device).eval().requires_grad_(False)
    model = ScoreModel(net, build_sde(ckpt.config), ckpt.config.prediction, c_noise=ckpt.config.c_noise,
                       learned_variance=ckpt.unet_config.learn_variance)
    cfg = ckpt.unet_config
    model.image_shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    model.config = ckpt.config.to_dict()
    model.null_label = cfg.num_classes
    return model


# --- sampling for the progress grids -------------------------------------------------------------

class _Labelled:
    """A Model with fixed labels y (B,) bound, so that samplers see the plain protocol."""

    def __init__(self, model: ScoreModel, y: Tensor):
        self.model, self.y, self.sde = model, y, model.sde

    def eps(self, x, t):
        return self.model.eps(x, t, self.y)

    def x0(self, x, t):
        return self.model.x0(x, t, self.y)

    def score(self, x, t):
        return self.model.score(x, t, self.y)

    def v(self, x, t):
        return self.model.v(x, t, self.y)


@torch.no_grad()
def sample_images(model: ScoreModel, shape, *, steps: int = 250, y: Tensor | None = None,
                  generator: torch.Generator | None = None, device=None) -> Tensor:
    """Samples (B, *D) in [-1, 1]: Euler-Maruyama on a uniform t grid, then Tweedie's denoising.

    `steps` evaluations plus one; y (B,) labels for a conditional model (None: unconditional).
    """
    m = model if y is None else _Labelled(model, y)
    x_T = model.sde.prior_sample(shape, generator=generator, device=device, dtype=torch.float32)
    ts = solvers.grids.uniform_t(model.sde, steps)
    x = solvers.get("euler_maruyama", denoise_final=True)(m, x_T, ts, generator=generator).x
    return x.clamp(-1.0, 1.0)


def save_image_grid(x: Tensor, path: str | os.PathLike, *, nrow: int | None = None, scale: int = 1) -> None:
    """Save images x (B, C, H, W) in [-1, 1] as one PNG grid (1 pixel border), each upscaled `scale` times."""
    from PIL import Image

    B, C, H, W = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(B)))
    ncol = math.ceil(B / nrow)
    img = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = torch.zeros(C, ncol * (H + 1) + 1, nrow * (W + 1) + 1, dtype=torch.uint8)
    for k in range(B):
        r, c = divmod(k, nrow)
        grid[:, 1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = img[k]
    arr = grid.permute(1, 2, 0).numpy()
    im = Image.fromarray(arr[..., 0] if C == 1 else arr, mode="L" if C == 1 else "RGB")
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


# --- distributed ---------------------------------------------------------------------------------

def setup_distributed() -> tuple[int, int]:
    """Join the process group described by torchrun's environment; returns (rank, world_size).

    Without torchrun (no WORLD_SIZE, or 1) nothing happens and (0, 1) comes back. Backend: NCCL
    with one device per process (LOCAL_RANK) when CUDA is available, else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or (dist.is_available() and dist.is_initialized()):
        return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _step_seed(seed: int, rank: int, step: int, stream: int) -> int:
    """Seed of random stream `stream` (0: loss and augmentation, 1: dropout) of one step on one rank.

    Distinct for every (seed < 2^11, rank < 2^10, stream < 4, step < 2^40).
    """
    return ((((seed * 1024 + rank) * 4 + stream) << 40) + step) & ((1 << 63) - 1)


# --- training ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainResult:
    """What `train` returns: the step reached, the last logged loss (None if none), the raw and EMA
    networks (unwrapped from DDP) and `model`, a ScoreModel over the EMA network for sampling."""

    step: int
    loss: float | None
    net: UNet
    ema: UNet
    model: ScoreModel


def _resolve_device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def optimizer_impl(config: TrainConfig, device: torch.device) -> str:
    """The optimizer implementation a run on `device` uses: "fused", "foreach" or "for_loop".

    config.optimizer_impl, with "auto" meaning fused Adam on CUDA (one kernel for all parameters)
    and foreach (multi-tensor kernels) elsewhere and under compile="step" (PyTorch's compiled
    optimizer path: inductor fuses the foreach update itself).
    """
    if config.optimizer_impl != "auto":
        return config.optimizer_impl
    return "fused" if torch.device(device).type == "cuda" and config.compile != "step" else "foreach"


def make_optimizer(config: TrainConfig, net: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW over net's parameters (on `device`) in the implementation `optimizer_impl` picks.

    With compile="step" the learning rate is a 0-d tensor on `device` (`ParameterUpdate` fills it
    each step; a Python float would be a constant of the compiled graph and recompile it at every
    warm-up step), and the non-fused implementations keep their state on the device (capturable).
    """
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    impl = optimizer_impl(config, device)
    options = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    lr: float | Tensor = config.lr
    if config.compile == "step":
        lr = torch.tensor(config.lr, device=device)
        if impl != "fused":
            options["capturable"] = True
    return cls(net.parameters(), lr=lr, betas=config.betas, eps=config.adam_eps, weight_decay=config.weight_decay,
               **options)


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float | Tensor) -> None:
    """ema <- decay * ema + (1 - decay) * net for parameters; buffers are copied.

    decay: a float, or a 0-d tensor on the parameters' device (inside a compiled update).
    """
    e_params = [p for p in ema.parameters()]
    n_params = [p.detach() for p in net.parameters()]
    # Polyak averaging as in Song et al.'s ExponentialMovingAverage: lerp towards the weights by 1 - decay
    torch._foreach_lerp_(e_params, n_params, 1.0 - decay)
    for be, bn in zip(ema.buffers(), net.buffers()):
        be.copy_(bn)


class ParameterUpdate:
    """What follows loss.backward(): clip the gradients' global norm, step the optimizer, update the EMA.

    Called as update(lr, decay) -> grad_norm, the 0-d tensor of the global gradient norm before
    clipping, with this step's learning rate and EMA decay (floats). grad_clip 0 disables
    clipping. compiled=False runs eagerly, the learning rate written into the param groups.
    compiled=True runs the three as one torch.compile'd function (`backend`); lr and decay then
    reach it through 0-d device tensors filled each step, so the optimizer must hold a tensor
    learning rate (`make_optimizer` with compile="step"). No host synchronization either way.
    """

    def __init__(self, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, *, grad_clip: float,
                 compiled: bool = False, backend: str = "inductor"):
        self.net, self.ema, self.opt = net, ema, opt
        self.params = list(net.parameters())
        self.max_norm = grad_clip if grad_clip > 0 else math.inf
        self.compiled = compiled
        if compiled:
            if not all(isinstance(g["lr"], Tensor) for g in opt.param_groups):
                raise ValueError("a compiled update needs an optimizer with a tensor lr "
                                 "(make_optimizer with compile='step')")
            self.decay = torch.zeros((), device=self.params[0].device)
            self._update = torch.compile(self._step, backend=backend)

    def _step(self, decay: float | Tensor) -> Tensor:
        grad_norm = nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.opt.step()
        ema_update(self.ema, self.net, decay)
        return grad_norm

    def __call__(self, lr: float, decay: float) -> Tensor:
        if not self.compiled:
            for group in self.opt.param_groups:
                group["lr"] = lr
            return self._step(decay)
        for group in self.opt.param_groups:
            group["lr"].fill_(lr)
        self.decay.fill_(decay)
        return self._update(self.decay)


def compute_loss(
    config: TrainConfig, model: ScoreModel, x0: Tensor, *, y: Tensor | None, null_label: int | None, levels: int,
    history: LossHistory | None, generator: torch.Generator,
) -> tuple[Tensor, HybridLoss | None]:
    """The batch's mean loss (0-d) under config.loss and config.precision, and for the hybrid loss its parts.

    x0: (B, *D) model inputs; y: (B,) labels of a conditional model (None: unconditional);
    null_label: the network's num_classes; levels: the data's quantization levels (hybrid loss);
    history: the hybrid loss's LossHistory (None for the other losses). Draws from `generator`.
    """
    hybrid = None
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        if config.loss == "hybrid":
            hybrid = hybrid_loss(model, x0, history, levels=levels, lam=config.hybrid_lambda, y=y,
                                 null_label=null_label, p_uncond=config.p_uncond, generator=generator)
            loss = hybrid.loss.mean()
        elif config.loss == "flow_matching":
            loss = flow_matching_loss(model, x0, y=y, null_label=null_label, p_uncond=config.p_uncond,
                                      t_eps=config.t_eps, generator=generator).mean()
        else:
            loss = dsm_loss(model, x0, y=y, null_label=null_label, p_uncond=config.p_uncond,
                            time_sampling=config.time_sampling, t_eps=config.t_eps, generator=generator).mean()
    return loss, hybrid


def _check_resume(saved: TrainConfig, config: TrainConfig, path: Path) -> None:
    a, b = saved.to_dict(), config.to_dict()
    diff = sorted(k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES)
    if diff:
        detail = ", ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in diff)
        raise ValueError(f"cannot resume from {path}: configuration differs in {detail}; "
                         f"only {sorted(RESUMABLE_CHANGES)} may change (or use a new out_dir)")


def _init_weights(net: nn.Module, ema: nn.Module, unet_config: UNetConfig, path: Path) -> None:
    """Start from the network and EMA weights of the checkpoint at `path` (TrainConfig.init_from)."""
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no checkpoint at {path}")
    ckpt = load_checkpoint(path)
    if ckpt.unet_config != unet_config:
        a, b = ckpt.unet_config.to_dict(), unet_config.to_dict()
        diff = ", ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a) if a[k] != b[k])
        raise ValueError(f"init_from {path}: its U-Net configuration differs from this run's in {diff}")
    net.load_state_dict(ckpt.net)
    ema.load_state_dict(ckpt.ema)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after `step` (by a run killed after its last checkpoint)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume) as configured; see the module docstring. Call `setup_distributed` first under torchrun."""
    rank, world = _rank_world()
    device = _resolve_device(config)
    if config.precision == "bf16" and device.type != "cuda":
        raise ValueError(f"precision 'bf16' is for CUDA only; running on {device} (use precision 'fp32')")
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the world size {world}")
    per_rank = config.batch_size // world
    out = Path(config.out_dir)
    ckpt_path = out / CHECKPOINT
    metrics_path = out / "metrics.jsonl"

    data = datasets.load(config.data, root=config.data_root, image_size=config.image_size,
                         channels=config.channels, class_subfolders=config.conditional and config.data == "folder")
    sde = build_sde(config)
    unet_config = _unet_config(config, data.shape, data.num_classes)
    sampler = torch.utils.data.DistributedSampler(range(len(data)), num_replicas=world, rank=rank, shuffle=True,
                                                  seed=config.seed, drop_last=True)
    batches_per_epoch = len(sampler) // per_rank
    if batches_per_epoch == 0:
        raise ValueError(f"{data.source}: {len(data)} images give no full batch of {per_rank} per rank")

    cuda = device.type == "cuda"
    tf32_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    rng_devices = [device] if cuda else []
    with torch.random.fork_rng(devices=rng_devices), contextlib.ExitStack() as stack:
        if cuda and config.tf32:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            stack.callback(lambda: (setattr(torch.backends.cuda.matmul, "allow_tf32", tf32_before[0]),
                                    setattr(torch.backends.cudnn, "allow_tf32", tf32_before[1])))
        torch.manual_seed(config.seed)  # the initial weights (same on every rank)
        net = UNet(unet_config)
        ema = copy.deepcopy(net).requires_grad_(False)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        net.to(device, memory_format=memory_format)
        ema.to(device, memory_format=memory_format).eval()
        opt = make_optimizer(config, net, device)
        history = LossHistory(sde.N, device=device) if config.loss == "hybrid" else None
        step = 0
        if ckpt_path.is_file():
            ckpt = load_checkpoint(ckpt_path)
            _check_resume(ckpt.config, config, ckpt_path)
            net.load_state_dict(ckpt.net)
            ema.load_state_dict(ckpt.ema)
            state = opt.state_dict()
            state["state"] = ckpt.opt
            opt.load_state_dict(state)
            if history is not None:
                history.load_state_dict(ckpt.loss_history)
            step = ckpt.step
        elif config.init_from is not None:
            _init_weights(net, ema, unet_config, Path(config.init_from))
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            _truncate_metrics(metrics_path, step)
        ddp = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None) if world > 1 else net
        if config.compile != "none":
            ddp = torch.compile(ddp, backend=config.compile_backend)  # checkpoints keep saving `net`
        update = ParameterUpdate(net, ema, opt, grad_clip=config.grad_clip, compiled=config.compile == "step",
                                 backend=config.compile_backend)
        model = ScoreModel(ddp, sde, config.prediction, c_noise=config.c_noise, learned_variance=config.learn_variance)
        ema_model = ScoreModel(ema, sde, config.prediction, c_noise=config.c_noise, learned_variance=config.learn_variance)
        images = data.images.to(device)
        labels = data.labels.to(device) if config.conditional else None
        gen = torch.Generator(device)

        bar = None
        if rank == 0 and config.progress and step < config.steps:
            from tqdm.auto import tqdm
            bar = stack.enter_context(tqdm(total=config.steps, initial=step, unit="step", dynamic_ncols=True))
        epoch, order = -1, None
        loss_sum = torch.zeros((), device=device)
        n_logged, t_log, last_loss = 0, time.perf_counter(), None
        net.train()
        while step < config.steps:
            if step // batches_per_epoch != epoch:
                epoch = step // batches_per_epoch
                sampler.set_epoch(epoch)
                order = torch.tensor(list(sampler), dtype=torch.long, device=device)
            i = step % batches_per_epoch
            idx = order[i * per_rank:(i + 1) * per_rank]
            gen.manual_seed(_step_seed(config.seed, rank, step, 0))
            torch.manual_seed(_step_seed(config.seed, rank, step, 1))  # dropout
            batch, step_model = images[idx], model
            if config.augment_p > 0:  # the network is told each image's transformation (non-leaking)
                batch, aug = augment(batch, config.augment, config.augment_p, max_shift=config.augment_max_shift,
                                     generator=gen)
                step_model = ScoreModel(functools.partial(ddp, augment_labels=aug), sde, config.prediction,
                                        c_noise=config.c_noise, learned_variance=config.learn_variance)
            x0 = datasets.to_model_input(batch, data.levels, flip=config.flip, dequantize=config.dequantize,
                                         generator=gen)
            if config.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            lr = config.lr * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else config.lr
            y = None if labels is None else labels[idx]
            loss, hybrid = compute_loss(config, step_model, x0, y=y, null_label=unet_config.num_classes, levels=data.levels,
                                        history=history, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = update(lr, min(config.ema_decay, (1 + step) / (10 + step)))
            if hybrid is not None:
                _record_losses(history, hybrid.step, hybrid.vlb, world)
            step += 1
            loss_sum += loss.detach()
            n_logged += 1

            if step % config.log_every == 0 or step == config.steps:
                if world > 1:
                    dist.all_reduce(loss_sum)
                    loss_sum /= world
                last_loss = float(loss_sum) / n_logged  # host sync, once per log interval
                now = time.perf_counter()
                record = {"step": step, "loss": last_loss, "lr": lr, "grad_norm": float(grad_norm),
                          "images_per_s": n_logged * config.batch_size / max(now - t_log, 1e-9)}
                if rank == 0:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    if bar is not None:
                        bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{record['images_per_s']:.0f}")
                loss_sum.zero_()
                n_logged, t_log = 0, now
            if bar is not None:
                bar.update(1)
            if rank == 0 and (step % config.ckpt_every == 0 or step == config.steps):
                save_checkpoint(ckpt_path, step=step, config=config, unet_config=unet_config, sde=sde,
                                net=net, ema=ema, opt=opt, loss_history=history)
                meta = {"step": step, "config": config.to_dict(), "unet_config": unet_config.to_dict(),
                        "sde": sde.config()}
                atomic_write(out / "config.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
            if rank == 0 and config.sample_every and step % config.sample_every == 0:
                _write_samples(ema_model, unet_config, config, step, out, device)
                t_log = time.perf_counter()  # keep images/s about training
    net.eval()
    return TrainResult(step=step, loss=last_loss, net=net, ema=ema, model=ema_model)


def _record_losses(history: LossHistory, steps: Tensor, vlb: Tensor, world: int) -> None:
    """Record every rank's (timestep, L_vlb) pairs in rank order, so that all ranks keep the same history."""
    if world > 1:
        all_steps, all_vlb = [torch.empty_like(steps) for _ in range(world)], [torch.empty_like(vlb) for _ in range(world)]
        dist.all_gather(all_steps, steps.contiguous())
        dist.all_gather(all_vlb, vlb.contiguous())
        steps, vlb = torch.cat(all_steps), torch.cat(all_vlb)
    history.record(steps, vlb)


def _write_samples(model: ScoreModel, unet_config: UNetConfig, config: TrainConfig, step: int, out: Path,
                   device: torch.device) -> None:
    gen = torch.Generator(device).manual_seed(config.seed)  # the same noise at every step
    n = config.sample_n
    y = None
    if unet_config.num_classes is not None:
        y = torch.arange(n, device=device) % unet_config.num_classes
    shape = (n, unet_config.in_channels, unet_config.image_size, unet_config.image_size)
    with torch.no_grad():
        x = sample_images(model, shape, steps=config.sample_steps, y=y, generator=gen, device=device)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    save_image_grid(x, out / "samples" / f"step_{step:07d}.png", scale=max(1, 32 // unet_config.image_size))
