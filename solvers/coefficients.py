"""Coefficients of exponential integrators in log-SNR, in one convention, and the marginals of a grid step.

With lambda = log(alpha / sigma), the probability-flow ODE of every affine SDE has the exact solutions
(Lu et al. 2022, arXiv:2206.00927, Eq. 3.4; Lu et al. 2022b, arXiv:2211.01095, Eq. 9), for a step from
s to the less noisy t, h = lambda_t - lambda_s > 0:

    x_t = alpha_t / alpha_s x_s - sigma_t int_0^h e^{h - u} eps(lambda_s + u) du            (noise form)
    x_t = sigma_t / sigma_s x_s + alpha_t int_0^h e^{-(h - u)} x0(lambda_s + u) du          (data form)

Expanding the prediction in u, int_0^h e^{z (h - u) / h} u^k / k! du = h^{k+1} phi_{k+1}(z) with the
standard phi functions of exponential integrators (Hochbruck & Ostermann 2010, Acta Numerica):

    phi_1(z) = (e^z - 1) / z,    phi_{k+1}(z) = (phi_k(z) - 1 / k!) / z,

so the noise form uses z = h and the data form z = -h. Every solver in this package (DPM-Solver,
DPM-Solver++, UniPC, the likelihood's fixed-budget integrator) takes its weights from `phis`.
Grids, coefficients and times are float64 and are cast where they meet x.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .protocol import SDE, coef

__all__ = [
    "LOWER_ORDER_FINAL_STEPS", "StepCoefficients", "grid_time", "marginal", "phis", "step_coefficients",
    "step_order", "zero_noise_limit",
]

# lower_order_final applies on grids with fewer steps than this (as in Lu et al.'s reference code,
# whose docstring says "< 15" while the code uses 10; we use and test 10)
LOWER_ORDER_FINAL_STEPS = 10


def phis(z: Tensor, n: int) -> list[Tensor]:
    """[phi_1(z), ..., phi_n(z)] by phi_1 = expm1(z) / z, phi_{k+1} = (phi_k - 1/k!) / z; z float64, z != 0."""
    out = [torch.expm1(z) / z]
    for k in range(1, n):
        out.append((out[-1] - 1.0 / math.factorial(k)) / z)
    return out


def zero_noise_limit(x_t: Tensor, x0_s: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """x_t, except where the step ends at sigma_t = 0 (lambda_t = +inf, e.g. t_end = 0 on VP): there alpha_t x0_s.

    At sigma_t = 0 the exponential-integrator weights are inf * 0 (h = inf), but the exact limit of
    the step as lambda_t -> inf is finite: both forms tend to x_t = alpha_t x0_s, the data prediction at
    the step's start (e.g. sigma_t h phi_1(h) = alpha_t sigma_s / alpha_s - sigma_t in the noise form).
    x_t, x0_s (B, *D); alpha_t, sigma_t float64 (1,) or (B,). A `torch.where`, so no host sync.
    """
    limit = coef(alpha_t, x0_s) * x0_s
    return torch.where(coef(sigma_t, x_t) == 0, limit.to(x_t.dtype), x_t)


class StepCoefficients(NamedTuple):
    """alpha, sigma at the step's start s and end t, and h = lambda_t - lambda_s (float64)."""

    alpha_s: Tensor
    sigma_s: Tensor
    alpha_t: Tensor
    sigma_t: Tensor
    h: Tensor


def step_coefficients(sde: SDE, t_cur: Tensor, t_next: Tensor) -> StepCoefficients:
    """alpha, sigma at t_cur (s) and t_next (t) and h = lambda_t - lambda_s, all 0-d float64."""
    ts = torch.stack([t_cur.reshape(()), t_next.reshape(())]).to(torch.float64)
    alpha, sigma, lam = sde.alpha(ts), sde.sigma(ts), sde.lambda_(ts)
    return StepCoefficients(alpha[0], sigma[0], alpha[1], sigma[1], lam[1] - lam[0])


def marginal(sde: SDE, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """alpha, sigma, lambda at the float64 time(s) t (shape (1,) or (B,))."""
    return sde.alpha(t), sde.sigma(t), sde.lambda_(t)


def grid_time(ts: Tensor, i: int) -> Tensor:
    """Grid entry i as a float64 tensor of shape (1,)."""
    return ts[i].to(torch.float64).reshape(1)


def step_order(order: int, i: int, steps: int, *, warmup: int | None, lower_order_final: bool) -> int:
    """Order used on step i of `steps`.

    Multistep methods ramp up (warmup = number of stored model outputs); with `lower_order_final` the
    last steps of a short grid (fewer than LOWER_ORDER_FINAL_STEPS steps) drop to orders 2, 1 so
    that the final, stiffest steps near t_eps stay stable (as Lu et al. 2022b do for few steps).
    """
    p = order if warmup is None else min(order, warmup)
    if lower_order_final and steps < LOWER_ORDER_FINAL_STEPS:
        p = min(p, steps - i)
    return p
