"""Diffusion Transformer (DiT, Peebles & Xie 2023, arXiv:2212.09748), architecture only: net(x, c_noise, y=None).

Like the U-Net (`scoresde.nn.unet`) the network knows nothing about SDEs: it maps images x
(B, C, H, W) and a per-sample noise input c_noise (B,) (whatever `ScoreModel(c_noise=...)` feeds
it) to a tensor of x's shape (twice the channels with learn_variance); `ScoreModel` says what that
tensor predicts.

Layout (the paper's Fig. 3, "adaLN-Zero" block; p the patch size, D the hidden size, T = (H/p)^2 tokens):

    h = PatchEmbed(x) + pos            PatchEmbed: Conv2d(C, D, kernel=stride=p) -> (B, T, D);
                                       pos: fixed 2-d sine-cosine embedding of the patch grid
    c = MLP(embed(c_noise)) [+ Embed(y)] [+ A a]      MLP: Linear(F, D), SiLU, Linear(D, D)
    depth x DiTBlock(h, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))      (starts at zero)
        h = h + gate1 * Attn(LN(h) (1 + scale1) + shift1)
        h = h + gate2 * MLP(LN(h) (1 + scale2) + shift2)                  MLP: D -> rD -> D, GELU(tanh)
    out = Linear(LN(h) (1 + scale) + shift), (shift, scale) = Linear(SiLU(c))   (both start at zero)
    unpatchify: (B, T, p p C_out) -> (B, C_out, H, W)

LN is a LayerNorm without affine parameters (eps 1e-6): the conditioning supplies scale and shift.
Every modulation and the final projection start at zero, so at initialization each block is the
identity and the network outputs zero ("adaLN-Zero", Sec. 3.2).

Class conditioning (num_classes=K) learns K + 1 label embeddings: label K is the null class used for
classifier-free guidance, and y=None means null (as in the U-Net). learn_variance doubles the
output channels: the prediction first, then Improved DDPM's raw variance output (read by
`ScoreModel(learned_variance=True)`). Augmentation conditioning (augment_dim=A) adds a bias-free
linear map of the (B, A) transformation vector to c, as in the U-Net.

Presets (`DIT_PRESETS`, parameter counts in docs/backbones.md): the paper's DiT-S, B, L, XL with patch
2, 4 or 8 for its ImageNet 256 latents (32 x 32 x 4, 1000 classes, learned variance), e.g. `dit_preset("dit_xl2")`;
small nets for the 8 x 8 digits (`dit_digits`) and 16 x 16 RGB patches (`dit_patches`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solvers.validate import check_name, check_number

from .config_common import NetConfig, bounded_int
from .layers import FourierEmbedding, PositionalEmbedding, zero_

__all__ = [
    "DIT_PRESETS", "SIZES", "DiT", "DiTBlock", "DiTConfig", "FinalLayer", "dit_digits", "dit_patches", "dit_preset",
    "imagenet_preset", "sincos_pos_embed_2d",
]

# Bounds on what a configuration (e.g. one read from a file) may ask for: far above any sensible net
# (DiT-XL: hidden 1152, depth 28, 16 heads), far below what exhausts memory.
LIMITS = {"image_size": 2048, "in_channels": 64, "out_channels": 64, "patch_size": 64, "hidden_size": 16384,
          "depth": 256, "num_heads": 256, "mlp_ratio": 64, "embedding_dim": 16384, "num_classes": 1_000_000,
          "augment_dim": 4096, "tokens": 65536}
LN_EPS = 1e-6


@dataclass(frozen=True)
class DiTConfig(NetConfig):
    """Configuration of `DiT`.

    image_size: H = W of the input; in_channels; out_channels (None: same as in_channels);
    patch_size: p, which must divide image_size (T = (image_size / p)^2 tokens); hidden_size: D,
    divisible by num_heads and by 4 (the 2-d sine-cosine position embedding gives D/2 to each axis,
    half sines, half cosines); depth: number of DiT blocks; num_heads: attention heads; mlp_ratio:
    the MLP's hidden width over D (4 in the paper); embedding: "positional" (sinusoidal) or
    "fourier" (random Fourier features) of c_noise with embedding_dim features (256 in the paper),
    scaled by embedding_scale (as in UNetConfig); num_classes: None for an unconditional net, else
    K (labels 0..K-1; label K is the learned null class); learn_variance: twice the output
    channels (the second half the raw variance output of Improved DDPM); augment_dim: length of the
    augmentation conditioning vector (0: none).
    """

    image_size: int = 32
    in_channels: int = 4
    out_channels: int | None = None
    patch_size: int = 2
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    embedding: Literal["positional", "fourier"] = "positional"
    embedding_dim: int = 256
    embedding_scale: float = 1.0
    num_classes: int | None = None
    learn_variance: bool = False
    augment_dim: int = 0

    LIMITS = LIMITS  # the module's bounds, for NetConfig.check_conditioning (a class attribute, not a field)

    def __post_init__(self):
        for name in ("image_size", "in_channels", "patch_size", "hidden_size", "depth", "num_heads"):
            bounded_int(name, getattr(self, name), 1, LIMITS[name])
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        tokens = (self.image_size // self.patch_size) ** 2
        if tokens > LIMITS["tokens"]:
            raise ValueError(f"image_size {self.image_size} with patch_size {self.patch_size} makes {tokens} tokens "
                             f"(at most {LIMITS['tokens']}); choose a larger patch_size")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by 4 "
                             "(the 2-d sine-cosine position embedding)")
        check_number("mlp_ratio", self.mlp_ratio, 0, LIMITS["mlp_ratio"], low_open=True)
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} gives an MLP of width {self.mlp_hidden}; it must be >= 1")
        bounded_int("embedding_dim", self.embedding_dim, 4, LIMITS["embedding_dim"])
        if self.embedding_dim % 2:
            raise ValueError(f"embedding_dim must be even, got {self.embedding_dim}")
        self.check_conditioning()

    @property
    def grid_size(self) -> int:
        """Patches along each side, image_size / patch_size."""
        return self.image_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        """Width of each block's MLP, int(hidden_size * mlp_ratio)."""
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of an input image."""
        return (self.in_channels, self.image_size, self.image_size)

    def parameter_count(self) -> int:
        """Number of trainable parameters of `DiT(self)`, counted from the layout (nothing is built).

        The fixed position embedding is a buffer, not a parameter (the official code keeps it as a
        frozen parameter, which its printed totals include: 256 x 1152 = 294,912 more for DiT-XL/2).
        """
        D, p, r = self.hidden_size, self.patch_size, self.mlp_hidden
        block = (3 * D * D + 3 * D) + (D * D + D) + (D * r + r) + (r * D + D) + (D * 6 * D + 6 * D)
        patch = self.in_channels * p * p * D + D
        noise = self.embedding_dim * D + D + D * D + D
        labels = 0 if self.num_classes is None else (self.num_classes + 1) * D
        final = (D * 2 * D + 2 * D) + (D * p * p * self.output_channels + p * p * self.output_channels)
        return patch + noise + labels + self.augment_dim * D + self.depth * block + final


def sincos_pos_embed_1d(dim: int, pos: Tensor) -> Tensor:
    """Sine-cosine embedding (Vaswani et al. 2017) of positions pos (N,), float64 -> (N, dim):
    [sin(pos w_i), cos(pos w_i)] with w_i = 10000^(-i / (dim / 2)), i = 0 .. dim/2 - 1."""
    half = dim // 2
    omega = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    arg = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_size: int) -> Tensor:
    """Fixed 2-d sine-cosine position embedding of a grid_size x grid_size patch grid, (T, dim) float64.

    Token k = i grid_size + j (row i, column j, the order of `DiT.patchify`) gets
    [emb_1d(dim / 2, i), emb_1d(dim / 2, j)] (the 2-d form of MAE, He et al. 2022, used by DiT).
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = coords.repeat_interleave(grid_size), coords.repeat(grid_size)
    return torch.cat([sincos_pos_embed_1d(dim // 2, rows), sincos_pos_embed_1d(dim // 2, cols)], dim=1)


def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Adaptive layer-norm modulation h (1 + scale) + shift; h (B, T, D), shift and scale (B, D)."""
    return h * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention over the tokens: (B, T, D) -> (B, T, D), qkv with bias."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, h: Tensor) -> Tensor:
        B, T, D = h.shape
        q, k, v = self.qkv(h).reshape(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(D / heads)) v per head
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (Peebles & Xie 2023, Sec. 3.2, Fig. 3):
    forward(h (B, T, D), c (B, D)) -> (B, T, D); the modulation starts at zero, so the block starts as
    the identity."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, dim))
        self.adaLN_modulation = zero_(nn.Linear(dim, 6 * dim))  # adaLN-Zero: shift = scale = gate = 0

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(F.silu(c)).chunk(6, dim=1)
        # DiT (Peebles & Xie 2023), Fig. 3: adaLN-Zero block, gates scale each residual branch
        h = h + gate1[:, None] * self.attn(modulate(self.norm1(h), shift1, scale1))
        return h + gate2[:, None] * self.mlp(modulate(self.norm2(h), shift2, scale2))


class FinalLayer(nn.Module):
    """Adaptive layer norm, then a linear map to p p C_out values per token: (B, T, D), (B, D) -> (B, T, p p C_out)."""

    def __init__(self, dim: int, patch_values: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.adaLN_modulation = zero_(nn.Linear(dim, 2 * dim))
        self.linear = zero_(nn.Linear(dim, patch_values))  # the output starts at zero

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(F.silu(c)).chunk(2, dim=1)
        return self.linear(modulate(self.norm(h), shift, scale))


class DiT(nn.Module):
    """Diffusion Transformer: forward(x (B, C, H, W), c_noise (B,), y (B,) int64 or None, augment_labels
    (B, A) or None) -> (B, C_out, H, W); see the module docstring."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        D, p = cfg.hidden_size, cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, D, kernel_size=p, stride=p)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, cfg.grid_size).to(torch.float32), persistent=False)
        if cfg.embedding == "positional":
            self.noise_embed = PositionalEmbedding(cfg.embedding_dim, scale=cfg.embedding_scale)
        else:
            self.noise_embed = FourierEmbedding(cfg.embedding_dim, scale=cfg.embedding_scale)
        self.noise_mlp = nn.Sequential(nn.Linear(cfg.embedding_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.class_embed = None if cfg.num_classes is None else nn.Embedding(cfg.num_classes + 1, D)
        self.augment_embed = nn.Linear(cfg.augment_dim, D, bias=False) if cfg.augment_dim else None
        self.blocks = nn.ModuleList(DiTBlock(D, cfg.num_heads, cfg.mlp_hidden) for _ in range(cfg.depth))
        self.final = FinalLayer(D, p * p * cfg.output_channels)
        self.initialize()

    @torch.no_grad()
    def initialize(self) -> None:
        """The paper's initialization (Sec. 3.2 and its code): Xavier-uniform linear layers and patch
        embedding with zero biases, N(0, 0.02^2) label embeddings and noise-MLP weights, and zero
        adaLN modulations and final projection (adaLN-Zero: blocks start as the identity, the output at 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear map of the flattened patch
        nn.init.zeros_(self.patch_embed.bias)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        for layer in (self.noise_mlp[0], self.noise_mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation.weight)
            nn.init.zeros_(block.adaLN_modulation.bias)
        for layer in (self.final.adaLN_modulation, self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> tokens (B, T, D) with the position embedding added, row-major patch order."""
        return self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)

    def unpatchify(self, out: Tensor) -> Tensor:
        """Per-token values (B, T, p p C) -> images (B, C, H, W); a token's values are ordered (p_row, p_col, C)."""
        cfg = self.config
        g, p, C = cfg.grid_size, cfg.patch_size, cfg.output_channels
        out = out.reshape(out.shape[0], g, g, p, p, C)  # (B, row, col, p_row, p_col, C)
        return out.permute(0, 5, 1, 3, 2, 4).reshape(out.shape[0], C, g * p, g * p)

    def condition(self, c_noise: Tensor, y: Tensor | None, augment_labels: Tensor | None, dtype: torch.dtype) -> Tensor:
        """The conditioning vector c (B, D): noise embedding [+ label embedding] [+ augmentation]."""
        cfg, B = self.config, c_noise.shape[0]
        c = self.noise_mlp(self.noise_embed(c_noise).to(dtype))
        if self.class_embed is not None:
            if y is None:
                y = torch.full((B,), cfg.num_classes, dtype=torch.long, device=c_noise.device)
            elif y.shape != (B,) or y.is_floating_point():
                raise ValueError(f"expected integer labels y of shape ({B},), got {y.dtype} {tuple(y.shape)}")
            # 0..K-1 classes, K the null label; a host read on CPU only (a per-step sync on a GPU would cost,
            # and the embedding's own index check fires there)
            elif y.device.type == "cpu" and B and not bool(((y >= 0) & (y <= cfg.num_classes)).all()):
                raise ValueError(f"labels y must be in 0..{cfg.num_classes} ({cfg.num_classes} classes; "
                                 f"{cfg.num_classes} is the null label), got {y.tolist()}"[:300])
            c = c + self.class_embed(y)
        elif y is not None:
            raise ValueError("this DiT is unconditional (num_classes=None) but labels y were given")
        if augment_labels is not None:  # None: the identity transformation, whose vector is zero
            if self.augment_embed is None:
                raise ValueError("this DiT has augment_dim=0 but augment_labels were given")
            if augment_labels.shape != (B, cfg.augment_dim):
                raise ValueError(f"expected augment_labels of shape ({B}, {cfg.augment_dim}), "
                                 f"got {tuple(augment_labels.shape)}")
            c = c + self.augment_embed(augment_labels.to(c.dtype))
        return c

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None,
                augment_labels: Tensor | None = None) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != cfg.image_shape:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}), "
                             f"got {tuple(x.shape)}")
        if c_noise.shape != (x.shape[0],):
            raise ValueError(f"expected c_noise of shape ({x.shape[0]},), got {tuple(c_noise.shape)}")
        c = self.condition(c_noise, y, augment_labels, x.dtype)
        h = self.patchify(x)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c))


# --- presets -------------------------------------------------------------------------------------

# DiT model sizes (Peebles & Xie 2023, Table 1): (depth, hidden_size, num_heads)
SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}
# Table 4's parameter counts (millions), which do not depend on the patch size to the digits shown
PAPER_PARAMETERS_M = {"s": 33, "b": 130, "l": 458, "xl": 675}


def imagenet_preset(size: str, patch_size: int, **overrides) -> DiTConfig:
    """DiT-{size}/{patch_size} of the paper (`SIZES`, Table 1: "s", "b", "l" or "xl"; patch 2, 4 or 8) for
    ImageNet 256 latents: 32 x 32 x 4, 1000 classes, learned variance (what Table 4 counts)."""
    check_name("DiT size", size, sorted(SIZES))
    depth, hidden, heads = SIZES[size]
    base = dict(image_size=32, in_channels=4, patch_size=patch_size, hidden_size=hidden, depth=depth,
                num_heads=heads, mlp_ratio=4.0, num_classes=1000, learn_variance=True)
    return DiTConfig(**{**base, **overrides})


def dit_digits(**overrides) -> DiTConfig:
    """A small DiT for 8x8 gray images (scikit-learn digits): 1,864,580 parameters (the U-Net `digits`: 1,901,601).

    Patch 2 (16 tokens), hidden 128, depth 6, 4 heads of 32, MLP ratio 4. Meant for
    c_noise = log(sigma / alpha) (`ScoreModel(c_noise="log_noise")`), like the U-Net preset: the
    sinusoidal embedding with scale 1 keeps every feature smooth in t.
    """
    base = dict(image_size=8, in_channels=1, patch_size=2, hidden_size=128, depth=6, num_heads=4, mlp_ratio=4.0)
    return DiTConfig(**{**base, **overrides})


def dit_patches(**overrides) -> DiTConfig:
    """A small DiT for 16x16 RGB natural-image patches (`scoresde.patches`): 4,163,916 parameters.

    Patch 2 (64 tokens), hidden 192, depth 6, 3 heads of 64, MLP ratio 4; for 32x32 patches pass
    image_size=32 (256 tokens, the same parameter count) or also patch_size=4 (64 tokens).
    """
    base = dict(image_size=16, in_channels=3, patch_size=2, hidden_size=192, depth=6, num_heads=3, mlp_ratio=4.0)
    return DiTConfig(**{**base, **overrides})


# "dit_s2" .. "dit_xl8": the paper's twelve models (Table 4), then the small nets
DIT_PRESETS = {f"dit_{size}{p}": functools.partial(imagenet_preset, size, p) for size in SIZES for p in (2, 4, 8)}
DIT_PRESETS.update(dit_digits=dit_digits, dit_patches=dit_patches)


def dit_preset(name: str, **overrides) -> DiTConfig:
    """The DiTConfig of a named preset (DIT_PRESETS: "dit_s2" .. "dit_xl8", "dit_digits", "dit_patches"), with
    fields overridden."""
    check_name("DiT preset", name, sorted(DIT_PRESETS))
    return DIT_PRESETS[name](**overrides)
