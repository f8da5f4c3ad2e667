"""Cascaded super-resolution (Ho et al. 2021, arXiv:2106.15282; Saharia et al. 2021, SR3, arXiv:2104.07636).

A cascade samples a low-resolution base model, then a super-resolution (SR) stage: a diffusion model of
the high-resolution image x (B, C, H, W) conditioned on the low-resolution image, upsampled to H x W and
concatenated to x along the channels. The stage, its noise-conditioning augmentation and its loss live in
`scoresde.latent.sr_stage` (re-exported here); this module samples cascades (`sample_cascade`).

An SR stage is any object with `sde`, `image_shape` (C, H, W), `low_shape`, `factor` f, `aug_sde` and
`conditioned(w, s) -> Model` (a Model of x_t given the augmented images w (B, *low_shape)): `SRStage`
(a network; `scoresde.load_sr_stage` reads the file of a run with sr_factor > 1) or
`scoresde.latent.exact_sr.ExactGaussianSR` (the exact stage for Gaussian data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from solvers.validate import check_number

from ..sampling import sample
from .sr_stage import (
    ConditionedNet, SRStage, augment_low_res, downsample, noise_feature, sr_loss, upsample,
)

__all__ = ["CascadeSamples", "ConditionedNet", "SRStage", "augment_low_res", "downsample", "noise_feature",
           "sample_cascade", "sr_loss", "upsample"]


@dataclass(frozen=True)
class CascadeSamples:
    """What `sample_cascade` returns: x (n, *image_shape) the SR stage's samples, low (n, *low_shape) the
    base model's, w the augmented low-resolution images the SR stage saw, nfe per stage, settings."""

    x: Tensor
    low: Tensor
    w: Tensor
    nfe: dict
    seconds: float
    settings: dict = field(default_factory=dict)


def sample_cascade(base, sr, *, n: int, seed: int, aug_level: float = 0.0, base_options: dict | None = None,
                   sr_options: dict | None = None, dtype: torch.dtype | None = None, device=None) -> CascadeSamples:
    """Sample the base model, then the SR stage conditioned on its samples, each with its own solver.

    base: a Model of the low-resolution images (anything `scoresde.sample` takes; a LatentModel too).
    sr: an SR stage (`SRStage`, `ExactGaussianSR`). base_options / sr_options: keyword arguments of
    `scoresde.sample` for each stage (solver, steps, grid, solver options, batch_size, y, ...; default
    `sample`'s). seed: int; the base stage uses seed, the augmentation noise a generator seeded
    seed + 1, the SR stage seed + 2. aug_level: the fixed augmentation level s >= 0 at sampling.
    """
    base_options, sr_options = dict(base_options or {}), dict(sr_options or {})
    for name, options in (("base_options", base_options), ("sr_options", sr_options)):
        # the SR stage's model is bound to all n conditions at once, so it samples in one batch
        fixed = {"n", "seed", "shape", "x_T", "dtype", "device", "generator"} | ({"batch_size"} if name == "sr_options" else set())
        taken = sorted(fixed & set(options))
        if taken:
            raise ValueError(f"{name} must not set {taken}: sample_cascade sets them")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    s = check_number("aug_level", aug_level, 0, sr.aug_sde.T)
    shape = None if hasattr(base, "latent_shape") else sr.low_shape  # a LatentModel draws its own latents
    low = sample(base, n=n, seed=seed, shape=shape, dtype=dtype, device=device, **base_options)
    if tuple(low.x.shape[1:]) != sr.low_shape:
        raise ValueError(f"the base model samples {tuple(low.x.shape[1:])}, the SR stage needs {sr.low_shape}")
    gen = torch.Generator(low.x.device).manual_seed(seed + 1)
    w = augment_low_res(low.x, s, sr.aug_sde, generator=gen)
    high = sample(sr.conditioned(w, s), n=n, seed=seed + 2, shape=sr.image_shape, dtype=low.x.dtype,
                  device=low.x.device, **sr_options)
    return CascadeSamples(x=high.x, low=low.x, w=w, nfe={"base": low.nfe, "sr": high.nfe},
                          seconds=low.seconds + high.seconds,
                          settings={"base": low.settings, "sr": high.settings, "aug_level": s, "seed": seed,
                                    "factor": sr.factor})
