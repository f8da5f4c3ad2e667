"""The bases of the exact models (`scoresde.analytic`): a data law and a Model of it at every t.

A data law (`DataLaw`) knows its exact log-density and exact samples of x_t = alpha x_0 + sigma eps
for given alpha, sigma; an exact model (`ExactModel`) pairs one with an affine process and answers
log p_t, v and exact samples of p_t from them. Subclasses: `GaussianMixture` / `AnalyticModel`
(`scoresde.analytic`) and `CorrelatedGaussian` / `CorrelatedGaussianModel` (`scoresde.analytic_correlated`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.protocol import bcast

from .sde import SDE

__all__ = ["DataLaw", "ExactModel", "floating"]


def floating(a) -> Tensor:
    """a as a tensor of a floating dtype (integers become the default dtype)."""
    a = torch.as_tensor(a)
    return a if a.is_floating_point() else a.to(torch.get_default_dtype())


class DataLaw:
    """What the data laws share: exact log-density and samples of x_t = alpha x_0 + sigma eps.

    A subclass has `shape` (D of one point) and implements `_log_prob(x, alpha, sigma)` (B,) and
    `_sample(n, alpha, sigma, generator)` (n, *D), alpha and sigma being floats or (B,) or (1,) tensors.
    """

    shape: tuple[int, ...]

    @property
    def dim(self) -> int:
        """Number of dimensions d = prod(D)."""
        return math.prod(self.shape)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of the data at x (B, *D), in nats, (B,)."""
        one = torch.ones(1, dtype=x.dtype, device=x.device)
        return self._log_prob(x, one, 0 * one)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples, (n, *D)."""
        return self._sample(n, 1.0, 0.0, generator)


class ExactModel:
    """What the exact models share: the data law `data` (a `DataLaw` of type `_data_type`) under the
    affine process `sde`; shape checks, log p_t, v from eps and x0, and exact samples of p_t."""

    _data_type: type = DataLaw
    _data_name: str = "data law"

    def __init__(self, data: DataLaw, sde: SDE):
        if not isinstance(data, self._data_type):
            raise ValueError(f"data must be a {self._data_name}, got {type(data).__name__}")
        self.data = data
        self.sde = sde

    def _coefs(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """alpha(t), sigma(t) (B,) in x's dtype, after checking x (B, *D) and t (B,)."""
        if x.ndim != len(self.data.shape) + 1 or tuple(x.shape[1:]) != self.data.shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.data.shape))}), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        return self.sde.alpha(t).to(x), self.sde.sigma(t).to(x)

    def log_prob(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact log p_t(x), nats, (B,)."""
        return self.data._log_prob(x, *self._coefs(x, t))

    def _v(self, x: Tensor, t: Tensor, *y) -> Tensor:
        alpha, sigma = self._coefs(x, t)
        return bcast(alpha, x) * self.eps(x, t, *y) - bcast(sigma, x) * self.x0(x, t, *y)

    def v(self, x: Tensor, t: Tensor) -> Tensor:
        """alpha E[eps | x_t] - sigma E[x_0 | x_t], (B, *D)."""
        return self._v(x, t)

    def sample(self, n: int, t: float, *, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples of p_t, (n, *D); t a float in [0, T]."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        alpha, sigma = float(self.sde.alpha(tt)), float(self.sde.sigma(tt))
        return self.data._sample(n, alpha, sigma, generator)
