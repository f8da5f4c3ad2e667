"""The exact super-resolution stage for Gaussian data: the yardstick of the cascade (`scoresde.latent.cascade`).

High-resolution data x ~ N(m, C) (d = prod(D) dims); its low-resolution version is P x, P the f x f
average pooling (d_l = d / f^2 rows). Noise-conditioning augmentation (Ho et al. 2021, arXiv:2106.15282,
Sec. 4.2) shows the SR stage w = a P x + b e, e ~ N(0, I), with a = alpha(s), b = sigma(s) of the
augmentation process at level s. (x, w) is jointly Gaussian, so x | w is Gaussian (Schur complement):

    K = a C P^T (a^2 P C P^T + b^2 I)^-1,   mean = m + K (w - a P m),   cov = C - a K P C.

At s = 0 (a = 1, b = 0) this is the law of x given its low-resolution image itself, a singular Gaussian
of rank d - d_l (P x is fixed). Under the diffusion, x_t | w ~ N(alpha mean, alpha^2 cov + sigma^2 I),
which `ExactConditionalGaussian` answers in cov's eigenbasis (eigenvalues >= 0: the singular case is
fine for every t > 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from solvers.protocol import bcast

from ..analytic_correlated import CorrelatedGaussian
from ..sde import SDE

__all__ = ["ExactConditionalGaussian", "ExactGaussianSR", "pool_matrix"]


def pool_matrix(shape: tuple[int, int, int], factor: int, *, dtype=torch.float64) -> Tensor:
    """The f x f average pooling of images (C, H, W) as a matrix (d_l, d) on flattened data."""
    d = shape[0] * shape[1] * shape[2]
    eye = torch.eye(d, dtype=dtype).reshape(d, *shape)
    return F.avg_pool2d(eye, factor).reshape(d, -1).T.contiguous()


class ExactConditionalGaussian:
    """Exact Model of x_t for x ~ N(mean_b, cov) per sample b: mean (B, *D), cov (d, d) symmetric PSD.

    eps / x0 / score / v (x (B, *D), t (B,)) -> (B, *D); `sde` the affine process. Stored as cov = U
    diag(lam) U^T (eigenvalues within 1e-10 of the largest below 0 are taken as 0).
    """

    def __init__(self, mean: Tensor, cov: Tensor, sde: SDE):
        lam, U = torch.linalg.eigh(cov)
        if float(lam.min()) < -1e-10 * float(lam.abs().max()):
            raise ValueError(f"cov must be positive semi-definite, got smallest eigenvalue {float(lam.min())}")
        self.mean, self.cov, self.sde = mean, cov, sde
        self.eigvals, self.eigvecs = lam.clamp(min=0), U

    def _eigen(self, x: Tensor, t: Tensor, gain) -> Tensor:
        """U diag(gain(alpha, sigma, lam)) U^T (x - alpha mean), (B, *D)."""
        if x.shape != self.mean.shape and (x.ndim != self.mean.ndim or x.shape[1:] != self.mean.shape[1:]
                                           or self.mean.shape[0] != 1):
            raise ValueError(f"x must have shape {tuple(self.mean.shape)}, got {tuple(x.shape)}")
        a = self.sde.alpha(t).to(x).reshape(-1, 1)
        s = self.sde.sigma(t).to(x).reshape(-1, 1)
        w = (x.flatten(1) - a * self.mean.to(x).flatten(1)) @ self.eigvecs.to(x)
        return ((gain(a, s, self.eigvals.to(x)) * w) @ self.eigvecs.to(x).T).reshape(x.shape)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """-(alpha^2 cov + sigma^2 I)^-1 (x - alpha mean), (B, *D)."""
        return self._eigen(x, t, lambda a, s, lam: -1.0 / (a**2 * lam + s**2))

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        """E[eps | x_t] = -sigma score, (B, *D)."""
        return self._eigen(x, t, lambda a, s, lam: s / (a**2 * lam + s**2))

    def x0(self, x: Tensor, t: Tensor) -> Tensor:
        """E[x_0 | x_t] = mean + alpha cov (alpha^2 cov + sigma^2 I)^-1 (x - alpha mean), (B, *D)."""
        return self.mean.to(x) + self._eigen(x, t, lambda a, s, lam: a * lam / (a**2 * lam + s**2))

    def v(self, x: Tensor, t: Tensor) -> Tensor:
        """alpha eps - sigma x0, (B, *D)."""
        alpha, sigma = self.sde.alpha(t).to(x), self.sde.sigma(t).to(x)
        return bcast(alpha, x) * self.eps(x, t) - bcast(sigma, x) * self.x0(x, t)


class ExactGaussianSR:
    """The exact SR stage of `scoresde.latent.cascade` for data `data` (a CorrelatedGaussian on (C, H, W)).

    sde: the high-resolution diffusion; aug_sde: the augmentation process (default sde); factor: f.
    `conditional_law(w, s)`: the exact law of x given augmented low-resolution images w (B, C, H/f, W/f)
    at level s; `conditioned(w, s)`: its exact Model (`ExactConditionalGaussian`).
    """

    def __init__(self, data: CorrelatedGaussian, sde: SDE, factor: int, *, aug_sde: SDE | None = None):
        if not isinstance(data, CorrelatedGaussian) or len(data.shape) != 3:
            raise ValueError(f"data must be a CorrelatedGaussian on images (C, H, W), got {data!r}")
        C, H, W = data.shape
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or H % factor or W % factor:
            raise ValueError(f"factor must be a positive int dividing H = {H} and W = {W}, got {factor!r}")
        self.data, self.sde, self.factor = data, sde, factor
        self.aug_sde = sde if aug_sde is None else aug_sde
        self.image_shape = data.shape
        self.low_shape = (C, H // factor, W // factor)
        self.pool = pool_matrix(data.shape, factor, dtype=data.mean.dtype)

    def low_res_law(self) -> CorrelatedGaussian:
        """The law of P x: N(P m, P C P^T) on (C, H/f, W/f)."""
        P, C = self.pool, self.data.cov
        return CorrelatedGaussian((P @ self.data.mean.reshape(-1)).reshape(self.low_shape), P @ C @ P.T)

    def conditional_law(self, w: Tensor, s: float) -> tuple[Tensor, Tensor]:
        """Mean (B, *D) and covariance (d, d) of x given w = a P x + b e (a, b the aug process at s)."""
        tt = torch.tensor([float(s)], dtype=torch.float64)
        a = float(self.aug_sde.alpha(tt)) if s > 0 else 1.0
        b = float(self.aug_sde.sigma(tt)) if s > 0 else 0.0
        P, C, m = self.pool, self.data.cov, self.data.mean.reshape(-1)
        S = a**2 * P @ C @ P.T + b**2 * torch.eye(P.shape[0], dtype=C.dtype)
        K = torch.linalg.solve(S, a * P @ C).T  # a C P^T S^-1, (d, d_l)
        mean = m + (w.flatten(1).to(C) - a * P @ m) @ K.T
        cov = C - a * K @ P @ C
        return mean.reshape(w.shape[0], *self.image_shape), (cov + cov.T) / 2

    def conditioned(self, w: Tensor, s: float) -> ExactConditionalGaussian:
        """The exact Model of the high-resolution x_t given w (B, *low_shape) at augmentation level s."""
        mean, cov = self.conditional_law(w, s)
        return ExactConditionalGaussian(mean, cov, self.sde)
