"""A small ground truth for testing `solvers` alone: two affine SDEs and Gaussian data, in closed form.

Written here rather than imported from `scoresde`, so that the solvers' tests run where `scoresde`
is not importable (tests/solvers/conftest.py blocks it when SOLVERS_ALONE=1).

LinearVP: beta(t) = b0 + (b1 - b0) t, log alpha = -(b0 t / 2 + (b1 - b0) t^2 / 4), sigma^2 = 1 - alpha^2.
ExponentialVE: alpha = 1, sigma = s0 (s1 / s0)^t. Data N(mu, diag(s^2)): p_t = N(alpha mu, alpha^2 s^2 + sigma^2),
and the probability-flow map carries x_t to x_u = alpha_u mu + (std_u / std_t) (x_t - alpha_t mu) per coordinate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.conversions import eps_from_x0, score_from_eps, v_from


class LinearVP:
    kind, T, t_eps, prior_std = "vp", 1.0, 1e-3, 1.0

    def __init__(self, b0: float = 0.1, b1: float = 20.0):
        self.b0, self.b1 = b0, b1

    def log_alpha(self, t: Tensor) -> Tensor:
        return -(self.b0 * t / 2 + (self.b1 - self.b0) * t**2 / 4)

    def alpha(self, t: Tensor) -> Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t: Tensor) -> Tensor:
        return (-torch.expm1(2 * self.log_alpha(t))).sqrt()

    def lambda_(self, t: Tensor) -> Tensor:
        return self.log_alpha(t) - self.sigma(t).log()

    def t_of_lambda(self, lam: Tensor) -> Tensor:
        log_alpha = 0.5 * torch.nn.functional.logsigmoid(2 * lam)  # alpha^2 = sigmoid(2 lambda)
        a, b = (self.b1 - self.b0) / 4, self.b0 / 2
        return (-b + (b * b - 4 * a * log_alpha).sqrt()) / (2 * a)

    def f(self, x: Tensor, t: Tensor) -> Tensor:
        return -0.5 * (self.b0 + (self.b1 - self.b0) * t).reshape(-1, *[1] * (x.ndim - 1)) * x

    def g(self, t: Tensor) -> Tensor:
        return (self.b0 + (self.b1 - self.b0) * t).sqrt()

    def prior_sample(self, shape, *, generator=None, device=None, dtype=None) -> Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype) * self.prior_std

    def prior_logp(self, z: Tensor) -> Tensor:
        d = z[0].numel()
        return -0.5 * d * math.log(2 * math.pi) - 0.5 * z.flatten(1).pow(2).sum(1)


class ExponentialVE(LinearVP):
    kind, t_eps = "ve", 1e-5

    def __init__(self, s0: float = 0.01, s1: float = 50.0):
        self.s0, self.s1 = s0, s1
        self.prior_std = s1

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.s0 * (self.s1 / self.s0) ** t

    def t_of_lambda(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.s0)) / math.log(self.s1 / self.s0)

    def f(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def g(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * math.log(self.s1 / self.s0))

    def prior_logp(self, z: Tensor) -> Tensor:
        d = z[0].numel()
        return -0.5 * d * math.log(2 * math.pi * self.s1**2) - 0.5 * z.flatten(1).pow(2).sum(1) / self.s1**2


class GaussianModel:
    """Exact predictions for data N(mu, diag(s^2)) of shape (D,) under `sde`."""

    def __init__(self, sde, mu: Tensor, s: Tensor):
        self.sde, self.mu, self.s = sde, mu, s

    def _std(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        return alpha, (alpha**2 * self.s**2 + sigma**2).sqrt()

    def x0(self, x: Tensor, t: Tensor) -> Tensor:
        alpha, std = self._std(t)
        return self.mu + alpha * self.s**2 / std**2 * (x - alpha * self.mu)  # E[x_0 | x_t]

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        return eps_from_x0(x, self.x0(x, t), self.sde.alpha(t), self.sde.sigma(t))

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        return score_from_eps(self.eps(x, t), self.sde.sigma(t))

    def v(self, x: Tensor, t: Tensor) -> Tensor:
        return v_from(self.x0(x, t), self.eps(x, t), self.sde.alpha(t), self.sde.sigma(t))

    def flow_map(self, x: Tensor, t: float, u: float) -> Tensor:
        """The probability-flow ODE's exact solution from time t to time u, x (B, D)."""
        tt, uu = (torch.full((x.shape[0],), float(v), dtype=x.dtype) for v in (t, u))
        (a_t, std_t), (a_u, std_u) = self._std(tt), self._std(uu)
        return a_u * self.mu + std_u / std_t * (x - a_t * self.mu)


def gaussian(kind: str = "vp") -> GaussianModel:
    sde = {"vp": LinearVP(), "ve": ExponentialVE()}[kind]
    return GaussianModel(sde, torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.3, 0.6], dtype=torch.float64))
