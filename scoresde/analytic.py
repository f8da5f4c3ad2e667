"""Ground truth: Gaussian and Gaussian-mixture data with exact scores and densities at every t.

If x_0 ~ sum_k w_k N(m_k, diag(s_k^2)) and x_t = alpha x_0 + sigma eps, then
p_t = sum_k w_k N(alpha m_k, diag(alpha^2 s_k^2 + sigma^2)) for every affine process. From it come,
in closed form, the score, E[x_0 | x_t] (hence eps and v), log p_t, exact samples, the divergence of
the probability-flow drift, and for a single Gaussian the probability-flow map itself. Use these as
the yardstick for solvers and likelihoods; they implement the solvers' Model protocol.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.protocol import GeneratorArg, bcast, randn

from .sde import AffineSDE

__all__ = ["AnalyticModel", "Gaussian", "GaussianMixture"]


class GaussianMixture:
    """Data law sum_k w_k N(m_k, diag(s_k^2)).

    weights (K,) positive (normalized here); means (K, *D); stds (K,) for isotropic components or
    (K, *D) for diagonal ones, all > 0. Tensors keep the dtype given (use float64 for exact tests).
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor):
        weights, means, stds = (torch.as_tensor(a) for a in (weights, means, stds))
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        if means.ndim < 2:
            raise ValueError(f"means must have shape (K, *D), got {tuple(means.shape)}")
        K = means.shape[0]
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape ({K},), got {tuple(weights.shape)}")
        if stds.shape == (K,):
            stds = stds.reshape(K, *([1] * (means.ndim - 1))).expand_as(means)
        if stds.shape != means.shape:
            raise ValueError(f"stds must have shape ({K},) or {tuple(means.shape)}, got {tuple(stds.shape)}")
        if not bool(torch.all(weights > 0)) or not bool(torch.all(stds > 0)):
            raise ValueError("weights and stds must be > 0")
        if not (bool(torch.isfinite(means).all()) and bool(torch.isfinite(stds).all()) and bool(torch.isfinite(weights).all())):
            raise ValueError("weights, means and stds must be finite")
        dtype = means.dtype
        self.log_weights = torch.log(weights.to(dtype) / weights.to(dtype).sum())
        self.means = means
        self.stds = stds.to(dtype).contiguous()

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape D of one data point."""
        return tuple(self.means.shape[1:])

    @property
    def dim(self) -> int:
        """Number of dimensions prod(D)."""
        return math.prod(self.shape)

    @property
    def weights(self) -> Tensor:
        return self.log_weights.exp()

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of the data at x (B, *D), in nats, (B,)."""
        one = torch.ones(1, dtype=x.dtype, device=x.device)
        return _mixture(self, x, one, 0 * one)[0]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples, (n, *D)."""
        return self._sample(n, 1.0, 0.0, generator)

    def _sample(self, n: int, alpha: float, sigma: float, generator: torch.Generator | None) -> Tensor:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        dev = self.means.device
        k = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=generator)
        z = randn((n, *self.shape), generator=generator, device=dev, dtype=self.means.dtype)
        x0 = self.means[k] + self.stds[k] * z
        if sigma == 0.0:
            return alpha * x0
        return alpha * x0 + sigma * randn((n, *self.shape), generator=generator, device=dev, dtype=self.means.dtype)


class Gaussian(GaussianMixture):
    """Data law N(mean, diag(std^2)): mean (*D); std a float or (*D)."""

    def __init__(self, mean: Tensor, std: float | Tensor = 1.0):
        mean = torch.as_tensor(mean)
        if not mean.is_floating_point():
            mean = mean.to(torch.get_default_dtype())
        std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
        std = std.expand_as(mean) if std.ndim == 0 else std
        if std.shape != mean.shape:
            raise ValueError(f"std must be a float or have the shape of mean {tuple(mean.shape)}, got {tuple(std.shape)}")
        super().__init__(torch.ones(1, dtype=mean.dtype, device=mean.device), mean[None], std[None])

    @property
    def mean(self) -> Tensor:
        return self.means[0]

    @property
    def std(self) -> Tensor:
        return self.stds[0]


def _mixture(data: GaussianMixture, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """log p_t(x) (B,), responsibilities r (B, K), per-component scores (B, K, *D), variances (B, K, *D)."""
    B = x.shape[0]
    means = data.means.to(x)  # (K, *D)
    a = alpha.reshape(-1, 1, *([1] * (x.ndim - 1)))  # (B or 1, 1, 1...)
    s = sigma.reshape(-1, 1, *([1] * (x.ndim - 1)))
    var = a**2 * data.stds.to(x) ** 2 + s**2  # (B, K, *D)
    diff = x[:, None] - a * means  # (B, K, *D)
    comp_logp = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).flatten(2).sum(2)  # (B, K)
    joint = data.log_weights.to(x) + comp_logp
    logp = torch.logsumexp(joint, dim=1)
    r = torch.softmax(joint, dim=1)
    return logp.expand(B), r, -diff / var, var.expand(B, *var.shape[1:])


class AnalyticModel:
    """Exact Model for Gaussian-mixture data under an affine process `sde`.

    eps / x0 / score / v (x (B, *D), t (B,)) -> (B, *D); log_prob(x, t) -> (B,) nats;
    pf_divergence(x, t) -> (B,); sample(n, t) exact samples of p_t; flow_map for one Gaussian.
    """

    def __init__(self, data: GaussianMixture, sde: AffineSDE):
        if not isinstance(data, GaussianMixture):
            raise ValueError(f"data must be a Gaussian or GaussianMixture, got {type(data).__name__}")
        self.data = data
        self.sde = sde

    def _coefs(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim != len(self.data.shape) + 1 or tuple(x.shape[1:]) != self.data.shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.data.shape))}), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        return self.sde.alpha(t).to(x), self.sde.sigma(t).to(x)

    def log_prob(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact log p_t(x), nats, (B,)."""
        return _mixture(self.data, x, *self._coefs(x, t))[0]

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """grad_x log p_t(x) = sum_k r_k(x) (-(x - alpha m_k) / v_k), (B, *D)."""
        _, r, scores, _ = _mixture(self.data, x, *self._coefs(x, t))
        return (bcast_k(r, scores) * scores).sum(1)

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        """E[eps | x_t] = -sigma score, (B, *D)."""
        _, sigma = self._coefs(x, t)
        return -bcast(sigma, x) * self.score(x, t)

    def x0(self, x: Tensor, t: Tensor) -> Tensor:
        """E[x_0 | x_t] = sum_k r_k (m_k + alpha s_k^2 (x - alpha m_k) / v_k), (B, *D)."""
        alpha, sigma = self._coefs(x, t)
        _, r, scores, _ = _mixture(self.data, x, alpha, sigma)
        a = alpha.reshape(-1, 1, *([1] * (x.ndim - 1)))
        post = self.data.means.to(x) - a * self.data.stds.to(x) ** 2 * scores  # (B, K, *D)
        return (bcast_k(r, post) * post).sum(1)

    def v(self, x: Tensor, t: Tensor) -> Tensor:
        """alpha E[eps | x_t] - sigma E[x_0 | x_t], (B, *D)."""
        alpha, sigma = self._coefs(x, t)
        return bcast(alpha, x) * self.eps(x, t) - bcast(sigma, x) * self.x0(x, t)

    def pf_divergence(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact divergence of the probability-flow drift f - g^2 score / 2, (B,).

        div score = sum_k r_k (div s_k + |s_k|^2) - |score|^2 with div s_k = -sum_i 1/v_k,i.
        """
        _, r, scores, var = _mixture(self.data, x, *self._coefs(x, t))
        score = (bcast_k(r, scores) * scores).sum(1)
        per_k = (-1.0 / var + scores**2).flatten(2).sum(2)  # (B, K)
        div_score = (r * per_k).sum(1) - score.flatten(1).pow(2).sum(1)
        d = self.data.dim
        return d * self.sde.dlog_alpha_dt(t).to(x) - 0.5 * self.sde.g2(t).to(x) * div_score

    def sample(self, n: int, t: float, *, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples of p_t, (n, *D); t a float in [0, T]."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        alpha, sigma = float(self.sde.alpha(tt)), float(self.sde.sigma(tt))
        return self.data._sample(n, alpha, sigma, generator)

    def flow_map(self, x: Tensor, t: Tensor | float, s: Tensor | float) -> Tensor:
        """Exact probability-flow map from time t to time s for Gaussian data, (B, *D).

        z = (x - alpha_t m) / sqrt(v_t) is constant along the flow (v = alpha^2 std^2 + sigma^2), so
        x_s = alpha_s m + sqrt(v_s / v_t) (x_t - alpha_t m). t and s are floats or (B,) tensors.
        """
        if self.data.means.shape[0] != 1:
            raise ValueError("flow_map is exact only for a single Gaussian; integrate the ODE for mixtures")
        B = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(B)
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device).reshape(-1).expand(B)
        m, std = self.data.mean.to(x), self.data.std.to(x)
        a_t, s_t = bcast(self.sde.alpha(t).to(x), x), bcast(self.sde.sigma(t).to(x), x)
        a_s, s_s = bcast(self.sde.alpha(s).to(x), x), bcast(self.sde.sigma(s).to(x), x)
        v_t, v_s = a_t**2 * std**2 + s_t**2, a_s**2 * std**2 + s_s**2
        return a_s * m + torch.sqrt(v_s / v_t) * (x - a_t * m)


def bcast_k(r: Tensor, x: Tensor) -> Tensor:
    """View responsibilities r (B, K) as (B, K, 1, ..., 1) against x (B, K, *D)."""
    return r.reshape(*r.shape, *([1] * (x.ndim - 2)))
