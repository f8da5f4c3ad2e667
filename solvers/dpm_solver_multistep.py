"""Multistep DPM-Solver in the noise-prediction form (Lu et al. 2022b, arXiv:2211.01095, multistep
methods; Lu et al. 2022, arXiv:2206.00927, Sec. 3): DPM-Solver-1, -2M and -3M with eps.

With the noise prediction eps(x, t) the probability-flow ODE of an affine SDE has the exact solution
(Lu et al. 2022, Eq. 3.4; `solvers.coefficients`; h = lambda_t - lambda_s > 0)

    x_t = alpha_t / alpha_s x_s - sigma_t int_0^h e^{h - u} eps(lambda_s + u) du,

and expanding eps in lambda gives, with phi_k = phi_k(h) the standard phi functions (`phis(h, n)`),

    x_t = alpha_t / alpha_s x_s - sigma_t h (phi_1 eps_s + phi_2 (h eps') + phi_3 (h^2 eps'') + ...).

The multistep methods estimate h eps' and h^2 eps'' from the noise predictions stored at earlier grid
times, so every step costs one evaluation. They are the noise-form twins of DPM-Solver++(2M)/(3M)
(`solvers.dpm_solver_pp`), which expand x0 instead, with phi_k(-h).

Notation: s -> t a step, h = lambda_t - lambda_s; eps_s the prediction at the current time s,
eps_p1, eps_p2 those at the previous grid times, h_0 = lambda_s - lambda_p1, h_1 = lambda_p1 - lambda_p2,
r0 = h_0 / h, r1 = h_1 / h; D1 estimates h eps' and D2 estimates h^2 eps''.

A step that ends at sigma_t = 0 (t_end = 0 on VP and sub-VP) has h = inf, where the weights are
inf * 0; it returns the limit of the first-order step, alpha_t x0_s
(`solvers.coefficients.zero_noise_limit`), as DPM-Solver++ and UniPC do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Hook, Solver
from .coefficients import marginal, phis, step_order, zero_noise_limit
from .conversions import x0_from_eps
from .dpm_solver import dpm_solver_1_step
from .dpm_solver_pp import MultistepState
from .protocol import CountedModel, GeneratorArg, coef, time_like
from .validate import check_bool, check_choice

__all__ = ["DPMSolverMultistep", "dpm_solver_2m_step", "dpm_solver_3m_step", "dpm_solver_multistep_update"]


def dpm_solver_2m_step(
    x_s: Tensor, eps_s: Tensor, eps_p1: Tensor, alpha_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor, r0: Tensor
) -> Tensor:
    """DPM-Solver-2M (noise form) from s to t with the stored prediction eps_p1 of the previous grid time.

    x_s, eps_s, eps_p1 (B, *D); alpha_*, sigma_t, h, r0 float64 (1,) or (B,). Returns x_t (B, *D).
    """
    (phi_1,) = phis(h, 1)
    D = coef(1 + 1 / (2 * r0), x_s) * eps_s - coef(1 / (2 * r0), x_s) * eps_p1  # eps_s + D1 / 2
    # Lu et al. 2022b, Algorithm 2 (2M) in the noise form: x_t = a_t/a_s x_s - s_t h phi_1 (eps_s + D1 / 2)
    return coef(alpha_t / alpha_s, x_s) * x_s - coef(sigma_t * h * phi_1, x_s) * D


def dpm_solver_3m_step(
    x_s: Tensor,
    eps_s: Tensor,
    eps_p1: Tensor,
    eps_p2: Tensor,
    alpha_s: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    h: Tensor,
    r0: Tensor,
    r1: Tensor,
) -> Tensor:
    """DPM-Solver-3M (noise form) from s to t with the predictions eps_p1, eps_p2 of the two previous times.

    Shapes as in `dpm_solver_2m_step`; r1 float64 (1,) or (B,).
    """
    phi_1, phi_2, phi_3 = phis(h, 3)
    D1_0 = coef(1 / r0, x_s) * (eps_s - eps_p1)
    D1_1 = coef(1 / r1, x_s) * (eps_p1 - eps_p2)
    D1 = D1_0 + coef(r0 / (r0 + r1), x_s) * (D1_0 - D1_1)  # h eps' + O(h^3)
    D2 = coef(2 / (r0 + r1), x_s) * (D1_0 - D1_1)  # h^2 eps'' + O(h^3)
    # Lu et al. 2022b, 3M in the noise form: x_t = a_t/a_s x_s - s_t h (phi_1 eps_s + phi_2 D1 + phi_3 D2)
    return coef(alpha_t / alpha_s, x_s) * x_s - coef(sigma_t * h, x_s) * (
        coef(phi_1, x_s) * eps_s + coef(phi_2, x_s) * D1 + coef(phi_3, x_s) * D2
    )


def dpm_solver_multistep_update(
    x_s: Tensor,
    eps_s: Tensor,
    lam_s: Tensor,
    hist: tuple,
    alpha_s: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    h: Tensor,
    p: int,
) -> Tensor:
    """DPM-Solver-1 (p = 1, = DDIM), -2M or -3M from s to t.

    hist holds (lambda (1,), eps (B, *D)) of the earlier grid times, newest last; shapes otherwise as in
    `dpm_solver_2m_step`. Returns x_t (B, *D).
    """
    if p == 1:
        return dpm_solver_1_step(x_s, eps_s, alpha_s, alpha_t, sigma_t, h)
    lam_p1, eps_p1 = hist[-1]
    r0 = (lam_s - lam_p1) / h
    if p == 2:
        return dpm_solver_2m_step(x_s, eps_s, eps_p1, alpha_s, alpha_t, sigma_t, h, r0)
    lam_p2, eps_p2 = hist[-2]
    return dpm_solver_3m_step(x_s, eps_s, eps_p1, eps_p2, alpha_s, alpha_t, sigma_t, h, r0, (lam_p1 - lam_p2) / h)


@dataclass(frozen=True, kw_only=True)
class DPMSolverMultistep(Solver):
    """Multistep DPM-Solver, noise-prediction form (Lu et al. 2022b, arXiv:2211.01095).

    Options: `order` (1, 2 or 3; default 3: DPM-Solver-3M, more accurate than 2M at 5 to 20 evaluations
    on the analytic benchmark and on the digits model, docs/solvers.md; 2 before issue 18);
    `lower_order_final` (default True: on grids of fewer than 10 steps the last steps use orders 2 and 1);
    `denoise_final`. One evaluation per step: the model's eps at each grid time is stored, and the first
    steps ramp up from order 1.
    Order 1 is DDIM (eta = 0). A step to sigma_t = 0 returns alpha_t x0_s (module docstring).
    """

    name = "dpm_solver_multistep"
    description = "DPM-Solver-1/2M/3M: multistep exponential integrator, eps form (Lu et al. 2022b)"
    stochastic = False
    nfe_per_step = 1
    default_steps = 20
    default_grid = "uniform_lambda"

    order: int = 3  # 2 before issue 18 (docs/solvers.md, "Recommended configurations")
    lower_order_final: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_choice("order", self.order, (1, 2, 3))
        check_bool("lower_order_final", self.lower_order_final)

    def init(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg) -> MultistepState:
        return MultistepState(x=x, steps=ts.numel() - 1)

    def step(
        self, model: CountedModel, state: MultistepState, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> MultistepState:
        x = state.x
        s, t = s.to(torch.float64).reshape(1), t.to(torch.float64).reshape(1)
        alpha_s, sigma_s, lam_s = marginal(model.sde, s)
        alpha_t, sigma_t, lam_t = marginal(model.sde, t)
        eps_s = model.eps(x, time_like(s, x))
        x0_s = x0_from_eps(x, eps_s, alpha_s, sigma_s)
        warmup, lof = len(state.hist) + 1, self.lower_order_final
        p = step_order(self.order, state.i, state.steps, warmup=warmup, lower_order_final=lof)
        x_t = dpm_solver_multistep_update(x, eps_s, lam_s, state.hist, alpha_s, alpha_t, sigma_t, lam_t - lam_s, p)
        x_t = zero_noise_limit(x_t, x0_s, alpha_t, sigma_t)  # a step to sigma_t = 0 (t_end = 0 on VP)
        hist = (*state.hist, (lam_s, eps_s))[-2:]
        return MultistepState(x=x_t, x0=x0_s, hist=hist, i=state.i + 1, steps=state.steps)
