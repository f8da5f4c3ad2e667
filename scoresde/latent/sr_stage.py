"""The super-resolution (SR) stage of a cascade and its training loss (Ho et al. 2021, arXiv:2106.15282;
Saharia et al. 2021, SR3, arXiv:2104.07636); `scoresde.latent.cascade` samples cascades with it.

An SR stage models the high-resolution image x (B, C, H, W) given a low-resolution image, upsampled to
H x W and concatenated to x along the channels (the backbone sees 2C channels and predicts C).

Noise-conditioning augmentation (Ho et al. 2021, Sec. 4.2): the SR stage is conditioned not on the
low-resolution image l but on w = alpha(s) l + sigma(s) e, e ~ N(0, I), l noised by the augmentation
process at a level s that the network is told (through the backbone's augmentation input,
augment_labels (B, 1) = sigma(s) / alpha(s), which is 0 at s = 0). Training draws s ~ U(0, s_max) per
sample (`sr_loss`); sampling uses one fixed s (`sample_cascade(aug_level=s)`), so that the stage
forgives the base model's artifacts. s = 0 means no augmentation (w = l) for every process.

This module imports no sampler, so the trainer (TrainConfig.sr_factor) can train a stage without a cycle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solvers.protocol import bcast, randn
from solvers.validate import check_number

from ..losses import dsm_loss
from ..param import ScoreModel
from ..sde import SDE

__all__ = ["ConditionedNet", "SRStage", "augment_low_res", "downsample", "noise_feature", "sr_loss", "upsample"]


def downsample(x: Tensor, factor: int) -> Tensor:
    """f x f average pooling: (B, C, H, W) -> (B, C, H/f, W/f), the low-resolution image of a cascade."""
    return F.avg_pool2d(x, factor)


def upsample(low: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour upsampling: (B, C, h, w) -> (B, C, f h, f w) (each pixel repeated f x f)."""
    return low.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def _levels(s, low: Tensor) -> Tensor:
    """Augmentation levels s (a float or (B,)) as a float64 (B,) tensor, checked to be >= 0."""
    s = torch.as_tensor(s).to(torch.float64).reshape(-1).expand(low.shape[0])
    if s.device.type == "cpu" and not bool(((s >= 0) & torch.isfinite(s)).all()):
        raise ValueError(f"augmentation levels s must be finite and >= 0, got {s.tolist()}"[:300])
    return s


def _aug_coefficients(aug_sde: SDE, s: Tensor) -> tuple[Tensor, Tensor]:
    """(a, b) (B,) = (alpha(s), sigma(s)), and exactly (1, 0) where s = 0 (no augmentation)."""
    zero = s == 0
    a = torch.where(zero, torch.ones_like(s), aug_sde.alpha(s.clamp(min=1e-12)).to(s))
    b = torch.where(zero, torch.zeros_like(s), aug_sde.sigma(s.clamp(min=1e-12)).to(s))
    return a, b


def augment_low_res(low: Tensor, s, aug_sde: SDE, *, generator=None) -> Tensor:
    """w = alpha(s) low + sigma(s) e (B, C, h, w), e drawn from `generator`; s a float or (B,) levels."""
    a, b = _aug_coefficients(aug_sde, _levels(s, low).to(low.device))
    e = randn(low.shape, generator=generator, device=low.device, dtype=low.dtype)
    # Ho et al. 2021, Sec. 4.2: Gaussian conditioning augmentation, the forward process applied to the condition
    return bcast(a.to(low), low) * low + bcast(b.to(low), low) * e


def noise_feature(aug_sde: SDE, s, low: Tensor) -> Tensor:
    """The network's augmentation input (B, 1): the noise level sigma(s) / alpha(s) (0 at s = 0)."""
    a, b = _aug_coefficients(aug_sde, _levels(s, low).to(low.device))
    return (b / a).to(low.dtype)[:, None]


class ConditionedNet(nn.Module):
    """A backbone bound to a batch of conditions: net(x, c_noise[, y]) as `ScoreModel` calls it.

    backbone(x_in (B, 2C, H, W), c_noise (B,), y, augment_labels=(B, 1)) -> (B, C, H, W), e.g. a UNet or
    DiT with in_channels 2C, out_channels C, augment_dim 1. cond: upsampled augmented low-resolution
    images (B, C, H, W) (or (1, ...)); feature: (B, 1). When x has k B rows (classifier-free guidance
    stacks [x; x]) the conditions repeat k times.
    """

    def __init__(self, backbone: nn.Module, cond: Tensor, feature: Tensor):
        super().__init__()
        self.backbone = backbone
        self.cond, self.feature = cond, feature

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        cond, feature = self.cond, self.feature
        if x.shape[0] != cond.shape[0]:
            if x.shape[0] % cond.shape[0]:
                raise ValueError(f"x has {x.shape[0]} rows for {cond.shape[0]} conditioning images")
            k = x.shape[0] // cond.shape[0]
            cond, feature = cond.repeat(k, 1, 1, 1), feature.repeat(k, 1)
        # SR3 / Ho et al. 2021: the upsampled condition concatenated to x along the channels
        x_in = torch.cat([x, cond.to(x.dtype)], dim=1)
        return self.backbone(x_in, c_noise, y, augment_labels=feature.to(x.dtype))


class SRStage:
    """A learned SR stage: backbone (in_channels 2C, out_channels C, augment_dim 1) and its SDE.

    image_shape: (C, H, W) of the high-resolution images; factor: f (H, W divisible by it); prediction,
    c_noise: as in `ScoreModel`; aug_sde: the augmentation process (default sde).
    `conditioned(w, s)`: the `ScoreModel` of x_t given augmented low-resolution images w (B, C, H/f, W/f).
    """

    def __init__(self, backbone: nn.Module, sde: SDE, image_shape: tuple[int, int, int], factor: int, *,
                 prediction: str = "eps", c_noise="log_noise", aug_sde: SDE | None = None):
        C, H, W = image_shape
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or H % factor or W % factor:
            raise ValueError(f"factor must be a positive int dividing H = {H} and W = {W}, got {factor!r}")
        self.backbone, self.sde, self.factor = backbone, sde, factor
        self.image_shape, self.low_shape = tuple(image_shape), (C, H // factor, W // factor)
        self.prediction, self.c_noise = prediction, c_noise
        self.aug_sde = sde if aug_sde is None else aug_sde

    def conditioned(self, w: Tensor, s) -> ScoreModel:
        """A ScoreModel over x (B, *image_shape) conditioned on w (B, *low_shape) at level(s) s."""
        if w.ndim != 4 or tuple(w.shape[1:]) != self.low_shape:
            raise ValueError(f"low-resolution images must have shape (B, {', '.join(map(str, self.low_shape))}), "
                             f"got {tuple(w.shape)}")
        net = ConditionedNet(self.backbone, upsample(w, self.factor), noise_feature(self.aug_sde, s, w))
        return ScoreModel(net, self.sde, self.prediction, c_noise=self.c_noise)


def sr_loss(stage: SRStage, x: Tensor, *, s_max: float, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample denoising loss (B,) of the SR stage on high-resolution images x (B, C, H, W).

    The low-resolution image is downsample(x); its augmentation level s ~ U(0, s_max) per sample, then
    w = augment_low_res(...), then `dsm_loss` of stage.conditioned(w, s) on x (t ~ U(t_eps, T)); drawn
    from `generator` in that order (s, e, then dsm_loss's t and noise).
    """
    check_number("s_max", s_max, 0, stage.aug_sde.T)
    s = s_max * torch.rand(x.shape[0], generator=generator, dtype=torch.float64).to(x.device)
    w = augment_low_res(downsample(x, stage.factor), s, stage.aug_sde, generator=generator)
    return dsm_loss(stage.conditioned(w, s), x, generator=generator)
