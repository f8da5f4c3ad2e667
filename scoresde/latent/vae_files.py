"""VAE model files: safetensors (weights, optimizer moments) + JSON metadata, written atomically, read
without executing code (the conventions of `scoresde.training.checkpoints`, whose JSON reader and the
digest of `scoresde.files` are reused).

Metadata: format "scoresde-vae", "vae_config" (VAEConfig), "scale_factor" ("none" in a save made before
training finished: not computed yet, read as None), "step", "train_config" (the
training configuration, a JSON object, {} when none) and, for a resumable file, "opt_groups" (the
optimizer's hyper-parameters). Tensors: "vae.<name>" weights, "opt.<i>.<key>" Adam state per parameter.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..files import read_safetensors, write_safetensors
from ..training.checkpoints import ASSETS
from ..training.file_meta import MAX_STEP, meta_json
from .vae import VAE, vae_from_state

__all__ = ["DEFAULT_VAE", "FORMAT", "VAEFile", "default_vae", "load_vae", "read_vae_file", "save_vae"]

# the shipped patch VAE (f = 4, latents (4, 8, 8) of 32 x 32 RGB patches; docs/latent.md), a file in ASSETS; the
# shipped latent model's file embeds the same weights
DEFAULT_VAE = "patches32_vae.safetensors"

FORMAT = "scoresde-vae"


@dataclass(frozen=True)
class VAEFile:
    """What a VAE file holds: the model (scale_factor set), the training step, the training configuration
    (a dict) and the optimizer state dict (None when the file was saved without one)."""

    vae: VAE
    step: int
    train_config: dict
    optimizer_state: dict | None


def save_vae(path: str | os.PathLike, vae: VAE, *, step: int = 0, train_config: dict | None = None,
             optimizer: torch.optim.Optimizer | None = None, mode: int | None = None) -> Path:
    """Write vae (and the optimizer's state, for resuming) to `path` atomically; returns the path. mode: the
    file's permission bits (0o644 for a package asset), else the default."""
    tensors = {f"vae.{k}": v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
    meta = {"format": FORMAT, "vae_config": json.dumps(vae.config.to_dict()), "scale_factor": repr(vae.scale_factor).lower(),
            "step": str(int(step)), "train_config": json.dumps(train_config or {})}
    if optimizer is not None:
        state = optimizer.state_dict()
        for i, per_param in state["state"].items():
            for key, value in per_param.items():
                tensors[f"opt.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        meta["opt_groups"] = json.dumps(state["param_groups"])
    return write_safetensors(path, tensors, meta, mode=mode)


def _number(path, meta: dict[str, str], key: str, low: float, high: float) -> float:
    try:
        value = float(meta[key])
    except (KeyError, ValueError):
        raise ValueError(f"{path}: metadata {key!r} must be a number, got {str(meta.get(key))[:80]!r}") from None
    if not (math.isfinite(value) and low <= value <= high) or (key == "scale_factor" and value == 0):
        raise ValueError(f"{path}: metadata {key!r} must lie in [{low}, {high}]" + (" and be > 0" if key ==
                         "scale_factor" else "") + f", got {value!r}")
    return value


def _optimizer_state(path, tensors: dict[str, Tensor], meta: dict[str, str]) -> dict | None:
    if "opt_groups" not in meta:
        return None
    groups = meta_json(path, meta, "opt_groups", list)
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, index, key = name.split(".", 2)
            if not index.isdigit():
                raise ValueError(f"{path}: optimizer tensor {name!r} has no parameter index")
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": groups}


def read_vae_file(path: str | os.PathLike, *, device=None) -> VAEFile:
    """The VAE, step, training configuration and optimizer state of a file written by `save_vae`."""
    tensors, meta = read_safetensors(path, fmt=FORMAT, what="VAE file")
    scale = None if meta.get("scale_factor") == "none" else _number(path, meta, "scale_factor", 0.0, 1e12)
    step = int(_number(path, meta, "step", 0, MAX_STEP))
    weights = {k.removeprefix("vae."): v for k, v in tensors.items() if k.startswith("vae.")}
    vae = vae_from_state(str(path), meta_json(path, meta, "vae_config"), scale, weights)
    if device is not None:
        vae = vae.to(device)
    return VAEFile(vae.eval(), step, meta_json(path, meta, "train_config"), _optimizer_state(path, tensors, meta))


def load_vae(path: str | os.PathLike, *, device=None) -> VAE:
    """The VAE of a file written by `save_vae`, in eval mode, with its scale_factor (tensors and JSON only)."""
    return read_vae_file(path, device=device).vae


def default_vae(*, device=None) -> VAE:
    """The shipped VAE of the 32 x 32 natural-image patches (DEFAULT_VAE), with its scale factor."""
    return load_vae(ASSETS / DEFAULT_VAE, device=device)
