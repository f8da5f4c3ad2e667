"""`LatentModel`: a diffusion model over latents composed with an autoencoder (Rombach et al. 2022, arXiv:2112.10752).

The solvers see only latents: `LatentModel` is a `Model` over z (B, *latent_shape) whose predictions are
those of the latent diffusion model, and whose `sde` is its SDE. `scoresde.sample(latent_model, ...)`
draws the prior in latent space (the default `shape` is `latent_shape`), runs the solver there, and
decodes the result (`decode_samples`, which `sample` calls for any model with `latent_shape` and
`decode`), so every solver, classifier-free guidance (`CFGModel` wraps the latent predictions, which
forward labels y) and batch_size work unchanged and return images.

Scaling (Rombach et al., Sec. 4.3.2 and App. G): the diffusion runs on z = s E(x), s = the autoencoder's
`scale_factor` (1 / std of the latents over the training data, so that z has unit variance); images
are D(z / s).

Likelihood: `log_likelihood(latent_model, x)` / `bits_per_dim(..., levels=None)` encode the images x and
report log p(z) of the latent model at z = s E(x) (deterministic encoding: the posterior mean), per
latent dimension, with settings["space"] = "latent". A pixel-space figure would need the decoder's
density, which a VAE's deterministic decoder does not have; only for an invertible linear autoencoder
is the change of variables exact (`scoresde.latent.likelihood.pixel_log_likelihood`).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ..guidance import _takes_labels  # the one check of a prediction method's labels keyword

__all__ = ["LatentModel", "check_autoencoder", "decode_if_latent"]

AUTOENCODER_METHODS = ("encode", "decode")


def check_autoencoder(autoencoder) -> None:
    """ValueError unless autoencoder has encode(x) -> z, decode(z) -> x, latent_shape and image_shape."""
    for name in AUTOENCODER_METHODS:
        if not callable(getattr(autoencoder, name, None)):
            raise ValueError(f"autoencoder must have methods {list(AUTOENCODER_METHODS)} and attributes latent_shape, "
                             f"image_shape; {type(autoencoder).__name__} lacks {name!r}")
    for name in ("latent_shape", "image_shape"):
        shape = getattr(autoencoder, name, None)
        if not isinstance(shape, tuple) or not shape or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise ValueError(f"autoencoder.{name} must be a non-empty tuple of positive ints, got {shape!r}")
    scale = getattr(autoencoder, "scale_factor", 1.0)
    if scale is None:
        raise ValueError("autoencoder.scale_factor is None: not computed (a VAE file saved before train_vae finished); "
                         "set it, e.g. vae.scale_factor = scoresde.latent.vae_train.compute_scale_factor(vae, images)")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"autoencoder.scale_factor must be a finite number > 0, got {scale!r}")


class LatentModel:
    """A latent diffusion model: `latent` (any Model over z (B, *latent_shape)) and `autoencoder`.

    autoencoder: encode(x (B, *image_shape)) -> (B, *latent_shape) (deterministic: a VAE's posterior
    mean), decode(z) -> (B, *image_shape), tuples latent_shape and image_shape, and optionally
    scale_factor s > 0 (default 1), applied here: encode(x) = s E(x), decode(z) = D(z / s).

    eps / x0 / score / v (z (B, *latent_shape), t (B,), y=None) -> (B, *latent_shape): the latent
    model's predictions (y forwarded to a class-conditional one). `null_label` and `num_classes` are
    the latent model's, where it has them.
    """

    def __init__(self, latent, autoencoder):
        for kind in ("eps", "x0", "score", "v"):
            if not callable(getattr(latent, kind, None)):
                raise ValueError(f"latent must be a Model with eps / x0 / score / v; {type(latent).__name__} lacks {kind!r}")
        if not hasattr(latent, "sde"):
            raise ValueError(f"latent must have an `sde`; {type(latent).__name__} has none")
        check_autoencoder(autoencoder)
        self.latent = latent
        self.autoencoder = autoencoder
        self.sde = latent.sde
        self.latent_shape = tuple(autoencoder.latent_shape)
        self.pixel_shape = tuple(autoencoder.image_shape)
        self.scale_factor = float(getattr(autoencoder, "scale_factor", 1.0))
        self.null_label = getattr(latent, "null_label", None)
        self.num_classes = getattr(latent, "num_classes", None)

    # --- the Model protocol, over latents -------------------------------------------------------
    def _predict(self, kind: str, z: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        if y is None:
            return getattr(self.latent, kind)(z, t)
        if not _takes_labels(getattr(self.latent, kind)):
            raise ValueError(f"labels y were given but the latent model {type(self.latent).__name__}.{kind} takes none: "
                             "guidance needs a class-conditional latent model")
        return getattr(self.latent, kind)(z, t, y=y)

    def eps(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The latent model's noise prediction, (B, *latent_shape)."""
        return self._predict("eps", z, t, y)

    def x0(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The latent model's prediction of the clean latent E[z_0 | z_t], (B, *latent_shape)."""
        return self._predict("x0", z, t, y)

    def score(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """grad_z log p_t(z), (B, *latent_shape)."""
        return self._predict("score", z, t, y)

    def v(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The latent model's v prediction, (B, *latent_shape)."""
        return self._predict("v", z, t, y)

    # --- the autoencoder, scaled --------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Scaled latents s E(x) (B, *latent_shape) of images x (B, *image_shape), in x's dtype, no gradient."""
        if x.ndim < 1 or tuple(x.shape[1:]) != self.pixel_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.pixel_shape))}), got {tuple(x.shape)}")
        with torch.no_grad():
            z = self.autoencoder.encode(x)
        return (self.scale_factor * z).to(x.dtype)

    def decode(self, z: Tensor) -> Tensor:
        """Images D(z / s) (B, *image_shape) of scaled latents z (B, *latent_shape), in z's dtype, no gradient."""
        if z.ndim < 1 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"z must have shape (B, {', '.join(map(str, self.latent_shape))}), got {tuple(z.shape)}")
        with torch.no_grad():
            x = self.autoencoder.decode(z / self.scale_factor)
        return x.to(z.dtype)

    def settings(self) -> dict:
        """What the latent part of a run was: shapes, scale factor, autoencoder class."""
        return {"latent_shape": list(self.latent_shape), "image_shape": list(self.pixel_shape),
                "scale_factor": self.scale_factor, "autoencoder": type(self.autoencoder).__name__}

    def decode_samples(self, samples, batch_size: int | None = None):
        """`scoresde.sample`'s result with x decoded (n, *image_shape), in chunks of batch_size.

        settings["latent"] records the latent run (`settings()`); the solver's settings, NFE and
        seconds are those of the latent run (decoding time is not included in seconds).
        """
        z = samples.x
        step = z.shape[0] if batch_size is None else batch_size
        x = torch.cat([self.decode(z[lo:lo + step]) for lo in range(0, z.shape[0], max(step, 1))])
        return dataclasses.replace(samples, x=x, settings={**samples.settings, "latent": self.settings()})

    # --- likelihood -----------------------------------------------------------------------------
    def likelihood_input(self, x: Tensor, levels: int | None) -> Tensor:
        """The latents z = s E(x) whose log-density `log_likelihood` reports; levels must be None.

        Dequantization (levels) is defined for the pixel grid; a latent figure of dequantized pixels
        would bound nothing, so bits_per_dim(latent_model, x) needs levels=None.
        """
        if levels is not None:
            raise ValueError(f"bits_per_dim of a LatentModel reports log p(z) of the latents z = s E(x), a continuous "
                             f"figure: pass levels=None (got levels={levels!r}); a pixel-space figure would need the "
                             "decoder's density (exact only for a linear autoencoder: scoresde.latent.likelihood)")
        return self.encode(x)

    def likelihood_settings(self) -> dict:
        """Settings added to a latent model's likelihood: the space the figure lives in."""
        return {"space": "latent", "latent_dim": math.prod(self.latent_shape), **self.settings(),
                "pixel_likelihood": "not computed: it needs the decoder's density (exact only for an invertible "
                                    "linear autoencoder, scoresde.latent.likelihood.pixel_log_likelihood)"}


def decode_if_latent(model, samples):
    """`scoresde.sample`'s hook: a latent model's samples (`latent_shape` and `decode_samples`, as LatentModel has)
    decoded to images (settings["latent"] added), any other model's as they are."""
    return model.decode_samples(samples) if hasattr(model, "latent_shape") else samples
