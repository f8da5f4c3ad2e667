"""Ground truth: Gaussian and Gaussian-mixture data with exact scores and densities at every t.

If x_0 ~ sum_k w_k N(m_k, diag(s_k^2)) and x_t = alpha x_0 + sigma eps, then
p_t = sum_k w_k N(alpha m_k, diag(alpha^2 s_k^2 + sigma^2)) for every affine process. From it come,
in closed form, the score, E[x_0 | x_t] (hence eps and v), log p_t, exact samples, the divergence of
the probability-flow drift, and for a single Gaussian the probability-flow map itself. Use these as
the yardstick for solvers and likelihoods; they implement the solvers' Model protocol.

For conditional generation: `ConditionalAnalyticModel` (one mixture component per class: exact
conditional and unconditional predictions and the exact noisy classifier log p(y | x_t)), and
`CorrelatedGaussian` / `CorrelatedGaussianModel` (full covariance, exact at every t, with the
exact Gaussian conditional of some coordinates given the others, for inpainting; defined in
`scoresde.analytic_correlated`, the shared bases in `scoresde.analytic_base`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.protocol import bcast, randn
from solvers.validate import check_int

from .analytic_base import DataLaw, ExactModel, floating
from .analytic_correlated import CorrelatedGaussian, CorrelatedGaussianModel
from .sde import SDE

__all__ = [
    "AnalyticModel", "ConditionalAnalyticModel", "CorrelatedGaussian", "CorrelatedGaussianModel", "Gaussian",
    "GaussianMixture",
]


def _per_component(v: Tensor, x: Tensor) -> Tensor:
    """View per-sample values v (B,) or (1,) as (B, 1, 1, ..., 1) against per-component tensors (B, K, *D)."""
    return v.reshape(-1, 1, *([1] * (x.ndim - 1)))


class GaussianMixture(DataLaw):
    """Data law sum_k w_k N(m_k, diag(s_k^2)).

    weights (K,) positive (normalized here); means (K, *D); stds (K,) for isotropic components or
    (K, *D) for diagonal ones, all > 0. Tensors keep the dtype given (use float64 for exact tests).
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor):
        weights, means, stds = torch.as_tensor(weights), floating(means), torch.as_tensor(stds)
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
    def weights(self) -> Tensor:
        return self.log_weights.exp()

    def _log_prob(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        return _mixture(self, x, alpha, sigma)[0]

    def _sample(self, n: int, alpha: float, sigma: float, generator: torch.Generator | None) -> Tensor:
        check_int("n", n, 1)
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
        mean = floating(mean)
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


def _joint(data: GaussianMixture, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """log w_k + log N(x; alpha m_k, v_k) (B, K), x - alpha m_k (B, K, *D) and v_k = alpha^2 s_k^2 + sigma^2.

    The log-densities (B, K) are in float64 (x's dtype on MPS, which has none): squared distances
    overflow float32 from |x| ~ 1e19, and responsibilities of all -inf logits would be NaN.
    """
    a, s = _per_component(alpha, x), _per_component(sigma, x)  # (B or 1, 1, 1...)
    var = a**2 * data.stds.to(x) ** 2 + s**2  # (B, K, *D)
    diff = x[:, None] - a * data.means.to(x)  # (B, K, *D)
    wide = x.dtype if x.device.type == "mps" else torch.promote_types(x.dtype, torch.float64)
    d, v = diff.to(wide), var.to(wide)
    comp_logp = -0.5 * (d**2 / v + torch.log(2 * math.pi * v)).flatten(2).sum(2)  # (B, K)
    return data.log_weights.to(wide) + comp_logp, diff, var


def _mixture(data: GaussianMixture, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """log p_t(x) (B,), responsibilities r (B, K), per-component scores (B, K, *D), variances (B, K, *D)."""
    B = x.shape[0]
    joint, diff, var = _joint(data, x, alpha, sigma)
    logp = torch.logsumexp(joint, dim=1).to(x.dtype)
    r = torch.softmax(joint, dim=1).to(x.dtype)
    return logp.expand(B), r, -diff / var, var.expand(B, *var.shape[1:])


def bcast_k(r: Tensor, x: Tensor) -> Tensor:
    """View responsibilities r (B, K) as (B, K, 1, ..., 1) against x (B, K, *D)."""
    return r.reshape(*r.shape, *([1] * (x.ndim - 2)))


class AnalyticModel(ExactModel):
    """Exact Model for Gaussian-mixture data under an affine process `sde`.

    eps / x0 / score / v (x (B, *D), t (B,)) -> (B, *D); log_prob(x, t) -> (B,) nats;
    pf_divergence(x, t) -> (B,); sample(n, t) exact samples of p_t; flow_map for one Gaussian.
    """

    _data_type = GaussianMixture
    _data_name = "Gaussian or GaussianMixture"

    def _posterior(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """alpha, sigma (B,), component weights r (B, K) (the responsibilities p(k | x_t)) and
        per-component scores (B, K, *D)."""
        alpha, sigma = self._coefs(x, t)
        _, r, scores, _ = _mixture(self.data, x, alpha, sigma)
        return alpha, sigma, r, scores

    def _score(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        _, _, r, scores = self._posterior(x, t, y)
        return (bcast_k(r, scores) * scores).sum(1)

    def _x0(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        alpha, _, r, scores = self._posterior(x, t, y)
        post = self.data.means.to(x) - _per_component(alpha, x) * self.data.stds.to(x) ** 2 * scores  # (B, K, *D)
        return (bcast_k(r, post) * post).sum(1)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """grad_x log p_t(x) = sum_k r_k(x) (-(x - alpha m_k) / v_k), (B, *D)."""
        return self._score(x, t)

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        """E[eps | x_t] = -sigma score, (B, *D)."""
        _, sigma = self._coefs(x, t)
        return -bcast(sigma, x) * self.score(x, t)

    def x0(self, x: Tensor, t: Tensor) -> Tensor:
        """E[x_0 | x_t] = sum_k r_k (m_k + alpha s_k^2 (x - alpha m_k) / v_k), (B, *D)."""
        return self._x0(x, t)

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


class ConditionalAnalyticModel(AnalyticModel):
    """Exact class-conditional Model: class k of the mixture `data` is its component k.

    eps / x0 / score / v (x (B, *D), t (B,), y=None) -> (B, *D). y is None (the unconditional
    mixture p_t(x)) or integer labels (B,) in 0..K, K = num_classes; label K = `null_label` means
    unconditional for that sample (the convention of the class-conditional U-Net, whose learned
    null class is K). For y = k the law is the single component k: p_t(x | y = k) =
    N(alpha m_k, diag(alpha^2 s_k^2 + sigma^2)). `class_logits(x, t)` is the exact noisy classifier
    log p(y | x_t) (B, K), for classifier guidance.
    """

    def __init__(self, data: GaussianMixture, sde: SDE):
        super().__init__(data, sde)
        self.num_classes = data.means.shape[0]
        self.null_label = self.num_classes

    def _labels(self, y: Tensor, x: Tensor) -> Tensor:
        if not isinstance(y, Tensor) or y.shape != (x.shape[0],) or y.is_floating_point() or y.is_complex():
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y must be an integer tensor of shape ({x.shape[0]},), got {shape}")
        if y.device.type == "cpu" and bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(f"labels y must lie in 0..{self.num_classes} ({self.num_classes} = null, unconditional)")
        return y.to(x.device)

    def _posterior(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """As `AnalyticModel._posterior`, with the weights one-hot(y) for conditional rows."""
        alpha, sigma, r, scores = super()._posterior(x, t)
        if y is not None:
            y = self._labels(y, x)
            onehot = torch.nn.functional.one_hot(y.clamp(max=self.num_classes - 1), self.num_classes).to(r)
            r = torch.where((y == self.null_label)[:, None], r, onehot)
        return alpha, sigma, r, scores

    def score(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """grad_x log p_t(x | y) (grad_x log p_t(x) where y is None or null), (B, *D)."""
        return self._score(x, t, y)

    def eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """E[eps | x_t, y] = -sigma score, (B, *D)."""
        _, sigma = self._coefs(x, t)
        return -bcast(sigma, x) * self.score(x, t, y)

    def x0(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """E[x_0 | x_t, y] = sum_k w_k (m_k + alpha s_k^2 (x - alpha m_k) / v_k), (B, *D)."""
        return self._x0(x, t, y)

    def v(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """alpha E[eps | x_t, y] - sigma E[x_0 | x_t, y], (B, *D)."""
        return self._v(x, t, y)

    def class_logits(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact noisy classifier log p(y = k | x_t) for k = 0..K-1, nats, (B, K) (normalized logits).

        log p(k | x_t) = log w_k + log N(x_t; alpha m_k, v_k) - log p_t(x_t). Takes t itself as its
        noise input, so it serves `ClassifierGuidedModel(..., c_noise="t")` directly.
        """
        joint, _, _ = _joint(self.data, x, *self._coefs(x, t))
        return torch.log_softmax(joint, dim=1).to(x.dtype)

    def log_prob(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Exact log p_t(x | y) (log p_t(x) where y is None or null), nats, (B,)."""
        logp = super().log_prob(x, t)
        if y is None:
            return logp
        y = self._labels(y, x)
        k = y.clamp(max=self.num_classes - 1)
        # log N_k(x) = log p_t(x) + log p(k | x_t) - log w_k
        cond = logp + self.class_logits(x, t).gather(1, k[:, None])[:, 0] - self.data.log_weights.to(x)[k]
        return torch.where(y == self.null_label, logp, cond)

    def sample(self, n: int, t: float, *, y: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples of p_t(x | y) (of p_t(x) when y is None), (n, *D); t a float in [0, T]."""
        if y is None:
            return super().sample(n, t, generator=generator)
        if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < self.num_classes:
            raise ValueError(f"y must be None or an integer class in 0..{self.num_classes - 1}, got {y!r}")
        data = self.data
        one = GaussianMixture(torch.ones(1, dtype=data.means.dtype), data.means[y : y + 1], data.stds[y : y + 1])
        return AnalyticModel(one, self.sde).sample(n, t, generator=generator)
