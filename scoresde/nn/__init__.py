"""Score networks: the DDPM++ U-Net (architecture only) and its presets.

    from scoresde.nn import UNet, ddpmpp_cifar10, digits
    net = UNet(digits())                       # net(x, c_noise, y=None) -> tensor of x's shape
"""

from .dit import DIT_PRESETS, DiT, DiTConfig, dit_preset  # noqa: F401  (the transformer backbone, docs/backbones.md)
from .layers import AttnBlock, FourierEmbedding, PositionalEmbedding, ResBlock
from .unet import PRESETS, UNet, UNetConfig, count_parameters, ddpmpp_cifar10, digits, preset

__all__ = [
    "AttnBlock", "FourierEmbedding", "PRESETS", "PositionalEmbedding", "ResBlock", "UNet", "UNetConfig",
    "count_parameters", "ddpmpp_cifar10", "digits", "preset",
]
