"""Pixel-space likelihood of a latent model, where it exists: an invertible linear autoencoder.

`log_likelihood(latent_model, x)` reports log p(z) of the latents z = s E(x) (settings["space"] =
"latent"). When the decoder is an invertible linear map x = A z / s (`LinearAutoencoder`), the pixel
density follows by the change of variables,

    log p_x(x) = log p_z(z) + log|det dz/dx| = log p_z(s A^-1 x) + d log s - log|det A|,

which `pixel_log_likelihood` returns. A VAE's decoder is not invertible and has no density of its own
(its likelihood would be the ELBO of a decoder noise model), so it is refused.
"""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType

from torch import Tensor

from ..likelihood.api import log_likelihood
from ..likelihood.results import Likelihood, bpd_from_logp
from .model import LatentModel

__all__ = ["pixel_log_likelihood"]


def pixel_log_likelihood(model: LatentModel, x: Tensor, **options) -> Likelihood:
    """log p_x(x) (B,) nats of images x (B, *image_shape) under a latent model with a linear decoder.

    options: those of `scoresde.log_likelihood` (method, rtol, atol, steps, divergence, seed, ...).
    Returns the latent result shifted by d log s - log|det A| (d the latent dimension), bpd per pixel
    dimension, settings["space"] = "pixel" and settings["log_det_shift"] the shift in nats.
    """
    if not isinstance(model, LatentModel):
        raise ValueError(f"model must be a scoresde.latent.LatentModel, got {type(model).__name__}")
    log_abs_det = getattr(model.autoencoder, "log_abs_det", None)
    if not callable(log_abs_det):
        raise ValueError(f"pixel_log_likelihood needs an invertible linear decoder (LinearAutoencoder, with "
                         f"log_abs_det); {type(model.autoencoder).__name__} has no density of its own: use "
                         "scoresde.log_likelihood for the latent figure")
    res = log_likelihood(model, x, **options)
    d_latent = math.prod(model.latent_shape)
    # change of variables x = A z / s: log p_x = log p_z + d log s - log|det A|
    shift = d_latent * math.log(model.scale_factor) - log_abs_det()
    logp = res.logp + shift
    settings = {**res.settings, "space": "pixel", "log_det_shift": shift}
    del settings["pixel_likelihood"]
    return dataclasses.replace(res, logp=logp, bpd=bpd_from_logp(logp, x[0].numel()),
                               bpd_se=res.logp_se / (x[0].numel() * math.log(2.0)),
                               settings=MappingProxyType(settings))
