"""A time-conditioned U-Net of the DDPM++ family, architecture only: net(x, c_noise, y=None).

The network knows nothing about SDEs. It maps images x (B, C, H, W) and a per-sample noise input
c_noise (B,) (whatever `ScoreModel(c_noise=...)` feeds it: 999 t, log(sigma / alpha), ...) to a
tensor of x's shape; `ScoreModel` says what that tensor predicts.

Layout (DDPM++, Song et al. 2021, arXiv:2011.13456, App. H; `ncsnpp.py` with
resblock_type="biggan", progressive="none"):

    emb = MLP(embed(c_noise)) [+ class_emb(y)] [+ A a]  MLP: Linear(ch, 4ch), SiLU, Linear(4ch, 4ch)
    h = conv_in(x)
    down, per level i:  num_res_blocks x [ResBlock(-> ch * ch_mult[i]), Attn if res in attn_resolutions]
                        then ResBlock(down) unless last level          (every output kept as a skip)
    middle:             ResBlock, Attn, ResBlock
    up, per level i:    (num_res_blocks + 1) x ResBlock(concat(h, skip)), Attn once if res in
                        attn_resolutions, then ResBlock(up) unless level 0
    out = conv_out(SiLU(GroupNorm(h)))                  (starts at zero)

Every residual block takes the embedding by FiLM (scale-shift) unless film=False, which gives the
additive bias of the original DDPM++. Augmentation conditioning (augment_dim=A, scoresde.augment)
adds a bias-free linear map of the (B, A) transformation vector to emb (None: zeros, the identity).
Class conditioning (num_classes=K) learns K + 1 label embeddings: label K is the null class used for
classifier-free guidance, and y=None means null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solvers.validate import check_name, check_number

from .config_common import NetConfig, bounded_int
from .layers import AttnBlock, FourierEmbedding, PositionalEmbedding, ResBlock, group_norm, zero_

# Bounds on what a configuration (e.g. one read from a file) may ask for: far above any sensible net
# (DDPM++ CIFAR-10: image_size 32, ch 128, 4 levels, 4 blocks), far below what exhausts memory.
LIMITS = {"image_size": 2048, "in_channels": 64, "out_channels": 64, "ch": 2048, "levels": 12, "ch_mult": 64,
          "num_res_blocks": 32, "num_classes": 1_000_000, "augment_dim": 4096}
MAX_PARAMETERS = 2_000_000_000  # implied by a file's configuration (checked before building the net)


@dataclass(frozen=True)
class UNetConfig(NetConfig):
    """Configuration of `UNet`.

    image_size: H = W of the input; in_channels; out_channels (None: same as in_channels);
    ch: base channels; ch_mult: channel multiplier per resolution level (level i works at
    image_size / 2^i); num_res_blocks: residual blocks per level on the way down (one more on the
    way up); attn_resolutions: resolutions (in pixels) with self-attention; dropout: in every
    residual block; embedding: "positional" (sinusoidal) or "fourier" (random Fourier features) of
    c_noise, scaled by embedding_scale (positional: c_noise is multiplied by it; fourier: the
    standard deviation of the frequencies); film: scale-shift conditioning (False: additive bias,
    as in the original DDPM++); num_classes: None for an unconditional net, else the number of
    classes K (labels 0..K-1; label K is the learned null class); learn_variance: output twice
    the channels, the second half being the raw reverse-variance interpolation of Improved DDPM
    (Nichol & Dhariwal 2021; read by `ScoreModel(learned_variance=True)`); augment_dim: length of
    the augmentation conditioning vector (`scoresde.augment`; 0: none), mapped linearly (no bias)
    into the embedding, so that the all-zero vector of the identity transformation, which is used
    when the vector is omitted, adds nothing.
    """

    image_size: int = 32
    in_channels: int = 3
    out_channels: int | None = None
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    embedding: Literal["positional", "fourier"] = "positional"
    embedding_scale: float = 1.0
    film: bool = True
    num_classes: int | None = None
    learn_variance: bool = False
    augment_dim: int = 0

    LIMITS = LIMITS  # the module's bounds, for NetConfig.check_conditioning (a class attribute, not a field)

    def __post_init__(self):
        # JSON round trips give lists; store tuples so that configs compare and hash
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        for name in ("image_size", "in_channels", "ch"):
            bounded_int(name, getattr(self, name), 1, LIMITS[name])
        bounded_int("num_res_blocks", self.num_res_blocks, 0, LIMITS["num_res_blocks"])
        if not self.ch_mult or any(not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= LIMITS["ch_mult"]
                                   for m in self.ch_mult) or len(self.ch_mult) > LIMITS["levels"]:
            raise ValueError(f"ch_mult must be a non-empty tuple of at most {LIMITS['levels']} integers in "
                             f"[1, {LIMITS['ch_mult']}], got {self.ch_mult!r}"[:300])
        if any(not isinstance(r, int) or isinstance(r, bool) for r in self.attn_resolutions):
            raise ValueError(f"attn_resolutions must be integers, got {self.attn_resolutions!r}"[:300])
        levels = len(self.ch_mult)
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2^{levels - 1} for {levels} levels (ch_mult={self.ch_mult})"
            )
        bad = sorted(set(self.attn_resolutions) - set(self.resolutions))
        if bad:
            raise ValueError(f"attn_resolutions {bad} are not level resolutions; choose from {list(self.resolutions)}")
        check_number("dropout", self.dropout, 0, 1, high_open=True)
        self.check_conditioning()

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Resolution of each level, e.g. (32, 16, 8, 4)."""
        return tuple(self.image_size // 2**i for i in range(len(self.ch_mult)))



class UNet(nn.Module):
    """DDPM++ U-Net: forward(x (B, C, H, W), c_noise (B,), y (B,) int64 or None, augment_labels (B, A) or
    None) -> (B, C_out, H, W)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        emb_dim = 4 * cfg.ch
        if cfg.embedding == "positional":
            self.noise_embed = PositionalEmbedding(cfg.ch, scale=cfg.embedding_scale)
        else:
            self.noise_embed = FourierEmbedding(cfg.ch, scale=cfg.embedding_scale)
        self.emb_mlp = nn.Sequential(nn.Linear(cfg.ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = None if cfg.num_classes is None else nn.Embedding(cfg.num_classes + 1, emb_dim)

        def block(cin: int, cout: int, resample: str = "none") -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout=cfg.dropout, resample=resample, film=cfg.film)

        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        # down: one stage per kept skip (a ResBlock [+ Attn], or a downsampling ResBlock)
        self.down = nn.ModuleList()
        skips = [cfg.ch]
        c = cfg.ch
        for i, (mult, res) in enumerate(zip(cfg.ch_mult, cfg.resolutions)):
            for _ in range(cfg.num_res_blocks):
                stage = nn.ModuleList([block(c, cfg.ch * mult)])
                c = cfg.ch * mult
                if res in cfg.attn_resolutions:
                    stage.append(AttnBlock(c))
                self.down.append(stage)
                skips.append(c)
            if i != len(cfg.ch_mult) - 1:
                self.down.append(nn.ModuleList([block(c, c, "down")]))
                skips.append(c)
        self.mid = nn.ModuleList([block(c, c), AttnBlock(c), block(c, c)])
        self.up = nn.ModuleList()
        for i in reversed(range(len(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(block(c + skips.pop(), cfg.ch * cfg.ch_mult[i]))
                c = cfg.ch * cfg.ch_mult[i]
            if cfg.resolutions[i] in cfg.attn_resolutions:
                self.up.append(AttnBlock(c))
            if i != 0:
                self.up.append(block(c, c, "up"))
        self.norm_out = group_norm(c)
        self.conv_out = zero_(nn.Conv2d(c, cfg.output_channels, 3, padding=1))
        # made last, so that the other layers start as in the same net without it
        self.augment_embed = nn.Linear(cfg.augment_dim, emb_dim, bias=False) if cfg.augment_dim else None

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None, augment_labels: Tensor | None = None) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"expected x of shape (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}), got {tuple(x.shape)}"
            )
        if c_noise.shape != (x.shape[0],):
            raise ValueError(f"expected c_noise of shape ({x.shape[0]},), got {tuple(c_noise.shape)}")
        emb = self.emb_mlp(self.noise_embed(c_noise))
        if self.class_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), cfg.num_classes, dtype=torch.long, device=x.device)
            elif y.shape != (x.shape[0],) or y.is_floating_point():
                raise ValueError(f"expected integer labels y of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
            emb = emb + self.class_embed(y)
        elif y is not None:
            raise ValueError("this UNet is unconditional (num_classes=None) but labels y were given")
        if augment_labels is not None:  # None: the identity transformation, whose vector is zero
            if self.augment_embed is None:
                raise ValueError("this UNet has augment_dim=0 but augment_labels were given")
            if augment_labels.shape != (x.shape[0], cfg.augment_dim):
                raise ValueError(f"expected augment_labels of shape ({x.shape[0]}, {cfg.augment_dim}), "
                                 f"got {tuple(augment_labels.shape)}")
            emb = emb + self.augment_embed(augment_labels.to(emb.dtype))

        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            for layer in stage:
                h = layer(h, emb)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock) and layer.resample == "none":  # the blocks built with a skip
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


# --- presets -------------------------------------------------------------------------------------

def ddpmpp_cifar10(**overrides) -> UNetConfig:
    """DDPM++ continuous, CIFAR-10 (Song et al. 2021, `configs/vp/cifar10_ddpmpp_continuous.py`).

    ch 128, ch_mult (1, 2, 2, 2), 4 residual blocks per level, attention at 16x16, dropout 0.1,
    BigGAN residual up/down sampling, sinusoidal embedding. Song et al. feed it c_noise = 999 t
    (`ScoreModel(c_noise="999t")`) for VP. film=False by default: the original adds the
    embedding as a bias, and that is the 61,804,419 parameter network (film=True makes it 66,926,211).
    """
    base = dict(image_size=32, in_channels=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4,
                attn_resolutions=(16,), dropout=0.1, embedding="positional", embedding_scale=1.0, film=False)
    return UNetConfig(**{**base, **overrides})


def digits(**overrides) -> UNetConfig:
    """A small U-Net for 8x8 gray images (scikit-learn digits): 1,901,601 parameters.

    ch 32, ch_mult (1, 2, 2) (levels at 8, 4, 2 pixels), 2 residual blocks, attention at 4x4,
    dropout 0.1, FiLM, sinusoidal embedding with scale 1. Meant for c_noise = log(sigma / alpha)
    (`ScoreModel(c_noise="log_noise")`): for VP (t in [1e-5, 1]) that input spans about [-6.9, 5.0], so with frequencies
    at most 1 every feature is smooth in t and the probability-flow ODE stays easy to integrate.
    """
    base = dict(image_size=8, in_channels=1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2,
                attn_resolutions=(4,), dropout=0.1, embedding="positional", embedding_scale=1.0, film=True)
    return UNetConfig(**{**base, **overrides})


PRESETS = {"ddpmpp_cifar10": ddpmpp_cifar10, "digits": digits}


def preset(name: str, **overrides) -> UNetConfig:
    """The UNetConfig of a named preset, with fields overridden."""
    check_name("UNet preset", name, sorted(PRESETS))
    return PRESETS[name](**overrides)
