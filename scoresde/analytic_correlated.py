"""Exact correlated Gaussian data N(mean, cov) with a full covariance, and its exact Model at every t.

If x_0 ~ N(m, C) and x_t = alpha x_0 + sigma eps, then p_t = N(alpha m, alpha^2 C + sigma^2 I): in the
eigenbasis of C every quantity is diagonal. `CorrelatedGaussian.conditional` gives the exact law of
some coordinates given the others, the yardstick for inpainting. Re-exported by `scoresde.analytic`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.protocol import randn
from solvers.validate import check_int

from .analytic_base import DataLaw, ExactModel, floating

__all__ = ["CorrelatedGaussian", "CorrelatedGaussianModel"]


class CorrelatedGaussian(DataLaw):
    """Data law N(mean, cov) with a full covariance: mean (*D); cov (d, d) symmetric positive
    definite, d = prod(D), indexing the flattened data. Keeps the dtype given (float64 for tests).

    Stored as the eigendecomposition cov = U diag(lam) U^T, which also diagonalizes every noisy
    marginal: cov_t = alpha^2 cov + sigma^2 I = U diag(alpha^2 lam + sigma^2) U^T.
    """

    def __init__(self, mean: Tensor, cov: Tensor):
        mean = floating(mean)
        if mean.ndim < 1:
            raise ValueError(f"mean must have shape (*D) with at least one dimension, got {tuple(mean.shape)}")
        d = mean.numel()
        cov = torch.as_tensor(cov, dtype=mean.dtype, device=mean.device)
        if cov.shape != (d, d):
            raise ValueError(f"cov must have shape ({d}, {d}) for mean of shape {tuple(mean.shape)}, got {tuple(cov.shape)}")
        if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(cov).all())):
            raise ValueError("mean and cov must be finite")
        if not torch.allclose(cov, cov.T, rtol=1e-10, atol=1e-12 * float(cov.abs().max())):
            raise ValueError("cov must be symmetric")
        lam, U = torch.linalg.eigh(cov)
        if not bool(lam.min() > 0):
            raise ValueError(f"cov must be positive definite, got smallest eigenvalue {float(lam.min())}")
        self.mean, self.cov, self.eigvals, self.eigvecs = mean, cov, lam, U

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape D of one data point."""
        return tuple(self.mean.shape)

    def _whitened(self, x: Tensor, a: Tensor) -> Tensor:
        """U^T (x - a m) per sample, (B, d); a (B, 1) or (1, 1)."""
        return (x.flatten(1) - a * self.mean.to(x).reshape(1, -1)) @ self.eigvecs.to(x)

    def _log_prob(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """log N(x; alpha m, alpha^2 C + sigma^2 I) for x (B, *D), alpha and sigma (B,) or (1,); (B,)."""
        a, s = alpha.reshape(-1, 1), sigma.reshape(-1, 1)
        var = a**2 * self.eigvals.to(x) + s**2  # (B, d) eigenvalues of cov_t
        w = self._whitened(x, a)
        return -0.5 * (w**2 / var + torch.log(2 * math.pi * var)).sum(1)

    def _sample(self, n: int, alpha: float, sigma: float, generator: torch.Generator | None) -> Tensor:
        check_int("n", n, 1)
        std = torch.sqrt(alpha**2 * self.eigvals + sigma**2)  # (d,) in the eigenbasis
        z = randn((n, self.dim), generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return (alpha * self.mean.reshape(1, -1) + (z * std) @ self.eigvecs.T).reshape(n, *self.shape)

    def conditional(self, known: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Exact law of the unknown coordinates given the known ones (Gaussian conditioning).

        known (*D) values (read where mask is True); mask (*D) bool, True where known. Returns the
        mean (u,) and covariance (u, u) of the u unknown coordinates, in flattened order:
        m_u + C_uk C_kk^-1 (x_k - m_k) and C_uu - C_uk C_kk^-1 C_ku.
        """
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.mean.device)
        if mask.shape != self.mean.shape or tuple(known.shape) != self.shape:
            raise ValueError(f"known and mask must have shape {self.shape}, got {tuple(known.shape)} and {tuple(mask.shape)}")
        k, u = mask.reshape(-1), ~mask.reshape(-1)
        m, C, xk = self.mean.reshape(-1), self.cov, known.reshape(-1).to(self.mean)
        gain = torch.linalg.solve(C[k][:, k], C[k][:, u]).T  # C_uk C_kk^-1, (u, k)
        return m[u] + gain @ (xk[k] - m[k]), C[u][:, u] - gain @ C[k][:, u]


class CorrelatedGaussianModel(ExactModel):
    """Exact Model for correlated Gaussian data N(m, C) under an affine process `sde`.

    p_t = N(alpha m, cov_t), cov_t = alpha^2 C + sigma^2 I, so in the eigenbasis of C everything is
    diagonal: score = -cov_t^-1 (x - alpha m), E[x_0 | x_t] = m + alpha C cov_t^-1 (x - alpha m).
    eps / x0 / score / v (x (B, *D), t (B,)) -> (B, *D); log_prob(x, t) -> (B,) nats;
    sample(n, t) exact samples of p_t. The yardstick for inpainting, where the exact conditional
    law of the unknown coordinates is `data.conditional(known, mask)`.
    """

    _data_type = CorrelatedGaussian
    _data_name = "CorrelatedGaussian"

    def _eigen(self, x: Tensor, t: Tensor, gain) -> Tensor:
        """U diag(gain(alpha, sigma, lam)) U^T (x - alpha m), (B, *D)."""
        alpha, sigma = self._coefs(x, t)
        a, s = alpha.reshape(-1, 1), sigma.reshape(-1, 1)
        w = self.data._whitened(x, a)
        return ((gain(a, s, self.data.eigvals.to(x)) * w) @ self.data.eigvecs.to(x).T).reshape(x.shape)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """grad_x log p_t(x) = -cov_t^-1 (x - alpha m), (B, *D)."""
        return self._eigen(x, t, lambda a, s, lam: -1.0 / (a**2 * lam + s**2))

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        """E[eps | x_t] = sigma cov_t^-1 (x - alpha m), (B, *D)."""
        return self._eigen(x, t, lambda a, s, lam: s / (a**2 * lam + s**2))

    def x0(self, x: Tensor, t: Tensor) -> Tensor:
        """E[x_0 | x_t] = m + alpha C cov_t^-1 (x - alpha m), (B, *D)."""
        shift = self._eigen(x, t, lambda a, s, lam: a * lam / (a**2 * lam + s**2))
        return self.data.mean.to(x) + shift
