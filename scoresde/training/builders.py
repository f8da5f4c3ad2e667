"""What a run's TrainConfig builds: its forward process, its network configuration (U-Net or DiT) and network, and an
SR run's stage."""

from __future__ import annotations

from torch import nn

from ..augment import augment_dim
from ..nn import DiTConfig, UNetConfig, dit_preset, preset
from ..sde import SDE
from ..sde_names import SDE_TABLE, make_sde
from .config import NET_KINDS, TrainConfig, net_kind

__all__ = ["build_net", "build_net_config", "build_sde", "build_sr_stage", "net_config_diff", "net_kind_of"]


def build_sde(config: TrainConfig) -> SDE:
    """The forward process named by config.sde, with the config's schedule parameters (SDE_TABLE)."""
    _, _, params = SDE_TABLE[config.sde]
    return make_sde(config.sde, **{name: getattr(config, name) for name in params})


def net_kind_of(net_config: UNetConfig | DiTConfig) -> str:
    """The backbone kind ("unet" or "dit") of a network configuration."""
    for kind, (cls, _) in NET_KINDS.items():
        if isinstance(net_config, cls):
            return kind
    raise TypeError(f"expected a UNetConfig or DiTConfig, got {type(net_config).__name__}")


def build_sr_stage(config: TrainConfig, net: nn.Module, sde: SDE, image_shape: tuple[int, int, int]):
    """The SRStage (scoresde.latent.cascade) of an SR run (config.sr_factor > 1) over `net` (a backbone with
    2C input and C output channels) for high-resolution images of `image_shape` (C, H, W)."""
    from ..latent.sr_stage import SRStage

    return SRStage(net, sde, image_shape, config.sr_factor, prediction=config.prediction, c_noise=config.c_noise)


def build_net(net_config: UNetConfig | DiTConfig) -> nn.Module:
    """The network a configuration describes: UNet(UNetConfig) or DiT(DiTConfig)."""
    return NET_KINDS[net_kind_of(net_config)][1](net_config)


def build_net_config(config: TrainConfig, shape: tuple[int, int, int], num_classes: int | None, *,
                     latent_shape: tuple[int, int, int] | None = None) -> UNetConfig | DiTConfig:
    """The network configuration of a run: config.net's preset (a UNetConfig or a DiTConfig) with
    net_options, for data images of `shape` (C, H, W) (pooled by config.downsample) with `num_classes` labels
    (None: unlabelled data); a latent run's network works on its VAE's `latent_shape` (c, h, w) instead."""
    C, H, W = shape
    if H != W:
        raise ValueError(f"net {config.net!r} needs square images, got {H}x{W}")
    if H % config.downsample:
        raise ValueError(f"downsample {config.downsample} must divide the image size {H}")
    H = W = H // config.downsample
    if latent_shape is not None:
        C, H, W = latent_shape
        if H != W:
            raise ValueError(f"net {config.net!r} needs square latents, got {H}x{W}")
    sr = {}
    if config.sr_factor > 1:  # an SR stage: x_t and the upsampled condition in, the prediction out
        if H % config.sr_factor:
            raise ValueError(f"sr_factor {config.sr_factor} must divide the image size {H}")
        sr = {"in_channels": 2 * C, "out_channels": C}
    if config.conditional and num_classes is None:
        raise ValueError(f"conditional=True but data {config.data!r} has no labels (use class_subfolders)")
    make = dit_preset if net_kind(config.net) == "dit" else preset
    return make(config.net, **{**config.net_options, "image_size": H, "in_channels": C,
                               "num_classes": num_classes if config.conditional else None,
                               "learn_variance": config.learn_variance,
                               "augment_dim": 1 if sr else augment_dim(config.augment), **sr})


def net_config_diff(a: UNetConfig | DiTConfig, b: UNetConfig | DiTConfig) -> list[str]:
    """The fields in which two network configurations of one kind differ, as "field: a -> b", dropout aside (no
    weight depends on it, so weights move between such networks)."""
    a, b = a.to_dict(), b.to_dict()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a) if a[k] != b[k] and k != "dropout"]
