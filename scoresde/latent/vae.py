"""A KL-regularized convolutional VAE, the autoencoder of latent diffusion (Rombach et al. 2022, arXiv:2112.10752).

Encoder: images x (B, C, H, W) in [-1, 1] -> the mean and log-variance of a diagonal Gaussian posterior
q(z | x) over latents (B, c, H/f, W/f), f = 2^(len(ch_mult) - 1). Decoder: z -> images (B, C, H, W).
Layout (after the autoencoder of Rombach et al., App. G, smaller): conv_in, per level num_res_blocks
residual blocks (GroupNorm, SiLU, 3x3 conv, twice) and a stride-2 conv between levels, a residual block
at the bottom, GroupNorm, SiLU and a 3x3 conv to 2c channels; the decoder mirrors it with nearest
upsampling and a conv. No attention, no perceptual or adversarial loss (`vae_train`).

`encode(x)` is the posterior mean (deterministic: what `LatentModel` uses), `decode(z)` the decoder;
`scale_factor` (1 / std of the encoded training latents, `vae_train.compute_scale_factor`) is stored
with the model and applied by `LatentModel`; None while it is not computed (a save made before `train_vae`
finished), which `LatentModel` refuses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solvers.protocol import randn
from solvers.validate import check_number, dataclass_from_dict

from ..nn.config_common import bounded_int
from ..nn.layers import group_norm

__all__ = ["VAE", "VAEConfig", "kl_to_standard_normal", "psnr", "vae_from_state"]

LIMITS = {"image_size": 1024, "in_channels": 16, "latent_channels": 64, "ch": 1024, "levels": 6, "ch_mult": 16,
          "num_res_blocks": 8}


@dataclass(frozen=True)
class VAEConfig:
    """Configuration of `VAE`: image_size H = W, in_channels C, latent_channels c, ch base channels,
    ch_mult per level (f = 2^(levels - 1)), num_res_blocks per level."""

    image_size: int = 32
    in_channels: int = 3
    latent_channels: int = 4
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        for name in ("image_size", "in_channels", "latent_channels", "ch"):
            bounded_int(name, getattr(self, name), 1, LIMITS[name])
        bounded_int("num_res_blocks", self.num_res_blocks, 0, LIMITS["num_res_blocks"])
        if not self.ch_mult or len(self.ch_mult) > LIMITS["levels"] or any(
                isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= LIMITS["ch_mult"] for m in self.ch_mult):
            raise ValueError(f"ch_mult must be 1 to {LIMITS['levels']} integers in [1, {LIMITS['ch_mult']}], "
                             f"got {self.ch_mult!r}"[:300])
        if self.image_size % self.factor:
            raise ValueError(f"image_size {self.image_size} must be divisible by the downsampling factor {self.factor}")

    @property
    def factor(self) -> int:
        """The downsampling factor f = 2^(len(ch_mult) - 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, H/f, W/f)."""
        side = self.image_size // self.factor
        return (self.latent_channels, side, side)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        return dataclass_from_dict(cls, d)


class Block(nn.Module):
    """Residual block without time input: x + conv(SiLU(GN(conv(SiLU(GN(x)))))) (1x1 skip when widths differ)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per element, (B, *D), nats."""
    return 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar)


class VAE(nn.Module):
    """encode_posterior(x) -> (mean, logvar) (B, *latent_shape); encode(x) -> mean; decode(z) -> (B, *image_shape);
    forward(x, generator) -> (reconstruction, mean, logvar) with z = mean + exp(logvar / 2) e."""

    def __init__(self, config: VAEConfig, *, scale_factor: float | None = 1.0):
        super().__init__()
        self.config = cfg = config
        # None: not computed yet (a save before train_vae finished), which LatentModel refuses
        self.scale_factor = None if scale_factor is None else check_number("scale_factor", scale_factor, 0,
                                                                            low_open=True)
        widths = [cfg.ch * m for m in cfg.ch_mult]
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)]
        c = widths[0]
        for i, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                enc.append(Block(c, w))
                c = w
            if i != len(widths) - 1:
                enc.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        enc += [Block(c, c), group_norm(c), nn.SiLU(), nn.Conv2d(c, 2 * cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, c, 3, padding=1), Block(c, c)]
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(cfg.num_res_blocks):
                dec.append(Block(c, w))
                c = w
            if i != 0:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        dec += [group_norm(c), nn.SiLU(), nn.Conv2d(c, cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of an image."""
        return (self.config.in_channels, self.config.image_size, self.config.image_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, H/f, W/f) of a latent."""
        return self.config.latent_shape

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance (B, *latent_shape) of q(z | x) for x (B, *image_shape), in x's dtype."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}")
        mean, logvar = self.encoder(x.to(self._dtype())).chunk(2, dim=1)
        return mean.to(x.dtype), logvar.clamp(-30.0, 20.0).to(x.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean (B, *latent_shape): the deterministic encoding."""
        return self.encode_posterior(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        """Images (B, *image_shape) of latents z (B, *latent_shape), in z's dtype."""
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"z must have shape (B, {', '.join(map(str, self.latent_shape))}), got {tuple(z.shape)}")
        return self.decoder(z.to(self._dtype())).to(z.dtype)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction (B, *image_shape), mean, logvar (B, *latent_shape)) with one posterior draw."""
        mean, logvar = self.encode_posterior(x)
        # reparameterization (Kingma & Welling 2014, Eq. 10): z = mean + std * e
        z = mean + (0.5 * logvar).exp() * randn(mean.shape, generator=generator, device=x.device, dtype=mean.dtype)
        return self.decode(z), mean, logvar


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio (B,) in dB of images in [-1, 1] (peak-to-peak 2): 10 log10(4 / MSE)."""
    mse = (x - y).square().flatten(1).mean(1)
    return 10.0 * torch.log10(4.0 / mse.clamp(min=1e-20))




def vae_from_state(where: str, config: dict, scale_factor: float | None, weights: dict[str, Tensor]) -> VAE:
    """A VAE in eval mode from what a file holds: its configuration (a dict), scale factor (None: not computed)
    and weights (names without prefix), each checked; errors name `where` (the file)."""
    try:
        vae_config = VAEConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: not a valid VAEConfig ({' '.join(str(e).split())[:200]})") from None
    if not all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point()):
        raise ValueError(f"{where}: the VAE weights hold NaN or infinite values")
    try:
        vae = VAE(vae_config, scale_factor=scale_factor)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: VAE scale factor: {' '.join(str(e).split())[:200]}") from None
    try:
        vae.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{where}: the weights do not fit the recorded VAEConfig ({' '.join(str(e).split())[:300]})") from None
    if weights:
        vae = vae.to(next(iter(weights.values())).dtype)
    return vae.eval()
