"""Every model file the project writes and reads: training checkpoints and exported (shipped) models.

Both are safetensors files, written atomically (`scoresde.files.atomic_write`: a temporary file
renamed over the previous one, so an interrupted write leaves it intact) and read as tensors and
JSON only: nothing is unpickled, no code runs. The metadata's "format" entry tells them apart, and
`load_model` reads either.

- A training checkpoint (`save_checkpoint`, `load_checkpoint`; format "scoresde.train/1") holds the
  weights ("net.*"), their EMA ("ema.*"), the optimizer state ("opt.<i>.<key>") and, for the hybrid
  loss, its timestep history ("loss_history.values", "loss_history.count"), for a consistency loss with a
  target network its weights ("target.*"), for a latent run (TrainConfig.vae) its VAE ("vae.*", float32, with
  metadata "vae": the VAEConfig and scale factor; exported files keep it too), as tensors, and in its
  metadata the step, the backbone ("net_kind": "unet" or "dit"; files without it hold a U-Net), the
  JSON of the TrainConfig, of the network's configuration ("unet_config", a UNetConfig, or
  "dit_config", a DiTConfig) and of the SDE, and the open log interval
  ("log_interval": its step count and every rank's loss sum, so that a resumed run logs the losses
  of the uninterrupted one; absent in older checkpoints, read as an empty interval). Next to it `train` keeps
  `config.json`, a readable copy of that configuration and step (`write_run_config`; never read back).
- An exported model (`export_model`, `load_pretrained`; format "scoresde-pretrained-1") holds the
  EMA weights of a checkpoint in float16 (each shipped file stays under 4 MB) with the same JSON
  metadata. Weights are cast back to float32 on load, so the model is exactly the network those
  float16 weights define. The shipped digits models (`default_model`, one per SDE, in `ASSETS`) are
  such files; `examples/train_digits.py` retrains each from a fixed seed. An exported model may also hold
  time grids fitted to it ("fitted_grids"; written and looked up by `scoresde.fitted_grids`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import fitted_grids
from ..files import atomic_write, read_safetensors, safetensors_format, write_safetensors
from ..losses import LossHistory
from ..latent.model import LatentModel
from ..latent.vae import VAE, vae_from_state
from ..param import ScoreModel
from ..sde import SDE
from .builders import build_net, build_sde, build_sr_stage, net_kind_of
from .config import CONSISTENCY_LOSSES, TrainConfig
from .consistency import consistency_model
from .file_meta import (
    MAX_RANKS, NetConfig, MAX_STEP, check_finite, check_weights, config_key, meta_configs, meta_json, meta_step, split_opt,
)

__all__ = [
    "ASSETS", "CASCADE_MODELS", "CHECKPOINT", "CONDITIONAL_MODELS", "DEFAULT_MODELS", "FEW_STEP_MODELS",
    "LATENT_MODELS", "FORMAT", "MODEL_DATA", "MODEL_KINDS", "PATCH_MODELS", "PRETRAINED_FORMAT", "Checkpoint",
    "LogInterval", "default_cascade", "default_model", "export_model", "load_checkpoint", "load_model", "load_pretrained", "load_sr_stage", "Pretrained", "read_pretrained",
    "save_checkpoint", "write_run_config",
]

CHECKPOINT = "checkpoint.safetensors"  # the file name in a run's out_dir
FORMAT = "scoresde.train/1"
PRETRAINED_FORMAT = fitted_grids.MODEL_FORMAT  # "scoresde-pretrained-1"
ASSETS = Path(__file__).parent.parent / "assets"
# sde name (as in scoresde.sample) -> file in ASSETS
DEFAULT_MODELS = {"vp": "digits_vp.safetensors", "subvp": "digits_subvp.safetensors", "ve": "digits_ve.safetensors"}
# class-conditional models (a learned null class; used when scoresde.sample gets labels y and no model)
CONDITIONAL_MODELS = {"vp": "digits_vp_cond.safetensors"}
# few-step models (consistency models of scoresde.fewstep, docs/few_step.md): kind -> {sde name: file in ASSETS}
FEW_STEP_MODELS = {"cd": {"vp": "digits_vp_cd.safetensors"}, "ect": {"vp": "digits_vp_ect.safetensors"}}
# the shipped models of the natural-image patches (16 x 16 RGB, docs/backbones.md), per SDE
PATCH_MODELS = {"vp": "patches16_vp.safetensors"}
# the shipped latent diffusion model of the 32 x 32 patches (a LatentModel; its file embeds the patch VAE,
# docs/latent.md), per SDE
LATENT_MODELS = {"vp": "patches32_latent_vp.safetensors"}
MODEL_KINDS = ("diffusion", *FEW_STEP_MODELS, "latent")  # default_model's kinds
MODEL_DATA = ("digits", "patches")  # default_model's data sets
# the shipped cascade of the 32 x 32 patches, per SDE: (base model of the patches pooled 4 x 4, 8 -> 32 SR stage)
CASCADE_MODELS = {"vp": ("patches8_base_vp.safetensors", "patches32_sr_vp.safetensors")}



def _metadata(fmt: str, step: int, config: TrainConfig, net_config: NetConfig, sde_config: dict) -> dict[str, str]:
    kind = net_kind_of(net_config)
    return {
        "format": fmt, "step": str(step), "config": json.dumps(config.to_dict()), "net_kind": kind,
        config_key(kind): json.dumps(net_config.to_dict()), "sde": json.dumps(sde_config),
    }


# --- training checkpoints ------------------------------------------------------------------------

@dataclass(frozen=True)
class LogInterval:
    """The log interval open at a checkpoint: `count` steps since the last metrics line and each
    rank's running loss sum over them (`loss_sums`, in rank order; float32 values, exact as floats)."""

    count: int
    loss_sums: tuple[float, ...]

    def to_json(self) -> str:
        return json.dumps({"count": self.count, "loss_sums": list(self.loss_sums)})


def _is_number(v) -> bool:
    """A JSON float, or an integer small enough to be one exactly."""
    return isinstance(v, float) or (type(v) is int and abs(v) <= 2**53)


def _meta_log_interval(path, meta: dict[str, str]) -> LogInterval:
    """The checkpoint's open log interval (empty when the file has none), checked, errors naming the file."""
    if "log_interval" not in meta:
        return LogInterval(0, ())
    d = meta_json(path, meta, "log_interval")
    count, sums = d.get("count"), d.get("loss_sums")
    if set(d) != {"count", "loss_sums"}:
        raise ValueError(f"{path}: metadata 'log_interval' must hold exactly 'count' and 'loss_sums', got {[k[:40] for k in sorted(d)[:5]]}")
    if not (isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= MAX_STEP):
        raise ValueError(f"{path}: metadata 'log_interval' count must be an integer in [0, {MAX_STEP}], got {str(count)[:40]}")
    if not (isinstance(sums, list) and len(sums) <= MAX_RANKS and all(_is_number(v) for v in sums)):
        raise ValueError(f"{path}: metadata 'log_interval' loss_sums must be a list of at most {MAX_RANKS} numbers")
    if (count == 0) != (len(sums) == 0):
        raise ValueError(f"{path}: metadata 'log_interval' has count {count} and {len(sums)} loss sums "
                         "(both zero or both positive)")
    return LogInterval(count, tuple(float(v) for v in sums))


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: step, configs (net_config: the network's, a UNetConfig or a DiTConfig), and
    CPU state dicts (opt: the optimizer's `state` by param index; loss_history: the hybrid loss's
    `LossHistory.state_dict()`, empty for other losses), the open log interval (`LogInterval`;
    empty when the file has none), the target network of a consistency loss (empty when it has none) and the
    VAE of a latent run (config.vae; None otherwise)."""

    step: int
    config: TrainConfig
    net_config: NetConfig
    sde_config: dict
    net: dict[str, Tensor]
    ema: dict[str, Tensor]
    opt: dict[int, dict[str, Tensor]]
    loss_history: dict[str, Tensor] = field(default_factory=dict)
    log_interval: LogInterval = field(default_factory=lambda: LogInterval(0, ()))
    target: dict[str, Tensor] = field(default_factory=dict)
    vae: VAE | None = None

    @property
    def net_kind(self) -> str:
        """The backbone: "unet" or "dit"."""
        return net_kind_of(self.net_config)

    @property
    def unet_config(self) -> NetConfig:
        """`net_config` under its name from before the DiT (a DiTConfig for a DiT checkpoint)."""
        return self.net_config


VAE_PREFIX = "vae."  # the tensors of a latent run's VAE, in its checkpoints and exported files


def _vae_parts(vae: VAE) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors (float32, "vae.*") and metadata entry ("vae": its configuration and scale factor) of a VAE."""
    tensors = {VAE_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous() for k, v in vae.state_dict().items()}
    return tensors, {"vae": json.dumps({"config": vae.config.to_dict(), "scale_factor": vae.scale_factor})}


def _split_vae(path, config: TrainConfig, tensors: dict[str, Tensor], meta: dict[str, str]) -> tuple[dict, VAE | None]:
    """(the tensors without the VAE's, the VAE or None) of a file's tensors and metadata; the VAE must be
    there exactly when config.vae is set, with a computed scale factor."""
    rest = {k: v for k, v in tensors.items() if not k.startswith(VAE_PREFIX)}
    weights = {k[len(VAE_PREFIX):]: v for k, v in tensors.items() if k.startswith(VAE_PREFIX)}
    if config.vae is None:
        if weights or "vae" in meta:
            raise ValueError(f"{path}: VAE tensors or metadata in the file of a run without vae")
        return rest, None
    if not weights or "vae" not in meta:
        raise ValueError(f"{path}: the file of a latent run (vae {config.vae!r}) holds no VAE")
    d = meta_json(path, meta, "vae")
    if set(d) != {"config", "scale_factor"} or not isinstance(d["config"], dict) or not _is_number(d["scale_factor"]):
        raise ValueError(f"{path}: metadata 'vae' must be {{'config': {{...}}, 'scale_factor': a number}}")
    return rest, vae_from_state(f"{path}: VAE", d["config"], float(d["scale_factor"]), weights)


def save_checkpoint(path: str | os.PathLike, *, step: int, config: TrainConfig, net_config: NetConfig,
                    sde: SDE, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                    loss_history: LossHistory | None = None, log_interval: LogInterval | None = None,
                    target: nn.Module | None = None, vae: VAE | None = None) -> None:
    """Write a training checkpoint atomically (module docstring); log_interval: the log interval open
    at `step` (None: an empty one); target: a consistency run's target network (None: it has none); vae: a
    latent run's VAE (None: not a latent run)."""
    tensors = {}
    modules = (("net", net), ("ema", ema)) + ((("target", target),) if target is not None else ())
    for prefix, module in modules:
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().to("cpu").contiguous()
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).detach().to("cpu").contiguous()
    if loss_history is not None:
        for k, v in loss_history.state_dict().items():
            tensors[f"loss_history.{k}"] = v.contiguous()
    meta = _metadata(FORMAT, step, config, net_config, sde.config())
    meta["log_interval"] = (LogInterval(0, ()) if log_interval is None else log_interval).to_json()
    if vae is not None:
        vae_tensors, vae_meta = _vae_parts(vae)
        tensors.update(vae_tensors)
        meta.update(vae_meta)
    write_safetensors(path, tensors, meta)  # atomic, with a SHA-256 digest (checked on read)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by `train` (tensors and JSON only; nothing is unpickled)."""
    tensors, meta = read_safetensors(path, fmt=FORMAT, what="checkpoint")
    step = meta_step(path, meta)
    config, net_config, sde_config = meta_configs(path, meta)
    tensors, vae = _split_vae(path, config, tensors, meta)
    net = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    opt = split_opt(path, tensors)
    history = {k[len("loss_history."):]: v for k, v in tensors.items() if k.startswith("loss_history.")}
    target = {k[len("target."):]: v for k, v in tensors.items() if k.startswith("target.")}
    unknown = sorted(k for k in tensors if not k.startswith(("net.", "ema.", "opt.", "loss_history.", "target.")))
    if unknown:
        raise ValueError(f"{path}: unexpected tensor(s) {[k[:80] for k in unknown[:5]]} in a checkpoint")
    check_weights(path, net_config, net, "net")
    check_weights(path, net_config, ema, "ema")
    if target:
        check_weights(path, net_config, target, "target")
    check_finite(path, {f"opt.{i}.{k}": v for i, d in opt.items() for k, v in d.items()}, "optimizer")
    check_finite(path, history, "loss_history")
    counters = {**{f"opt.{i}.step": d["step"] for i, d in opt.items() if "step" in d},
                **{f"loss_history.{k}": v for k, v in history.items() if k == "count"}}
    for k, v in counters.items():
        if v.numel() and bool((v < 0).any()):
            raise ValueError(f"{path}: counter {k!r} is negative")
    return Checkpoint(step=step, config=config, net_config=net_config, sde_config=sde_config,
                      net=net, ema=ema, opt=opt, loss_history=history, log_interval=_meta_log_interval(path, meta),
                      target=target, vae=vae)


def write_run_config(out_dir: str | os.PathLike, *, step: int, config: TrainConfig, net_config: NetConfig,
                     sde: SDE) -> None:
    """Write `config.json` in out_dir (atomic): the run's configurations and step, for people to read."""
    kind = net_kind_of(net_config)
    meta = {"step": step, "config": config.to_dict(), "net_kind": kind, config_key(kind): net_config.to_dict(),
            "sde": sde.config()}
    atomic_write(Path(out_dir) / "config.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))


# --- exported and shipped models -----------------------------------------------------------------

def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write the EMA weights of a training checkpoint, cast to `dtype`, with its configuration (atomic); a latent
    run's VAE comes along in float32."""
    ckpt = load_checkpoint(checkpoint)
    tensors = {k: v.to(dtype).contiguous() for k, v in ckpt.ema.items()}
    meta = _metadata(PRETRAINED_FORMAT, ckpt.step, ckpt.config, ckpt.net_config, ckpt.sde_config)
    if ckpt.vae is not None:  # the VAE stays in float32: the decoder the latent model was trained with
        vae_tensors, vae_meta = _vae_parts(ckpt.vae)
        tensors.update(vae_tensors)
        meta.update(vae_meta)
    return write_safetensors(out, tensors, meta, mode=0o644)  # a package file


def _network(state: dict[str, Tensor], net_config: NetConfig, device) -> nn.Module:
    """The U-Net or DiT of `net_config` with weights `state`, on `device`, in eval mode, without gradients."""
    net = build_net(net_config)
    net.load_state_dict(state)
    return net.to(device).eval().requires_grad_(False)


def _score_model(path, state: dict[str, Tensor], config: TrainConfig, net_config: NetConfig, device,
                 vae: VAE | None = None) -> ScoreModel:
    """A ScoreModel (eval mode, no gradients) over a U-Net or DiT with weights `state`, with the attributes
    image_shape (C, H, W), config (a dict), net_config and null_label (the class count of a conditional net,
    else None). A run of a consistency loss (config.loss "cd", "ct", "ect") gives a ConsistencyModel, a latent
    run (config.vae) a LatentModel over the ScoreModel and `vae` (image_shape then the images', latent_shape the
    latents'). The file of an SR stage (config.sr_factor > 1) is refused, naming `load_sr_stage`."""
    if config.sr_factor > 1:
        raise ValueError(f"{path} holds the super-resolution stage of a cascade (sr_factor {config.sr_factor}), "
                         "not a model of images alone: load it with scoresde.load_sr_stage")
    net = _network(state, net_config, device)
    if config.loss in CONSISTENCY_LOSSES:
        model = consistency_model(config, net, build_sde(config))
    else:
        model = ScoreModel(net, build_sde(config), config.prediction, c_noise=config.c_noise,
                           learned_variance=net_config.learn_variance)
    model.net_config = net_config
    model.image_shape = (net_config.in_channels, net_config.image_size, net_config.image_size)
    model.config = config.to_dict()
    model.null_label = net_config.num_classes
    model.fitted_grids = ()  # load_pretrained reads a model file's own
    if vae is not None:  # a latent run: the model over latents composed with its VAE
        latent = model
        model = LatentModel(latent, vae.to(device))
        model.net, model.net_config, model.config = latent.net, net_config, latent.config
        model.image_shape, model.fitted_grids = model.pixel_shape, ()
    return model


@dataclass(frozen=True)
class Pretrained:
    """What a file written by `export_model` holds: float32 network weights, configurations, step, metadata
    and a latent run's VAE (None otherwise)."""

    state: dict[str, Tensor]
    config: TrainConfig
    net_config: NetConfig
    step: int
    meta: dict[str, str]
    vae: VAE | None


def read_pretrained(path) -> Pretrained:
    """The contents of a file written by `export_model`, each checked (tensors and JSON only)."""
    tensors, meta = read_safetensors(path, fmt=PRETRAINED_FORMAT, what="pretrained model")
    step = meta_step(path, meta)
    config, net_config, _ = meta_configs(path, meta)
    tensors, vae = _split_vae(path, config, tensors, meta)
    check_weights(path, net_config, tensors, "model")
    return Pretrained({k: v.to(torch.float32) for k, v in tensors.items()}, config, net_config, step, meta, vae)


def load_pretrained(path: str | os.PathLike, *, device=None) -> ScoreModel:
    """A ScoreModel (eval mode, float32) over a file written by `export_model`.

    The model carries `image_shape` (C, H, W), `config` (the TrainConfig as a dict), `step`, and
    `null_label`: the label the network reads as "no class" (its class count K) for a
    class-conditional model, None otherwise.
    """
    file = read_pretrained(path)
    model = _score_model(path, file.state, file.config, file.net_config, device, file.vae)
    model.step = file.step
    if fitted_grids.META_KEY in file.meta:
        value = meta_json(path, file.meta, fitted_grids.META_KEY, list)
        model.fitted_grids = fitted_grids.from_json(str(path), value, model.sde)
    return model


def default_model(sde: str, *, conditional: bool = False, kind: str = "diffusion", data: str = "digits",
                  device=None) -> ScoreModel:
    """The shipped digits model trained with `sde` ("vp", "subvp" or "ve"); `conditional`: the
    class-conditional one (labels 0..9, null label 10; shipped for "vp"); `kind`: "diffusion" (default), or a
    few-step model made from the diffusion model (FEW_STEP_MODELS: "cd", consistency distillation, or "ect", easy
    consistency tuning; a ConsistencyModel, sampled with solver="consistency"), or "latent" (with data "patches": the latent diffusion model of the 32 x 32
    patches, LATENT_MODELS, a LatentModel whose samples are decoded images); `data`: "digits" (default), or
    "patches" for the shipped models of the natural-image patches (kind "diffusion": the 16 x 16 model,
    PATCH_MODELS: "vp"; unconditional)."""
    if data not in MODEL_DATA:
        raise ValueError(f"no shipped models of data {data!r}; choose one of {list(MODEL_DATA)}")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {list(MODEL_KINDS)}")
    if kind == "latent" and (data != "patches" or conditional):
        raise ValueError("the shipped latent model is an unconditional model of the 32 x 32 patches: use "
                         "data 'patches' and conditional=False with kind 'latent'")
    if kind != "diffusion" and conditional:
        raise ValueError(f"no class-conditional {kind!r} model is shipped; use kind 'diffusion' with conditional=True")
    if data == "patches" and (kind not in ("diffusion", "latent") or conditional):
        raise ValueError("the shipped patch models are unconditional: use kind 'diffusion' (16 x 16) or 'latent' "
                         "(32 x 32) and conditional=False with data 'patches'")
    table = LATENT_MODELS if kind == "latent" else PATCH_MODELS if data == "patches" else \
        FEW_STEP_MODELS[kind] if kind != "diffusion" else CONDITIONAL_MODELS if conditional else DEFAULT_MODELS
    available = {name: file for name, file in table.items() if (ASSETS / file).is_file()}
    if sde not in available:
        what = "class-conditional " if conditional else f"{kind!r} " if kind in FEW_STEP_MODELS else ""
        what += "latent " if kind == "latent" else "patch " if data == "patches" else ""
        raise ValueError(
            f"no shipped {what}default model for sde {sde!r}; shipped: {sorted(available)}; "
            "or pass model=... (e.g. scoresde.load_model('checkpoint.safetensors'))"
        )
    return load_pretrained(ASSETS / available[sde], device=device)


def default_cascade(sde: str = "vp", *, device=None) -> tuple[ScoreModel, nn.Module]:
    """The shipped cascade of the 32 x 32 natural-image patches (CASCADE_MODELS; docs/latent.md): (base, stage),
    the base a ScoreModel of the patches average-pooled 4 x 4 (8 x 8 images), the stage an 8 -> 32 SRStage
    (`load_sr_stage`); sample them with `scoresde.latent.cascade.sample_cascade(base, stage, ...)`."""
    available = {name: files for name, files in CASCADE_MODELS.items() if all((ASSETS / f).is_file() for f in files)}
    if sde not in available:
        raise ValueError(f"no shipped cascade for sde {sde!r}; shipped: {sorted(available)}; or load your own with "
                         "scoresde.load_model (base) and scoresde.load_sr_stage (SR stage)")
    base, stage = available[sde]
    return load_pretrained(ASSETS / base, device=device), load_sr_stage(ASSETS / stage, device=device)


def load_model(path: str | os.PathLike, *, ema: bool = True, device=None) -> ScoreModel:
    """A ScoreModel (in eval mode) over the EMA (or raw) weights of a checkpoint.

    path: a training checkpoint, or a model file written by `export_model` (the shipped models are
    such files; they hold the EMA weights only, so `ema` must stay True).
    The model also carries `image_shape` (C, H, W), the shape of one image it was trained on,
    `config` (the TrainConfig as a dict), `step` (the training step of its weights) and `null_label` (the class count K of a
    class-conditional net, which reads label K as "no class"; None otherwise).
    """
    if safetensors_format(path) == PRETRAINED_FORMAT:
        _check_ema(path, ema)
        return load_pretrained(path, device=device)
    ckpt = load_checkpoint(path)
    model = _score_model(path, ckpt.ema if ema else ckpt.net, ckpt.config, ckpt.net_config, device, ckpt.vae)
    model.step = ckpt.step
    return model


def _check_ema(path, ema: bool) -> None:
    if not ema:
        raise ValueError(f"{path} is an exported model: it holds the EMA weights only (ema=True)")


def load_sr_stage(path: str | os.PathLike, *, ema: bool = True, device=None):
    """The super-resolution stage (`scoresde.latent.cascade.SRStage`, eval mode) of a run with sr_factor > 1:
    its training checkpoint (EMA or raw weights) or a file written from it by `export_model`.

    The stage carries `config` (the TrainConfig as a dict), `net_config` and `step`; `image_shape` is that of
    the run's (high-resolution) images, `low_shape` that of its conditions. Any other model file is refused,
    naming `load_model`.
    """
    if safetensors_format(path) == PRETRAINED_FORMAT:
        _check_ema(path, ema)
        file = read_pretrained(path)
        state, config, net_config, step = file.state, file.config, file.net_config, file.step
    else:
        ckpt = load_checkpoint(path)
        state, config, net_config, step = ckpt.ema if ema else ckpt.net, ckpt.config, ckpt.net_config, ckpt.step
    if config.sr_factor == 1:
        raise ValueError(f"{path} holds a model of images (its run has sr_factor 1), not an SR stage: "
                         "load it with scoresde.load_model")
    C = net_config.in_channels // 2
    stage = build_sr_stage(config, _network(state, net_config, device), build_sde(config),
                           (C, net_config.image_size, net_config.image_size))
    stage.config, stage.net_config, stage.step = config.to_dict(), net_config, step
    return stage
