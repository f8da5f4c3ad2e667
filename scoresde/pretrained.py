"""Shipped default models: digits score models, one per SDE, stored in the package as safetensors.

A shipped file holds the EMA weights of a training checkpoint in float16 (each file stays under
4 MB) and, as JSON metadata, the training configuration, the U-Net configuration, the SDE and the
training step. Loading reads tensors and JSON only: nothing is unpickled, no code runs. Weights are
cast back to float32 on load, so the shipped model is exactly the network those float16 weights
define. `examples/train_digits.py` retrains each file from a fixed seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .files import atomic_write, read_safetensors
from .nn import UNet, UNetConfig
from .param import ScoreModel

__all__ = ["ASSETS", "CONDITIONAL_MODELS", "DEFAULT_MODELS", "default_model", "export_model", "load_pretrained"]

ASSETS = Path(__file__).parent / "assets"
# sde name (as in scoresde.sample) -> file in ASSETS
DEFAULT_MODELS = {"vp": "digits_vp.safetensors", "subvp": "digits_subvp.safetensors", "ve": "digits_ve.safetensors"}
# class-conditional models (a learned null class; used when scoresde.sample gets labels y and no model)
CONDITIONAL_MODELS = {"vp": "digits_vp_cond.safetensors"}
FORMAT = "scoresde-pretrained-1"


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write the EMA weights of a training checkpoint, cast to `dtype`, with its configuration (atomic)."""
    from safetensors.torch import save_file

    from .train import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    tensors = {k: v.to(dtype).contiguous() for k, v in ckpt.ema.items()}
    meta = {
        "format": FORMAT,
        "step": str(ckpt.step),
        "config": json.dumps(ckpt.config.to_dict()),
        "unet_config": json.dumps(ckpt.unet_config.to_dict()),
        "sde": json.dumps(ckpt.sde_config),
    }
    out = Path(out)
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=meta), mode=0o644)  # a package file
    return out


def load_pretrained(path: str | os.PathLike, *, device=None) -> ScoreModel:
    """A ScoreModel (eval mode, float32) over a file written by `export_model`.

    The model carries `image_shape` (C, H, W), `config` (the TrainConfig as a dict), `step`, and
    `null_label`: the label the network reads as "no class" (its class count K) for a
    class-conditional model, None otherwise.
    """
    from .train import TrainConfig, build_sde

    tensors, meta = read_safetensors(path, fmt=FORMAT, what="pretrained model")
    tensors = {k: v.to(torch.float32) for k, v in tensors.items()}
    config = TrainConfig.from_dict(json.loads(meta["config"]))
    unet_config = UNetConfig.from_dict(json.loads(meta["unet_config"]))
    net = UNet(unet_config)
    net.load_state_dict(tensors)
    net = net.to(device).eval().requires_grad_(False)
    model = ScoreModel(net, build_sde(config), config.prediction, c_noise=config.c_noise,
                       learned_variance=unet_config.learn_variance)
    model.image_shape = (unet_config.in_channels, unet_config.image_size, unet_config.image_size)
    model.config = config.to_dict()
    model.step = int(meta["step"])
    model.null_label = unet_config.num_classes
    return model


def default_model(sde: str, *, conditional: bool = False, device=None) -> ScoreModel:
    """The shipped digits model trained with `sde` ("vp", "subvp" or "ve"); `conditional`: the
    class-conditional one (labels 0..9, null label 10; shipped for "vp")."""
    table = CONDITIONAL_MODELS if conditional else DEFAULT_MODELS
    available = {name: file for name, file in table.items() if (ASSETS / file).is_file()}
    if sde not in available:
        kind = "class-conditional " if conditional else ""
        raise ValueError(
            f"no shipped {kind}default model for sde {sde!r}; shipped: {sorted(available)}; "
            "or pass model=... (e.g. scoresde.load_model('checkpoint.safetensors'))"
        )
    return load_pretrained(ASSETS / available[sde], device=device)
