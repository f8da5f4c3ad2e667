"""Building blocks of the DDPM++ U-Net: noise embeddings, residual blocks with FiLM, attention.

Shapes: feature maps are (B, C, H, W); the noise input c_noise and class labels are (B,); the
embedding `emb` that conditions every residual block is (B, E).

Sources: DDPM++ (Song et al. 2021, arXiv:2011.13456, App. H; `ncsnpp.py` with
resblock_type="biggan"), BigGAN residual up/down blocks (Brock et al. 2019, arXiv:1809.11096),
FiLM (Perez et al. 2018, arXiv:1709.07871) as used by Dhariwal & Nichol (2021, arXiv:2105.05233,
"adaptive group normalization"), random Fourier features (Tancik et al. 2020, arXiv:2006.10739).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SKIP_SCALE = 1.0 / math.sqrt(2.0)  # DDPM++ "skip_rescale": (x + h) / sqrt(2)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(C // 4, 32) groups as in DDPM++ (`ncsnpp.py`), or the largest divisor of C below that."""
    groups = max(1, min(channels // 4, 32))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias in place (the residual branch starts as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar (Vaswani et al. 2017; DDPM's timestep embedding).

    c (B,) -> (B, dim): [sin(scale c w_i), cos(scale c w_i)] with w_i = max_period^(-i / (dim/2 - 1)),
    frequencies from 1 down to 1 / max_period. With scale = 1 and c = log(sigma / alpha) (about
    [-6.9, 5.0] for VP) every feature is low-frequency; c = 999 t needs the full frequency range.
    """

    def __init__(self, dim: int, *, scale: float = 1.0, max_period: float = 10000.0):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / (half - 1))
        self.register_buffer("freqs", (scale * freqs).to(torch.float32), persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        arg = c.to(torch.float32)[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [sin(2 pi w c), cos(2 pi w c)], w ~ N(0, scale^2), fixed (B,) -> (B, dim).

    The frequencies are a persistent buffer (saved in checkpoints). NCSN++ uses scale 16 on
    log(sigma); for a low-frequency time input use a scale near 1 / (range of c).
    """

    def __init__(self, dim: int, *, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if dim % 2 or dim < 2:
            raise ValueError(f"embedding dim must be even and >= 2, got {dim}")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", scale * torch.randn(dim // 2, generator=gen))

    def forward(self, c: Tensor) -> Tensor:
        arg = (2 * math.pi) * c.to(torch.float32)[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def resample(x: Tensor, mode: str) -> Tensor:
    """Nearest-neighbour 2x upsampling ("up"), 2x2 average pooling ("down") or nothing ("none")."""
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    if mode == "down":
        return F.avg_pool2d(x, 2)
    return x


class ResBlock(nn.Module):
    """BigGAN-style residual block of DDPM++ with FiLM conditioning; optionally resamples 2x.

    h = conv0(resample(act(norm0(x)))); h = act(norm1(h) (1 + scale) + shift) with
    (scale, shift) = Linear(act(emb)); h = conv1(dropout(h)); out = (skip(resample(x)) + h) / sqrt(2).
    With film=False the embedding is added as a per-channel bias before norm1 (exactly DDPM++).
    conv1 starts at zero, so each block starts as the (rescaled) identity.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, dropout: float = 0.0,
                 resample: str = "none", film: bool = True):
        super().__init__()
        self.resample = resample
        self.film = film
        self.norm0 = group_norm(in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch if film else out_ch)
        nn.init.zeros_(self.emb.bias)
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch or resample != "none" else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.silu(self.norm0(x))
        h = self.conv0(resample(h, self.resample))
        x = resample(x, self.resample)
        e = self.emb(F.silu(emb))[:, :, None, None].to(h.dtype)
        if self.film:
            scale, shift = e.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + e))
        h = self.conv1(self.dropout(h))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) * SKIP_SCALE


class AttnBlock(nn.Module):
    """Single-head self-attention over the H x W positions (DDPM's AttnBlock), skip rescaled."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        # (B, 1 head, HW, C); softmax(q k^T / sqrt(C)) v
        h = F.scaled_dot_product_attention(q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None],
                                           v.transpose(1, 2)[:, None])
        h = h[:, 0].transpose(1, 2).reshape(B, C, H, W)
        return (x + self.proj(h)) * SKIP_SCALE
