"""Ancestral sampling with learned reverse variances (Improved DDPM, Nichol & Dhariwal 2021, arXiv:2102.09672).

The model returns, from one evaluation at (x_s, s), the noise prediction eps and a weight v (B, *D)
that interpolates the reverse variance in log space between the two natural choices (Eq. 15):

    Sigma = exp(v log beta + (1 - v) log beta_tilde).

For a step from the noisier grid time s to the next time t < s of any affine process, with
h = lambda_t - lambda_s > 0 (notation of `solvers.reverse_diffusion`):

    beta       = sigma_s^2 - (alpha_s / alpha_t)^2 sigma_t^2 = sigma_s^2 (1 - e^{-2h})   forward step s <- t
    beta_tilde = beta sigma_t^2 / sigma_s^2              = sigma_t^2 (1 - e^{-2h})   posterior q(x_t | x_s, x_0)

and the mean is the posterior mean with x_0 replaced by (x_s - sigma_s eps) / alpha_s, as in
`ancestral`. On a DiscreteVPSDE's knots these are DDPM's beta_n and beta_tilde_n; on a coarser grid
(fewer steps) they are the respaced betas of Nichol & Dhariwal, Sec. 4, so strided sampling is just
a coarser decreasing grid. With v = 0 this is `ancestral` (beta_tilde); with v = 1 it uses beta.

Models: anything with `eps_and_variance(x, t) -> (eps, v)` (e.g. `scoresde.ScoreModel(...,
learned_variance=True)`); a model whose `learned_variance` attribute is False is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import OneStepSolver
from .coefficients import step_coefficients
from .protocol import CountedModel, GeneratorArg, Model, bcast, randn_like, time_like


def learned_variance_update(
    x_s: Tensor,
    eps: Tensor,
    v: Tensor,
    alpha_s: Tensor,
    sigma_s: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    h: Tensor,
    z: Tensor,
) -> tuple[Tensor, Tensor]:
    """A draw of N(posterior mean, exp(v log beta + (1 - v) log beta_tilde)) at the less noisy time t.

    Shapes: x_s, eps, v, z (B, *D); coefficients (B,). Returns (x_t, x0_hat), both (B, *D).
    """
    x0 = (x_s - bcast(sigma_s, x_s) * eps) / bcast(alpha_s, x_s)
    r = -torch.expm1(-2 * h)  # beta / sigma_s^2 = beta_tilde / sigma_t^2
    # Ho et al. 2020 (arXiv:2006.11239), Eq. (7): posterior mean with x0 predicted
    mean = bcast(alpha_t / alpha_s * torch.exp(-2 * h), x_s) * x_s + bcast(alpha_t * r, x_s) * x0
    # Nichol & Dhariwal 2021, Eq. (15): log Sigma = v log beta + (1 - v) log beta_tilde
    # as log r + v log sigma_s^2 + (1 - v) log sigma_t^2 with xlogy (0 log 0 = 0): v = 1 at sigma_t = 0
    # (a step to t = 0 on VP) gives Sigma = beta, not 0 * log 0 = NaN
    log_var = bcast(torch.log(r), x_s) + torch.xlogy(v, bcast(sigma_s**2, x_s)) + torch.xlogy(1 - v, bcast(sigma_t**2, x_s))
    return mean + torch.exp(0.5 * log_var) * z, x0


def check_learned_variance(model: Model) -> None:
    """Raise ValueError unless `model` offers eps_and_variance(x, t) -> (eps, v)."""
    if not callable(getattr(model, "eps_and_variance", None)) or getattr(model, "learned_variance", True) is False:
        raise ValueError(
            "solver 'ddpm_learned' needs a model with eps_and_variance(x, t) -> (eps, v), e.g. "
            f"scoresde.ScoreModel(net, sde, learned_variance=True); got {type(model).__name__} without one "
            "(use 'ancestral' for a fixed variance)"
        )


def learned_variance_step(
    model: CountedModel, x: Tensor, t_cur: Tensor, t_next: Tensor, *, generator: GeneratorArg = None
) -> tuple[Tensor, Tensor]:
    """One step from t_cur to t_next (0-d float64); one evaluation. Returns (x, x0_hat)."""
    c = step_coefficients(model.sde, t_cur, t_next)
    eps, v = model.call("eps_and_variance", x, time_like(t_cur, x))  # one evaluation
    z = randn_like(x, generator)
    coeffs = (time_like(a, x) for a in (c.alpha_s, c.sigma_s, c.alpha_t, c.sigma_t, c.h))
    return learned_variance_update(x, eps, v, *coeffs, z)


@dataclass(frozen=True, kw_only=True)
class LearnedVarianceAncestral(OneStepSolver):
    """Ancestral sampling with the model's learned variance (Improved DDPM); one evaluation per step."""

    name = "ddpm_learned"
    description = "ancestral sampling with learned reverse variances on any grid (Improved DDPM, Nichol & Dhariwal 2021)"
    stochastic = True
    needs_learned_variance = True  # models must offer eps_and_variance (guidance wrappers forward it when theirs does)
    update = staticmethod(learned_variance_step)

    def check_model(self, model: Model) -> None:
        check_learned_variance(model)
