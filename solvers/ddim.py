"""DDIM (Song, Meng & Ermon 2021, arXiv:2010.02502) for any affine SDE, with eta.

Notation: the step goes from the noisier time s to t; DDIM's sqrt(alpha-bar_t) is alpha_t here,
sqrt(1 - alpha-bar_t) is sigma_t, and h = lambda_t - lambda_s > 0. DDIM's sigma_t(eta) (Eq. 16) is
eta times the posterior std of the forward process, which for any affine SDE is
sigma_t sqrt(1 - e^{-2h}) (for VP this is Eq. 16 exactly). eta = 0 is deterministic (the exponential
Euler step, DPM-Solver-1); eta = 1 is ancestral sampling with the posterior variance and gives the
same samples as `solvers.reverse_diffusion.Ancestral` for the same generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Hook, Solver, State
from .coefficients import step_coefficients
from .protocol import CountedModel, GeneratorArg, bcast, randn_like, time_like
from .validate import check_number


def ddim_update(
    x_s: Tensor,
    eps: Tensor,
    alpha_s: Tensor,
    sigma_s: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    h: Tensor,
    eta: float,
    z: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """DDIM step from s to the less noisy t; returns (x_t, x0_hat).

    Shapes: x_s, eps, z (B, *D); alpha_*, sigma_*, h (B,). z may be None when eta = 0.
    """
    x0_hat = (x_s - bcast(sigma_s, x_s) * eps) / bcast(alpha_s, x_s)
    r = -torch.expm1(-2 * h)  # posterior variance / sigma_t^2
    noise_std = eta * sigma_t * r.sqrt()  # DDIM's sigma_t(eta), Eq. (16)
    dir_coef = sigma_t * (1 - eta**2 * r).sqrt()  # sqrt(1 - alpha-bar_{t-1} - sigma_t(eta)^2)
    # DDIM (Song et al. 2021, arXiv:2010.02502), Eq. (12): predicted x0, direction to x_t, noise
    x_t = bcast(alpha_t, x_s) * x0_hat + bcast(dir_coef, x_s) * eps
    if z is not None:
        x_t = x_t + bcast(noise_std, x_s) * z
    return x_t, x0_hat


def ddim_step(
    model: CountedModel, x: Tensor, t_cur: Tensor, t_next: Tensor, *, eta: float, generator: GeneratorArg = None
) -> tuple[Tensor, Tensor]:
    """One DDIM step from t_cur to t_next (0-d float64); one evaluation. Returns (x_t, x0_hat)."""
    c = step_coefficients(model.sde, t_cur, t_next)
    eps = model.eps(x, time_like(t_cur, x))
    z = randn_like(x, generator) if eta > 0 else None
    return ddim_update(x, eps, *(time_like(v, x) for v in c), eta, z)


def ddim_step_per_sample(model, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """One deterministic DDIM step (eta = 0) of `model` from per-sample times s to the less noisy t ((B,) float64,
    the coefficients computed in float64, then cast to x's dtype); x (B, *D). One evaluation; returns x_t (B, *D).
    The teacher step of progressive distillation and of consistency distillation."""
    sde = model.sde
    coefs = (sde.alpha(s), sde.sigma(s), sde.alpha(t), sde.sigma(t), sde.lambda_(t) - sde.lambda_(s))
    eps = model.eps(x, s.to(x.dtype))
    return ddim_update(x, eps, *(c.to(x.dtype) for c in coefs), 0.0, None)[0]


@dataclass(frozen=True, kw_only=True)
class DDIM(Solver):
    """DDIM with eta in [0, 1]; first order, one evaluation per step.

    `stochastic` is True on instances built with eta > 0 (the class attribute describes eta = 0).
    """

    name = "ddim"
    description = "DDIM (Song et al. 2021, arXiv:2010.02502); eta=0 deterministic, eta=1 ancestral"
    order = 1
    stochastic = False
    nfe_per_step = 1
    default_steps = 50
    default_grid = "uniform_t"

    eta: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        self._set(eta=check_number("eta", self.eta, 0, 1))
        self._set(stochastic=self.eta > 0)

    def step(
        self, model: CountedModel, state: State, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> State:
        return State(*ddim_step(model, state.x, s, t, eta=self.eta, generator=generator))
