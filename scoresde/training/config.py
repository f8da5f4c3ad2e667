"""The configuration of a training run (`TrainConfig`): its fields, their valid values and checks (the SDE and network
it names are built in builders.py)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from solvers.grids import GRIDS, MAX_STEPS
from solvers.validate import dataclass_from_dict

from .. import data as datasets
from ..augment import AUGMENTATIONS
from ..augment import check_kinds as check_augment_kinds
from ..losses import TIME_SAMPLING
from ..patches import PATCH_SIZES
from ..nn import DIT_PRESETS, PRESETS, DiT, DiTConfig, UNet, UNetConfig
from ..param import C_NOISE
from ..sde_names import SDE_NAMES
from ..speed import COMPILE_BACKENDS
from .few_step_checks import CONSISTENCY_LOSSES, check_consistency, check_pd, check_reflow

__all__ = [
    "COMPILE", "CONSISTENCY_DEFAULTS", "CONSISTENCY_LOSSES", "LOSSES", "NETS", "NET_KINDS", "OPTIMIZERS", "OPTIMIZER_IMPLS",
    "PAIR_GRID", "PD_DEFAULTS", "PD_GRIDS", "PD_MAX_STEPS", "PD_WEIGHTINGS", "PRECISIONS", "REFLOW_DEFAULTS",
    "REFLOW_SAMPLE_STEPS", "REFLOW_SOLVERS", "RESUMABLE_CHANGES", "SR_AUG_MAX",
    "TRAIN_PREDICTIONS", "TrainConfig", "check_resume", "net_kind", "recorded_config",
]

LOSSES = ("dsm", "hybrid", "flow_matching", "cd", "ct", "ect", "pd", "reflow")
# progressive distillation (loss "pd", scoresde.fewstep.progressive): the grids its rounds walk (every grid of
# solvers.grids nests: each is uniform in some function of t, so a 2N-step grid's every other time is the N-step
# grid) and its weightings (as scoresde.fewstep.progressive.WEIGHTINGS; a test checks they agree)
PD_GRIDS = tuple(GRIDS)
PD_WEIGHTINGS = ("snr_plus_one", "truncated_snr")
PD_DEFAULTS = ("uniform_t", "snr_plus_one")  # (pd_grid, pd_weighting) when the config leaves them None
PD_MAX_STEPS = 500_000  # the teacher's 2N-step grid stays within solvers.grids.MAX_STEPS
# rectified-flow reflow (loss "reflow", scoresde.fewstep.reflow): the deterministic fixed-grid solvers that may
# integrate the teacher's ODE for the pairs (a test checks each is registered and deterministic), and
# (reflow_solver, reflow_steps) when the config leaves them None: fewstep.reflow.reflow_pairs's defaults
REFLOW_SOLVERS = ("heun", "ddim", "dpm_solver", "dpm_solver++", "dpm_solver_multistep", "deis", "ipndm", "unipc")
REFLOW_DEFAULTS = ("heun", 50)
PAIR_GRID = "uniform_t"  # the grid the pairs' solver walks (fewstep.reflow.reflow_pairs's default)
REFLOW_SAMPLE_STEPS = 1  # Euler steps a reflow student is sampled with by default (`TrainConfig.ddim_sampling`)
TEACHER_STEPS = ("ddim", "heun", "dpm_solver_2")  # as scoresde.fewstep.consistency_losses.TEACHER_STEPS
DISTANCES = ("l2", "pseudo_huber")
# per consistency loss: (distance, target_decay) when the config leaves them None
CONSISTENCY_DEFAULTS = {"cd": ("l2", 0.95), "ct": ("pseudo_huber", 0.0), "ect": ("pseudo_huber", 0.0)}
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
    "cd_n",  # consistency distillation on a finer grid in a later phase (a curriculum, as iCT's for CT)
})

# backbone kind -> (configuration class, network class); model files record the kind ("net_kind")
NET_KINDS = {"unet": (UNetConfig, UNet), "dit": (DiTConfig, DiT)}


NETS = sorted(PRESETS) + sorted(DIT_PRESETS)  # TrainConfig.net: the U-Net presets, then the DiT presets

# What each field may hold, checked in this order by TrainConfig.__post_init__.
_CHOICES = {
    "data": datasets.DATASETS, "net": NETS, "sde": SDE_NAMES, "prediction": TRAIN_PREDICTIONS,
    "loss": LOSSES, "c_noise": sorted(C_NOISE), "time_sampling": TIME_SAMPLING, "optimizer": OPTIMIZERS,
    "precision": PRECISIONS, "optimizer_impl": OPTIMIZER_IMPLS, "compile": COMPILE,
    "compile_backend": COMPILE_BACKENDS, "teacher_step": TEACHER_STEPS,
}
_FLAGS = ("flip", "dequantize", "conditional", "learn_variance", "channels_last", "tf32", "progress")
_INTEGERS = {  # field -> its least value
    "augment_max_shift": 1, "warmup_steps": 0, "batch_size": 1, "steps": 0, "seed": 0, "ckpt_every": 1,
    "log_every": 1, "sample_every": 0, "sample_n": 1, "sample_steps": 1, "cd_n": 2, "ect_stages": 1,
    "sr_factor": 1, "downsample": 1,
}
# fields that may be None, else checked as above: choices, integers (their least value), step counts (their largest
# value and what they count)
_OPTIONAL_CHOICES = {"distance": DISTANCES, "pd_grid": PD_GRIDS, "pd_weighting": PD_WEIGHTINGS,
                     "reflow_solver": REFLOW_SOLVERS}
_OPTIONAL_INTEGERS = {"image_size": 1, "reflow_pairs": 1, "reflow_round": 1}
_OPTIONAL_STEPS = {"pd_steps": (PD_MAX_STEPS, " (the student's DDIM steps; the teacher takes twice as many)"),
                   "reflow_steps": (MAX_STEPS, "")}
# the largest seed: training's per-step RNG seeds (ranks.step_seed) are distinct for seeds below 2^12
MAX_SEED = 2**12 - 1
_POSITIVE, _NONNEGATIVE = (0.0, math.inf, "()"), (0.0, math.inf, "[)")
_NUMBERS = {  # field -> (lo, hi, brackets): the interval of valid values, "(" and ")" open
    "p_uncond": (0.0, 1.0, "[]"), "augment_p": (0.0, 1.0, "[]"), "beta_min": _POSITIVE, "beta_max": _POSITIVE,
    "sigma_min": _POSITIVE, "sigma_max": _POSITIVE, "t_eps": (0.0, 0.5, "()"), "hybrid_lambda": _NONNEGATIVE,
    "lr": _POSITIVE, "adam_eps": _POSITIVE, "weight_decay": _NONNEGATIVE, "grad_clip": _NONNEGATIVE,
    "ema_decay": (0.0, 1.0, "[)"), "boundary_width": _POSITIVE,
}
# network fields a run sets itself (UNetConfig and DiTConfig name them alike): from the data, from `augment`,
# and learn_variance (the model needs it too)
_DERIVED_NET_FIELDS = {"image_size", "in_channels", "num_classes", "augment_dim"}
SR_AUG_MAX = 0.25  # TrainConfig.sr_aug_max of an SR run when None


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(valid)}")


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_integer(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(name: str, value, lo: float, hi: float, brackets: str) -> None:
    ok = _is_number(value) and math.isfinite(value)
    ok = ok and (value > lo if brackets[0] == "(" else value >= lo) and (value < hi if brackets[1] == ")" else value <= hi)
    if not ok:
        raise ValueError(f"{name} must be a number in {brackets[0]}{lo}, {hi}{brackets[1]}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored in every checkpoint.

    Data: `data` ("digits"; "patches", RGB patches of scikit-learn's sample photographs, `image_size`
    16 or 32, default 16; "cifar10" from the python batches in `data_root`; "folder" of images
    in `data_root` resized to `image_size` with `channels`), `flip`, `dequantize` (see
    scoresde.data), `conditional` (class-conditional with label dropout `p_uncond`), `augment`
    (non-leaking augmentation kinds of scoresde.augment, e.g. ("translate",) or "xflip,translate";
    the network is told each image's transformation and sampling uses the identity), each applied with probability
    `augment_p`, translations by at most `augment_max_shift` pixels; `downsample` f: train on every image
    average-pooled f x f after dequantization and flips (1: as loaded), e.g. the base model of a cascade whose SR
    stage has sr_factor f; `vae`: a VAE file (scoresde.latent.vae_files) whose image shape is the data's: train
    a latent diffusion model on z = s E(x), the VAE's scaled posterior means of the images as above (docs/latent.md);
    the run's files hold the VAE too and load as a LatentModel, whose samples are decoded images.
    Model: `net` (a U-Net preset, "digits" or "ddpmpp_cifar10", or a DiT preset, "dit_digits",
    "dit_patches", "dit_s2" .. "dit_xl8"; image size and channels taken from the data) with `net_options`
    overriding fields of its UNetConfig or DiTConfig (e.g. {"ch": 16}, {"depth": 4}); `sde` ("vp", "vp_cosine", "subvp", "ve", "ddpm"
    for a 1000-step linear DiscreteVPSDE, or "flow" for FlowSDE) with beta_min, beta_max (vp, subvp)
    and sigma_min, sigma_max (ve); `prediction` and `c_noise` as in ScoreModel; `learn_variance`:
    the network also outputs Improved DDPM's variance channels (UNetConfig / DiTConfig.learn_variance,
    ScoreModel(learned_variance=True)).
    Super-resolution (docs/latent.md, "Cascades"): `sr_factor` f > 1 trains the SR stage of a cascade
    (scoresde.latent.cascade.SRStage) instead of a plain model: the data's images x are the high-resolution
    targets, f x f average pooling gives the low-resolution condition, the network sees x_t and the condition
    upsampled (2C channels in, C out) and the condition's augmentation level through its augmentation input;
    `sr_aug_max` (None: 0.25 for an SR run) bounds the noise-conditioning augmentation level s ~ U(0, sr_aug_max),
    a time of the run's process (Ho et al. 2021). Load the result with `scoresde.load_sr_stage`.
    Loss (scoresde.losses): `loss` "dsm" (denoising score matching with `time_sampling` "uniform",
    "likelihood" or "discrete", and `t_eps`); "hybrid" (Improved DDPM's L_simple + hybrid_lambda
    L_vlb with importance-sampled timesteps; needs sde "ddpm", time_sampling "discrete",
    learn_variance and data on their integer grid, dequantize=False); "flow_matching" (MSE of the
    flow velocity, t ~ U(t_eps, T); needs sde "flow" and time_sampling "uniform"); "cd", "ct", "ect":
    the consistency losses (next section); "pd" and "reflow": progressive distillation and rectified-flow reflow
    (the section after it).
    Consistency (docs/few_step.md): losses "cd", "ct" and "ect" train a ConsistencyModel (scoresde.fewstep)
    over a network that predicts `prediction`, f = c_skip x + c_den D with D its data estimate; `teacher` (a diffusion model file of
    this data and sde whose weights start the student unless `init_from` is set; "cd", "pd" and "reflow" evaluate it,
    "ect" only starts from it; its dropout may differ, e.g. net_options {"dropout": 0.0}); `boundary_width` (the noise levels over which f
    blends from x at the process's t_eps to D); `cd_n` (the points of the Karras grid of "cd"); `teacher_step`
    (the teacher's one step per pair of "cd": "ddim", "heun" or "dpm_solver_2"); `ect_stages` (the stages over
    which "ect" shrinks its gap); `distance` ("l2" or "pseudo_huber"; None: l2 for cd, pseudo_huber for ct and
    ect); `target_decay` (the EMA decay of the target network; None: 0.95 for cd, 0 for ct and ect, where the
    target is the student itself without gradients). "ct" trains from scratch along iCT's discretization
    curriculum over `steps`.
    Distillation (docs/distillation.md): loss "pd" runs one round of progressive distillation (Salimans & Ho 2022):
    a plain ScoreModel (usually `prediction` "v", from the teacher's weights through `init_from`) learns to take in
    one DDIM step what `teacher` takes in two; `pd_steps` (N: the student's DDIM steps, on every other time of the
    teacher's 2N-step grid); `pd_grid` (the grid's name in solvers.grids.GRIDS; None: "uniform_t"); `pd_weighting`
    (the loss weight, "snr_plus_one" 1 + alpha^2/sigma^2 or "truncated_snr" max(alpha^2/sigma^2, 1); None:
    snr_plus_one). The run's files record N and the grid: a teacher from an earlier round must have recorded
    exactly 2N steps on the same grid (a plain diffusion teacher takes any 2N), and `scoresde sample --model` samples
    them with DDIM on that grid by default, as do the run's progress grids (sample_every).
    Loss "reflow" runs one round of rectified-flow reflow (Liu et al. 2022) from a flow model `teacher` (sde "flow"):
    at the start the run draws P noises x_T from a generator seeded from `seed` and integrates the teacher's ODE from
    each to a sample; `reflow_pairs` (P >= batch_size: the pairs, written once to out_dir/reflow_pairs.safetensors
    and reused on resume); `reflow_solver` (the deterministic solver that makes the pairs: heun, ddim, dpm_solver,
    dpm_solver++, dpm_solver_multistep, deis, ipndm or unipc; None: heun); `reflow_steps` (that solver's steps on
    the uniform_t grid; None: 50); `reflow_round` (k >= 1: the teacher's round plus one, 0 for a flow model trained
    otherwise, so the student is the (k + 1)-rectified flow; None: 1). Training draws batches of pairs instead of
    images and minimizes the flow-matching loss on the straight path between each noise and its sample;
    `scoresde sample --model` samples the result with one Euler (DDIM) step by default, as do its progress grids.
    Optimizer: `optimizer` ("adam", "adamw"), lr, betas, adam_eps, weight_decay, warmup_steps,
    grad_clip (0 disables), ema_decay; `batch_size` (global, split evenly over ranks), `steps`,
    `seed`; `optimizer_impl` ("auto": "fused" on CUDA unless compile is "step", else "foreach";
    "fused", "foreach", "for_loop": PyTorch's implementations, the same update up to rounding).
    `init_from`: a checkpoint (or an exported model file) whose network and EMA weights start this run
    (fine-tuning, e.g. with time_sampling "likelihood" after a "uniform" run, or to another `prediction`);
    its network configuration must equal this run's but for dropout; the optimizer, step count, warm-up and EMA ramp start afresh. Ignored once out_dir holds
    a checkpoint of this run (resumption).
    Runtime: `device` ("auto": CUDA when available), `precision` ("fp32", "bf16": autocast, CUDA
    only), `channels_last`, `tf32` (CUDA), `compile` ("none"; "net": torch.compile the network;
    "step": also compile clipping, optimizer step and EMA as one function) with `compile_backend`
    ("inductor"; "aot_eager", "eager": tracing only, for debugging and tests), `out_dir`,
    `ckpt_every`, `log_every`, `sample_every` (0: never), `sample_n`, `sample_steps`
    (Euler-Maruyama steps for the grids), `progress`.
    """

    data: Literal["digits", "patches", "cifar10", "folder"] = "digits"
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
    downsample: int = 1
    vae: str | None = None

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
    sr_factor: int = 1
    sr_aug_max: float | None = None
    loss: Literal["dsm", "hybrid", "flow_matching", "cd", "ct", "ect", "pd", "reflow"] = "dsm"
    time_sampling: Literal["uniform", "likelihood", "discrete"] = "uniform"
    t_eps: float = 1e-5
    hybrid_lambda: float = 0.001
    teacher: str | None = None
    boundary_width: float = 0.01
    cd_n: int = 18
    teacher_step: Literal["ddim", "heun", "dpm_solver_2"] = "heun"
    ect_stages: int = 8
    distance: str | None = None
    target_decay: float | None = None
    pd_steps: int | None = None
    pd_grid: str | None = None
    pd_weighting: str | None = None
    reflow_pairs: int | None = None
    reflow_solver: str | None = None
    reflow_steps: int | None = None
    reflow_round: int | None = None

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
        self._normalize_containers()
        self._check_fields()
        self._check_combinations()

    def _normalize_containers(self) -> None:
        """betas and augment as tuples, net_options with tuples for lists (JSON round trips give lists;
        tuples keep configs comparing equal), after checking their types."""
        if not isinstance(self.betas, (tuple, list)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(self.betas))
        augment = self.augment.split(",") if isinstance(self.augment, str) else self.augment  # "xflip,translate"
        if not isinstance(augment, (tuple, list)) or not all(isinstance(k, str) for k in augment):
            raise ValueError(f"augment must be augmentation names (a tuple, or one comma-separated string), got {self.augment!r}")
        try:
            object.__setattr__(self, "augment", check_augment_kinds(k.strip() for k in augment if k.strip()))
        except ValueError as e:
            raise ValueError(f"augment: {e}") from None
        if not isinstance(self.net_options, dict) or not all(isinstance(k, str) for k in self.net_options):
            raise ValueError(f"net_options must be a dict of {self._net_config_class().__name__} fields, "
                             f"got {self.net_options!r}"[:300])
        object.__setattr__(self, "net_options",
                           {k: tuple(v) if isinstance(v, list) else v for k, v in self.net_options.items()})

    def _check_fields(self) -> None:
        """Each field alone: a valid choice, flag, integer or number."""
        for name, valid in _CHOICES.items():
            _check_choice(name, getattr(self, name), valid)
        for name in _FLAGS:
            _check_flag(name, getattr(self, name))
        for name, lo in _INTEGERS.items():
            _check_integer(name, getattr(self, name), lo)
        if self.seed > MAX_SEED:  # larger seeds would repeat the per-step noise of smaller ones
            raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {self.seed!r}")
        for name, interval in _NUMBERS.items():
            _check_number(name, getattr(self, name), *interval)
        self._check_optional_fields()
        if isinstance(self.channels, bool) or self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if len(self.betas) != 2 or not all(_is_number(b) and 0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.teacher is not None and (not isinstance(self.teacher, str) or not self.teacher):
            raise ValueError(f"teacher must be None or a model file path, got {self.teacher!r}")
        if self.vae is not None and (not isinstance(self.vae, str) or not self.vae):
            raise ValueError(f"vae must be None or a VAE file path, got {self.vae!r}")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise ValueError(f"init_from must be None or a checkpoint path, got {self.init_from!r}")
        if self.data_root is not None and (not isinstance(self.data_root, str) or not self.data_root):
            raise ValueError(f"data_root must be None or a folder path, got {self.data_root!r}")
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ValueError(f"out_dir must be a folder path, got {self.out_dir!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be 'auto' or a torch device string, got {self.device!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as e:
                raise ValueError(f"device must be 'auto' or a torch device string, got {self.device!r}") from e
        if "learn_variance" in self.net_options:
            raise ValueError("net_options may not set learn_variance; use TrainConfig.learn_variance (the model needs it too)")
        cls = self._net_config_class()
        bad = sorted(set(self.net_options) - {f.name for f in dataclasses.fields(cls)})
        if bad or _DERIVED_NET_FIELDS & set(self.net_options):
            raise ValueError(
                f"net_options {sorted(self.net_options)}: may set {cls.__name__} fields (net {self.net!r}) except "
                f"image_size, in_channels and num_classes (taken from the data) and augment_dim (from augment); "
                f"unknown {bad}"
            )

    def _check_optional_fields(self) -> None:
        """The fields that may be None (the few-step options, image_size, sr_aug_max): each, when set, alone."""
        for name, valid in _OPTIONAL_CHOICES.items():
            if getattr(self, name) is not None:
                _check_choice(name, getattr(self, name), valid)
        for name, lo in _OPTIONAL_INTEGERS.items():
            if getattr(self, name) is not None:
                _check_integer(name, getattr(self, name), lo)
        for name, (hi, why) in _OPTIONAL_STEPS.items():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi):
                raise ValueError(f"{name} must be an integer in [1, {hi}]{why}, got {value!r}")
        if self.target_decay is not None:
            _check_number("target_decay", self.target_decay, 0.0, 1.0, "[)")
        if self.sr_aug_max is not None:
            _check_number("sr_aug_max", self.sr_aug_max, 0.0, 1.0, "[]")

    def _net_config_class(self) -> type:
        """UNetConfig or DiTConfig, as `net` names a U-Net or a DiT preset (UNetConfig for an unknown name)."""
        return NET_KINDS[net_kind(self.net)][0] if isinstance(self.net, str) else UNetConfig

    def _check_combinations(self) -> None:
        """Fields that only work together (the fields alone are valid)."""
        if self.compile == "none" and self.compile_backend != "inductor":
            raise ValueError(f"compile_backend {self.compile_backend!r} applies when compiling; compile is 'none' "
                             "(choose compile 'net' or 'step', or leave compile_backend 'inductor')")
        if self.data in ("cifar10", "folder") and self.data_root is None:
            raise ValueError(f"data {self.data!r} needs data_root")
        if self.data == "patches" and self.image_size not in (None, *PATCH_SIZES):
            raise ValueError(f"data 'patches' needs image_size None (16) or one of {list(PATCH_SIZES)}, "
                             f"got {self.image_size!r}")
        if self.data == "folder" and self.image_size is None:
            raise ValueError("data 'folder' needs image_size")
        if self.augment_p > 0 and not self.augment:
            raise ValueError(f"augment_p is {self.augment_p} but augment names no kind; choose from {list(AUGMENTATIONS)}")
        if self.beta_max <= self.beta_min or self.sigma_max <= self.sigma_min:
            raise ValueError("need beta_min < beta_max and sigma_min < sigma_max")
        if self.c_noise == "timestep" and self.sde != "ddpm":
            raise ValueError("c_noise 'timestep' needs sde 'ddpm'")
        if self.time_sampling == "discrete" and self.sde != "ddpm":
            raise ValueError("time_sampling 'discrete' (DDPM's L_simple) needs sde 'ddpm'")
        needs = {  # loss -> (field, the value it needs, why)
            "hybrid": (("sde", "ddpm", "L_vlb on the discrete schedule's timesteps"),
                       ("time_sampling", "discrete", "integer timesteps"),
                       ("learn_variance", True, "L_vlb trains the variance channels"),
                       ("dequantize", False, "its decoder term scores the integer levels")),
            "flow_matching": (("sde", "flow", None), ("time_sampling", "uniform", "t ~ U(t_eps, T)")),
            "reflow": (("sde", "flow", "it straightens a flow model"),),
        }
        for name, value, why in needs.get(self.loss, ()):
            if getattr(self, name) != value:
                want = f"{name}={value}" if isinstance(value, bool) else f"{name} {value!r}"
                got = "" if isinstance(value, bool) else f", got {getattr(self, name)!r}"
                raise ValueError(f"loss {self.loss!r} needs {want}{f' ({why})' if why else ''}{got}")
        check_consistency(self)
        check_pd(self)
        check_reflow(self)
        self._check_sr()
        if self.vae is not None:
            unsupported = {f"sr_factor {self.sr_factor}": self.sr_factor > 1, f"loss {self.loss!r}": self.loss in (
                "hybrid", *CONSISTENCY_LOSSES, "pd", "reflow"), "sample_every": self.sample_every > 0}
            bad = [name for name, on in unsupported.items() if on]
            if bad:
                raise ValueError(f"a latent run (vae) does not support {bad} yet: it trains loss 'dsm' or "
                                 "'flow_matching' on the latents (not an SR stage) and draws no progress grids")
        if self.precision == "bf16" and self.device != "auto" and torch.device(self.device).type != "cuda":
            raise ValueError(f"precision 'bf16' is for CUDA only; device is {self.device!r} (use precision 'fp32')")

    def reflow_options(self) -> tuple[str, int, int]:
        """(solver, steps, round) of loss "reflow", REFLOW_DEFAULTS and round 1 where None."""
        solver, steps = REFLOW_DEFAULTS
        return (self.reflow_solver or solver, self.reflow_steps or steps, self.reflow_round or 1)

    def pd_options(self) -> tuple[str, str]:
        """(grid, weighting) of loss "pd", PD_DEFAULTS where None."""
        grid, weighting = PD_DEFAULTS
        return (self.pd_grid or grid, self.pd_weighting or weighting)

    def ddim_sampling(self) -> tuple[int, str] | None:
        """(steps, grid name) a "pd" or "reflow" run's student is sampled with by DDIM (Euler on FlowSDE): the pd
        student's own steps and grid, or REFLOW_SAMPLE_STEPS on PAIR_GRID for a rectified flow; None for any other loss."""
        if self.loss == "pd":
            return self.pd_steps, self.pd_options()[0]
        if self.loss == "reflow":
            return REFLOW_SAMPLE_STEPS, PAIR_GRID
        return None

    def _check_sr(self) -> None:
        """An SR run's fields: sr_aug_max only with sr_factor > 1, and no option the SR stage does not implement."""
        if self.sr_factor == 1:
            if self.sr_aug_max is not None:
                raise ValueError("sr_aug_max applies to SR runs (sr_factor > 1); sr_factor is 1")
            return
        unsupported = {"loss " + repr(self.loss): self.loss != "dsm", "augment": bool(self.augment),
                       "conditional": self.conditional, "learn_variance": self.learn_variance,
                       "sample_every": self.sample_every > 0, "time_sampling " + repr(self.time_sampling):
                       self.time_sampling != "uniform", "net_options out_channels": "out_channels" in self.net_options}
        bad = [name for name, on in unsupported.items() if on]
        if bad:
            raise ValueError(f"an SR run (sr_factor {self.sr_factor}) does not support {bad}: it trains loss 'dsm' with "
                             "uniform t, unconditional and without augmentation (the augmentation input carries the "
                             "condition's noise level), its output channels are the image's, and it draws no progress "
                             "grids (sample_every 0)")

    def sr_options(self) -> float:
        """The largest augmentation level of an SR run: sr_aug_max, SR_AUG_MAX where None."""
        return SR_AUG_MAX if self.sr_aug_max is None else self.sr_aug_max

    def consistency_options(self) -> tuple[str, float]:
        """(distance, target_decay) of a consistency loss, the loss's defaults (CONSISTENCY_DEFAULTS) where None."""
        distance, decay = CONSISTENCY_DEFAULTS[self.loss]
        return (self.distance or distance, decay if self.target_decay is None else self.target_decay)

    def to_dict(self) -> dict:
        """JSON-serializable fields."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        d["net_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.net_options.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys raise."""
        return dataclass_from_dict(cls, d)


def net_kind(name: str) -> str:
    """The backbone of net preset `name`: "dit" for a DiT preset (DIT_PRESETS), else "unet"."""
    return "dit" if name in DIT_PRESETS else "unet"


def check_resume(saved: TrainConfig, config: TrainConfig, path: Path) -> None:
    """Refuse to resume the run of checkpoint `path` (configuration `saved`) under a different `config`
    in any field but RESUMABLE_CHANGES."""
    a, b = saved.to_dict(), config.to_dict()
    diff = sorted(k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES)
    if diff:
        detail = ", ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in diff)
        raise ValueError(f"cannot resume from {path}: configuration differs in {detail}; "
                         f"only {sorted(RESUMABLE_CHANGES)} may change (or use a new out_dir)")


def recorded_config(model, loss: str) -> TrainConfig | None:
    """The TrainConfig a loaded model file records (its `config` dict) when its run trained `loss`, else None."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or config.get("loss") != loss:
        return None
    return TrainConfig.from_dict(config)
