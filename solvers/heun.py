"""Heun's second-order sampler of EDM (Karras et al. 2022, arXiv:2206.00364, Algorithm 2), any affine process.

Notation (EDM -> here): EDM's sigma is the noise level n = sigma / alpha = exp(-lambda); EDM's x is
the scaled state y = x / alpha; D(y; n) is E[x_0 | x_t]; d = (y - D) / n equals the model's eps.
In these coordinates the probability-flow ODE of every affine process is dy/dn = eps(alpha y, t(n))
(Karras et al. 2022, Eq. 4 with s(t) = alpha, sigma(t) = n), which Heun's method integrates on the
grid's noise levels.

Churn (Algorithm 2, lines 4-6): with S_churn > 0, each step whose noise level lies in [S_min, S_max]
first raises it to n_hat = n (1 + gamma), gamma = min(S_churn / N, sqrt(2) - 1), adding noise of
std S_noise sqrt(n_hat^2 - n^2). n_hat is capped at the noise level of the process at T (the model
is not defined beyond T). An instance built with S_churn > 0 is stochastic (its `stochastic`
attribute is True); with S_churn = 0 (default) it is Algorithm 1, the deterministic Heun sampler.
Every step is a Heun step (two evaluations) except a last step to noise level 0 (ts[-1] = 0 for
VP), which is an Euler step as in the algorithm.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Callback, Sampler, report
from .protocol import CountedModel, GeneratorArg, bcast, randn_like, time_like


def churn_update(y: Tensor, n_cur: Tensor, n_hat: Tensor, S_noise: float, z: Tensor) -> Tensor:
    """Raise the noise level of y from n_cur to n_hat; y, z (B, *D), n_* (B,)."""
    # Karras et al. 2022, Algorithm 2, line 6: x_hat = x + sqrt(t_hat^2 - t^2) S_noise eps
    return y + bcast(S_noise * (n_hat**2 - n_cur**2).sqrt(), y) * z


def euler_update(y: Tensor, d: Tensor, n_cur: Tensor, n_next: Tensor) -> Tensor:
    """Euler step of dy/dn = d from n_cur to n_next; y, d (B, *D), n_* (B,)."""
    # Karras et al. 2022, Algorithm 2, line 8: x_{i+1} = x_hat + (t_{i+1} - t_hat) d_i
    return y + bcast(n_next - n_cur, y) * d


def heun_update(y: Tensor, d: Tensor, d_next: Tensor, n_cur: Tensor, n_next: Tensor) -> Tensor:
    """Heun (trapezoidal) correction from n_cur to n_next; y, d, d_next (B, *D), n_* (B,)."""
    # Karras et al. 2022, Algorithm 2, line 11: x_{i+1} = x_hat + (t_{i+1} - t_hat) (d_i + d'_i) / 2
    return y + bcast(n_next - n_cur, y) * (0.5 * (d + d_next))


class Heun(Sampler):
    """EDM Heun sampler (Algorithm 2; Algorithm 1 when S_churn = 0); order 2, two evaluations per step."""

    name = "heun"
    description = "EDM Heun sampler, 2nd order, optional churn (Karras et al. 2022, Alg. 1-2)"
    order = 2
    stochastic = False
    nfe_per_step = 2
    default_steps = 18
    default_grid = "karras"

    def __init__(
        self,
        *,
        S_churn: float = 0.0,
        S_min: float = 0.0,
        S_max: float = math.inf,
        S_noise: float = 1.0,
        denoise_final: bool = False,
    ):
        super().__init__(denoise_final=denoise_final)
        for key, value in (("S_churn", S_churn), ("S_min", S_min), ("S_noise", S_noise)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value < math.inf):
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
        if isinstance(S_max, bool) or not isinstance(S_max, (int, float)) or not (S_max >= S_min):
            raise ValueError(f"S_max must be a number >= S_min={S_min} (math.inf allowed), got {S_max!r}")
        self.S_churn, self.S_min, self.S_max, self.S_noise = float(S_churn), float(S_min), float(S_max), float(S_noise)
        if self.S_churn > 0:
            self.stochastic = True

    def options(self) -> dict:
        return {k: v for k, v in super().options().items() if k != "stochastic"}

    def integrate(
        self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg, callback: Callback | None
    ) -> Tensor:
        sde = model.sde
        ts = ts.to(torch.float64)
        alpha, noise = sde.alpha(ts), torch.exp(-sde.lambda_(ts))  # (N + 1,)
        n_max = float(torch.exp(-sde.lambda_(torch.tensor([sde.T], dtype=torch.float64))))
        levels = noise.tolist()  # host copy for the churn and last-step decisions, once per call
        N = len(ts) - 1
        gamma_max = min(self.S_churn / N, math.sqrt(2) - 1)
        y = x / bcast(time_like(alpha[0], x), x)
        for i in range(N):
            t_hat, n_hat = ts[i], noise[i]
            churn = self.S_churn > 0 and self.S_min <= levels[i] <= self.S_max
            if churn and min(levels[i] * (1 + gamma_max), n_max) > levels[i]:
                n_hat = torch.tensor(min(levels[i] * (1 + gamma_max), n_max), dtype=torch.float64, device=ts.device)
                t_hat = torch.clamp(sde.t_of_lambda(-torch.log(n_hat).reshape(1))[0], max=sde.T)
                y = churn_update(y, time_like(noise[i], y), time_like(n_hat, y), self.S_noise, randn_like(y, generator))
            x_hat = bcast(time_like(sde.alpha(t_hat.reshape(1)), y), y) * y
            d = model.eps(x_hat, time_like(t_hat, y))
            n_cur, n_next = time_like(n_hat, y), time_like(noise[i + 1], y)
            y_next = euler_update(y, d, n_cur, n_next)
            if levels[i + 1] > 0:
                x_next = bcast(time_like(alpha[i + 1], y), y) * y_next
                y_next = heun_update(y, d, model.eps(x_next, time_like(ts[i + 1], y)), n_cur, n_next)
            x0 = y - bcast(n_cur, y) * d  # D(y_hat; n_hat) = y_hat - n_hat d
            y = y_next
            report(callback, i, ts[i + 1], bcast(time_like(alpha[i + 1], y), y) * y, x0, model)
        return bcast(time_like(alpha[-1], y), y) * y
