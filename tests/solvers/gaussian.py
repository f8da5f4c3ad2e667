"""A small ground truth for testing `solvers` alone: two affine SDEs and Gaussian (mixture) data, in closed form.

Written here rather than imported from `scoresde`, so that the solvers' tests run where `scoresde`
is not importable (tests/solvers/conftest.py blocks it when SOLVERS_ALONE=1);
tests/scoresde/test_solvers_on_every_sde.py checks that it agrees with scoresde's VPSDE, VESDE and AnalyticModel.

LinearVP: beta(t) = b0 + (b1 - b0) t, log alpha = -(b0 t / 2 + (b1 - b0) t^2 / 4), sigma^2 = 1 - alpha^2.
ExponentialVE: alpha = 1, sigma = s0 (s1 / s0)^t. Data sum_k w_k N(m_k, diag(s_k^2)) of shape (D,):
p_t = sum_k w_k N(alpha m_k, diag(v_k)), v_k = alpha^2 s_k^2 + sigma^2, so with the responsibilities r_k(x_t)
score = -sum_k r_k (x - alpha m_k) / v_k and E[x_0 | x_t] = sum_k r_k (m_k + alpha s_k^2 (x - alpha m_k) / v_k).
For one Gaussian the probability-flow map carries x_t to x_u = alpha_u m + sqrt(v_u / v_t) (x_t - alpha_t m).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.protocol import randn

F64 = torch.float64


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
        a, b = (self.b1 - self.b0) / 4, self.b0 / 2  # a t^2 + b t + log_alpha = 0, the cancellation-free root
        return -2 * log_alpha / (b + (b * b - 4 * a * log_alpha).sqrt())

    def f(self, x: Tensor, t: Tensor) -> Tensor:
        return -0.5 * (self.b0 + (self.b1 - self.b0) * t).reshape(-1, *[1] * (x.ndim - 1)) * x

    def g(self, t: Tensor) -> Tensor:
        return (self.b0 + (self.b1 - self.b0) * t).sqrt()

    def prior_sample(self, shape, *, generator=None, device=None, dtype=None) -> Tensor:
        return self.prior_std * randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: Tensor) -> Tensor:
        d = z[0].numel()
        s2 = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * z.flatten(1).pow(2).sum(1) / s2


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


def make_sde(kind: str):
    return {"vp": LinearVP(), "ve": ExponentialVE()}[kind]


class MixtureModel:
    """Exact predictions for data sum_k w_k N(m_k, diag(s_k^2)) under `sde`: weights (K,), means (K, D),
    stds (K,) or (K, D); x (B, D), t (B,) -> (B, D) in x's dtype."""

    def __init__(self, sde, weights: Tensor, means: Tensor, stds: Tensor):
        self.sde, self.means = sde, means
        self.log_weights = torch.log(weights / weights.sum())
        self.stds = (stds[:, None] if stds.ndim == 1 else stds).expand_as(means)

    def _posterior(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """alpha (B, 1, 1), responsibilities (B, K, 1), x - alpha m_k and v_k (B, K, D)."""
        alpha, sigma = (c(t).to(x)[:, None, None] for c in (self.sde.alpha, self.sde.sigma))
        var = alpha**2 * self.stds.to(x) ** 2 + sigma**2
        diff = x[:, None] - alpha * self.means.to(x)
        joint = self.log_weights.to(x) - 0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(2)
        return alpha, torch.softmax(joint, dim=1)[..., None], diff, var

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        _, r, diff, var = self._posterior(x, t)
        return -(r * diff / var).sum(1)

    def x0(self, x: Tensor, t: Tensor) -> Tensor:
        alpha, r, diff, var = self._posterior(x, t)
        return (r * (self.means.to(x) + alpha * self.stds.to(x) ** 2 * diff / var)).sum(1)

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        return -self.sde.sigma(t).to(x)[:, None] * self.score(x, t)

    def v(self, x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.sde.alpha(t).to(x)[:, None], self.sde.sigma(t).to(x)[:, None]
        return alpha * self.eps(x, t) - sigma * self.x0(x, t)


class GaussianModel(MixtureModel):
    """Exact predictions for data N(mean, diag(std^2)) of shape (D,) under `sde`; std a float or (D,)."""

    def __init__(self, sde, mean: Tensor, std: float | Tensor):
        std = torch.as_tensor(std, dtype=mean.dtype).expand_as(mean)
        super().__init__(sde, torch.ones(1, dtype=mean.dtype), mean[None], std[None])
        self.mean, self.std = mean, std

    def flow_map(self, x: Tensor, t: float | Tensor, u: float | Tensor) -> Tensor:
        """The probability-flow ODE's exact solution from time t to time u (floats or (B,) tensors), x (B, D)."""
        tt, uu = (torch.as_tensor(v, dtype=F64).reshape(-1).expand(x.shape[0]) for v in (t, u))
        a_t, s_t, a_u, s_u = (c(v).to(x)[:, None] for v in (tt, uu) for c in (self.sde.alpha, self.sde.sigma))
        m, std = self.mean.to(x), self.std.to(x)
        v_t, v_u = a_t**2 * std**2 + s_t**2, a_u**2 * std**2 + s_u**2
        return a_u * m + (v_u / v_t).sqrt() * (x - a_t * m)


def gaussian(kind: str = "vp") -> GaussianModel:
    return GaussianModel(make_sde(kind), torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.3, 0.6], dtype=F64))


def mixture(kind: str = "vp", dtype: torch.dtype = F64) -> MixtureModel:
    """Two well-separated components in 2-D: 0.3 N((-1, 0.5), 0.3^2 I) + 0.7 N((1.5, 0), 0.5^2 I)."""
    return MixtureModel(
        make_sde(kind),
        torch.tensor([0.3, 0.7], dtype=dtype),
        torch.tensor([[-1.0, 0.5], [1.5, 0.0]], dtype=dtype),
        torch.tensor([0.3, 0.5], dtype=dtype),
    )
