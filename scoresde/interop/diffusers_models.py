"""diffusers networks and schedulers as scoresde models, and scoresde models as diffusers-style UNets.

Conventions side by side (docs/interop.md has the full table):

| diffusers | scoresde |
|---|---|
| integer timestep n in 0..N-1, alphas_cumprod[n] | continuous time t = (n + 1) / N on a `DiscreteVPSDE`, alpha(t)^2 = alphas_cumprod[n] |
| timestep -1 (alpha_cumprod 1: DDIM's set_alpha_to_one, DDPM's last step) | t = 0 (alpha = 1, sigma = 0) |
| prediction_type "epsilon" / "v_prediction" / "sample" | prediction "eps" / "v" / "x0" |
| sqrt(1 - alphas_cumprod[n]) | sigma(t) |
| Karras sigma sqrt((1 - abar) / abar) | noise_level = sigma / alpha = exp(-lambda) |

The network sees exactly diffusers' timestep values: the time input is t N - 1, snapped to the
nearest integer when t is within float round-off of a knot (a float32 t cannot hold (n + 1)/N
exactly), and left fractional between knots (the probability-flow ODE evaluates there).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from solvers.validate import check_int

from ..param import ScoreModel
from ..sde import SDE
from ..sde_discrete import DiscreteVPSDE
from ._optional import require_diffusers

__all__ = [
    "PREDICTION_TYPES", "SUPPORTED_UNETS", "DiffusersModel", "DiffusersStyleUNet", "DiffusersUNet", "diffusers_timestep", "from_diffusers",
    "load_diffusers", "prediction_from_scheduler", "scheduler_betas", "sde_from_scheduler",
]

# diffusers' prediction_type -> scoresde's prediction
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def _config(scheduler) -> dict:
    """A scheduler's configuration as a plain dict (a scheduler object or its config / config dict)."""
    config = getattr(scheduler, "config", scheduler)
    if not hasattr(config, "get"):
        raise ValueError(f"expected a diffusers scheduler or its config (a dict), got {type(scheduler).__name__}")
    return dict(config)


def _scheduler(scheduler):
    """A scheduler object: itself, or one built from a config dict (its `_class_name`, else DDPMScheduler)."""
    if hasattr(scheduler, "alphas_cumprod"):
        return scheduler
    config = _config(scheduler)
    diffusers = require_diffusers()
    name = config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"unknown scheduler class {name!r} in the config; expected a diffusers scheduler class name")
    return cls.from_config(config)


def sde_from_scheduler(scheduler) -> DiscreteVPSDE:
    """The `DiscreteVPSDE` of a diffusers scheduler (object, config or config dict).

    Built from the scheduler's own float32 `alphas_cumprod` (whatever its beta_schedule: "linear",
    "scaled_linear", "squaredcos_cap_v2" or trained_betas), so alpha(t)^2 at t = (n + 1)/N equals
    alphas_cumprod[n] to float64 round-off. Zero terminal SNR (rescale_betas_zero_snr) is refused:
    its last alphas_cumprod is 0, an infinite noise level no Gaussian prior reaches.
    """
    config = _config(scheduler)
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=True gives alphas_cumprod[-1] = 0 (infinite noise); "
                         "DiscreteVPSDE needs 0 < alphas_cumprod < 1: use a scheduler without it")
    abar = torch.as_tensor(_scheduler(scheduler).alphas_cumprod).detach().to("cpu", torch.float64)
    return DiscreteVPSDE(alphas_cumprod=abar)


def prediction_from_scheduler(scheduler) -> str:
    """scoresde's prediction kind for the scheduler's prediction_type ("epsilon" -> "eps", ...)."""
    kind = _config(scheduler).get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {kind!r}; choose one of {sorted(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[kind]


def diffusers_timestep(sde: DiscreteVPSDE, t: Tensor) -> Tensor:
    """diffusers' timestep for continuous times t (B,): t N - 1, float64.

    Within 4 N float-epsilons of t's dtype of an integer it is that integer (a float32 grid time
    cannot hold (n + 1)/N exactly; 5e-4 timesteps for float32 and N = 1000), so the network sees
    diffusers' integer timesteps at the knots and a fractional one between them.
    """
    n = sde.timestep(t.to(torch.float64))
    tol = 4 * sde.N * torch.finfo(t.dtype).eps
    nearest = torch.round(n)
    return torch.where((n - nearest).abs() <= tol, nearest, n)


class DiffusersUNet(nn.Module):
    """A diffusers UNet (e.g. `UNet2DModel`) as net(x, timestep[, y]) -> tensor.

    y: class labels, passed as `class_labels` (a class-conditional UNet2DModel, num_class_embeds set).
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, timestep: Tensor, y: Tensor | None = None) -> Tensor:
        kwargs = {} if y is None else {"class_labels": y}
        return self.unet(x, timestep, return_dict=False, **kwargs)[0]


def _learned_variance(scheduler) -> bool:
    variance_type = _config(scheduler).get("variance_type", "fixed_small")
    if variance_type == "learned":
        raise ValueError("variance_type='learned' (a raw variance output) is not supported; "
                         "'learned_range' (Improved DDPM's interpolation) and the fixed types are")
    return variance_type == "learned_range"


def from_diffusers(unet: nn.Module, scheduler, *, prediction: str | None = None) -> ScoreModel:
    """A `ScoreModel` for a diffusers UNet and its scheduler (object, config or config dict).

    The SDE is `sde_from_scheduler(scheduler)`, the prediction the scheduler's prediction_type
    (or `prediction`), the time input diffusers' timestep (`diffusers_timestep`). A scheduler
    with variance_type "learned_range" gives a learned-variance model (solver "ddpm_learned").
    Class-conditional UNets take labels: model.eps(x, t, y). The model's `image_shape` is the UNet's
    (in_channels, sample_size) when its config has them. Needs the `diffusers` extra only for a
    scheduler given as a config (a dict, or an object without `alphas_cumprod`).
    """
    sde = sde_from_scheduler(scheduler)
    prediction = prediction_from_scheduler(scheduler) if prediction is None else prediction
    model = ScoreModel(DiffusersUNet(unet), sde, prediction, c_noise=partial(diffusers_timestep, sde),
                       learned_variance=_learned_variance(scheduler))
    shape = _image_shape(getattr(unet, "config", {}))
    if shape is not None:
        model.image_shape = shape  # what scoresde.sample(model, n=...) draws
    return model


def _image_shape(config) -> tuple[int, int, int] | None:
    """(C, H, W) from a UNet config's in_channels and sample_size (an int or (H, W)), if it has them."""
    size, channels = config.get("sample_size"), config.get("in_channels")
    if channels is None or size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return (int(channels), int(height), int(width))


@dataclass(frozen=True)
class DiffusersModel:
    """What `load_diffusers` returns: the scoresde model, the diffusers UNet and its scheduler."""

    model: ScoreModel
    unet: nn.Module
    scheduler: Any


# the classes `load_diffusers` builds from a saved config's `_class_name` (never an arbitrary attribute)
SUPPORTED_UNETS = ("UNet2DModel",)
SUPPORTED_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler")  # grids and loading


def _class_name(folder: str, filename: str, default: str, choices: tuple[str, ...]) -> str:
    """The config's `_class_name` (default where the file or the key is absent), one of `choices`, else ValueError."""
    path = os.path.join(folder, filename)
    if not os.path.isfile(path):
        return default
    with open(path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object (a diffusers config), got a {type(config).__name__}")
    name = config.get("_class_name", default)
    if name not in choices:
        raise ValueError(f"{path}: unsupported _class_name {name!r}"[:300] + f"; choose one of {list(choices)}")
    return name


def load_diffusers(path: str | os.PathLike, *, unet_subfolder: str | None = "unet",
                   scheduler_subfolder: str | None = "scheduler", local_files_only: bool = True,
                   torch_dtype: torch.dtype | None = None) -> DiffusersModel:
    """Load a diffusers UNet and scheduler saved with `save_pretrained` and wrap them (`from_diffusers`).

    path: a pipeline folder (`unet/`, `scheduler/`, as `DDPMPipeline.save_pretrained` writes) or, with
    unet_subfolder / scheduler_subfolder None, a folder holding the files themselves. The classes
    come from the saved configs' `_class_name` (UNet2DModel, DDPMScheduler by default), one of
    SUPPORTED_UNETS / SUPPORTED_SCHEDULERS, else ValueError. Weights are read from .safetensors only
    (a .bin pickle could run code when loaded): a folder without one raises ValueError.
    local_files_only=True (the default) never downloads: a missing file raises.
    """

    diffusers = require_diffusers()
    path = os.fspath(path)
    unet_dir = path if unet_subfolder is None else os.path.join(path, unet_subfolder)
    sched_dir = path if scheduler_subfolder is None else os.path.join(path, scheduler_subfolder)
    if not os.path.isdir(unet_dir):
        raise ValueError(f"no UNet folder {unet_dir!r}; pass the folder save_pretrained wrote (unet_subfolder=None "
                         "for a UNet saved on its own)")
    unet_cls = getattr(diffusers, _class_name(unet_dir, "config.json", "UNet2DModel", SUPPORTED_UNETS))
    sched_cls = getattr(diffusers, _class_name(sched_dir, "scheduler_config.json", "DDPMScheduler", SUPPORTED_SCHEDULERS))
    dtype = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    if not any(f.endswith(".safetensors") for f in os.listdir(unet_dir)):
        raise ValueError(f"no .safetensors weights in {unet_dir!r}: load_diffusers reads safetensors only (a .bin "
                         "pickle could run code); convert it with save_pretrained(..., safe_serialization=True)")
    # low_cpu_mem_usage=False: the plain load, which needs no `accelerate`; use_safetensors=True: never a pickle
    unet = unet_cls.from_pretrained(unet_dir, local_files_only=local_files_only, low_cpu_mem_usage=False,
                                    use_safetensors=True, **dtype)
    scheduler = sched_cls.from_pretrained(sched_dir, local_files_only=local_files_only)
    unet.eval()
    return DiffusersModel(model=from_diffusers(unet, scheduler), unet=unet, scheduler=scheduler)


def scheduler_betas(sde: SDE, num_train_timesteps: int | None = None) -> Tensor:
    """Betas (N,) float64 of a VP process on the knots t_n = (n + 1) T / N: for diffusers' `trained_betas`.

    alphas_cumprod[n] = alpha(t_n)^2; a `DiscreteVPSDE` gives its own betas (N defaults to sde.N;
    1000 for other processes). Pair with `DiffusersStyleUNet(model, num_train_timesteps=N)`.
    """
    if getattr(sde, "kind", None) != "vp":
        raise ValueError(f"diffusers' schedulers assume a variance-preserving process; got kind {getattr(sde, 'kind', None)!r}")
    N = _steps(sde, num_train_timesteps)
    t = torch.arange(1, N + 1, dtype=torch.float64) * (float(sde.T) / N)
    abar = sde.alpha(t).to(torch.float64) ** 2
    return 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])


def _steps(sde: SDE, num_train_timesteps: int | None) -> int:
    if num_train_timesteps is None:
        return sde.N if isinstance(sde, DiscreteVPSDE) else 1000
    return check_int("num_train_timesteps", num_train_timesteps, 2)


@dataclass(frozen=True)
class UNetOutput:
    """The output of `DiffusersStyleUNet` with return_dict=True, like diffusers' `UNet2DOutput`."""

    sample: Tensor


class DiffusersStyleUNet:
    """A scoresde model called like a diffusers UNet: (sample, timestep, class_labels=None) -> `.sample`.

    timestep n (an int or a (B,) / 0-d tensor, maybe fractional) is time t = (n + 1) T / N; the output
    is the model's prediction of kind `prediction_type` ("epsilon", "v_prediction" or "sample").
    Run a diffusers scheduler built with trained_betas=scheduler_betas(model.sde, N) over it.
    """

    def __init__(self, model, *, prediction_type: str = "epsilon", num_train_timesteps: int | None = None):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {sorted(PREDICTION_TYPES)}")
        self.model = model
        self.prediction_type = prediction_type
        self.num_train_timesteps = _steps(model.sde, num_train_timesteps)

    def __call__(self, sample: Tensor, timestep, class_labels: Tensor | None = None, return_dict: bool = True):
        n = torch.as_tensor(timestep, device=sample.device).to(torch.float64).reshape(-1)
        t = ((n + 1) * (float(self.model.sde.T) / self.num_train_timesteps)).expand(sample.shape[0])
        predict = getattr(self.model, PREDICTION_TYPES[self.prediction_type])
        labels = {} if class_labels is None else {"y": class_labels}
        out = predict(sample, t.to(sample.dtype), **labels)
        return UNetOutput(out) if return_dict else (out,)
