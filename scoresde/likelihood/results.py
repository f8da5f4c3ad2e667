"""The likelihood's result type, bits/dim, uniform dequantization and Monte-Carlo standard errors.

Data lie in [-1, 1]; log-likelihoods are nats per sample, bits/dim = -logp / (d ln 2) with d = prod(D).
docs/likelihood.md derives the dequantization bound and its offset log2(K / 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from solvers.protocol import GeneratorArg, randn
from solvers.validate import check_int

__all__ = ["Likelihood", "bpd_from_logp", "dequantization_offset", "dequantize"]


@dataclass(frozen=True)
class Likelihood:
    """Result of `log_likelihood` / `bits_per_dim`.

    logp: (B,) log-likelihood in nats per sample (for `bits_per_dim` with `levels`, the lower bound
      on the log-probability of the discrete data); bpd: (B,) = -logp / (d ln 2), bits per
      dimension, d = prod(D); z: (B, *D) latent x(T) (of the first dequantization draw);
    nfe: ODE right-hand-side evaluations, all repeats together;
    logp_se, bpd_se: (B,) Monte-Carlo standard error of logp and bpd over the random probes and
      dequantization draws (0 when nothing is random, NaN when a single draw cannot estimate it);
      ODE discretization error is not included;
    settings: read-only mapping of everything that determined the result: method, rtol, atol,
      steps, grid, variable, t_eps, T, divergence, probe, n_probes, levels, repeats,
      dequantization (None where an option does not apply).
    """

    logp: Tensor
    bpd: Tensor
    z: Tensor
    nfe: int
    logp_se: Tensor
    bpd_se: Tensor
    settings: Mapping[str, object]


def check_data(x) -> None:
    """ValueError unless x is a finite float tensor of shape (B, *D) with B >= 1 and at least one dimension,
    whose squared norm per sample is finite in its dtype (the Gaussian log-densities and the ODE solver's
    error norms square it: |x| ~ 1e19 overflows float32)."""
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        got = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a float tensor of shape (B, *D) with B >= 1, got {got}")
    if x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(f"x must be a float tensor of shape (B, *D) with B >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    if not bool(torch.isfinite(x.flatten(1).square().sum(1)).all()):
        raise ValueError(f"x is too large for {x.dtype}: the sum of its squares overflows (largest |x| "
                         f"{float(x.abs().max()):.3g}); pass x in float64")


def checked(check: Callable, *args, message: str, **kwargs):
    """check(*args, **kwargs), a `solvers.validate` check, raising ValueError(message) in place of its own."""
    try:
        return check(*args, **kwargs)
    except ValueError:
        raise ValueError(message) from None


def dequantization_offset(levels: int) -> float:
    """Bits per dimension added to the continuous code length of dequantized data, log2(levels / 2).

    Data in [-1, 1] with K levels sit in bins of width 2/K; P(bin) >= (2/K)^d exp(E_u log p(x + u))
    (Jensen), so -log2 P / d <= E_u[-log2 p] / d + log2(K / 2): 7 bits for K = 256 (8-bit images),
    log2(8.5) ≈ 3.09 bits for K = 17 (scikit-learn digits). Derivation in docs/likelihood.md.
    """
    check_levels(levels)
    return math.log2(levels / 2)


def bpd_from_logp(logp: Tensor, dim: int) -> Tensor:
    """Bits per dimension -logp / (dim ln 2) of log-likelihoods logp (B,) in nats of dim-dimensional data.

    No offset is added here: pass the discrete log-probability bound (as `bits_per_dim` returns in
    `logp`) for quantized data, log p(x) for continuous data.
    """
    return -logp / (dim * math.log(2.0))


def dequantize(x: Tensor, levels: int, *, generator: GeneratorArg = None) -> Tensor:
    """Uniformly dequantize data x (B, *D) on the K-level grid {-1 + 2k/(K-1)} of [-1, 1].

    Convention (that of 8-bit images read as k/255 and scaled to [-1, 1], and of Song et al.'s
    code): level k = (x + 1)(K - 1)/2 owns the bin [-1 + 2k/K, -1 + 2(k+1)/K) of width 2/K, and the
    result is -1 + 2(k + u)/K with u ~ U(0, 1)^d drawn from `generator` (one torch.Generator or one
    per sample). Raises ValueError when x is off the grid. Returns x's shape, dtype and device.
    """
    k = levels_of(x, levels)
    # u = Phi(n) with n ~ N(0, 1) is exactly U(0, 1) (probability integral transform); drawing n with
    # the one noise helper keeps per-sample generators and devices handled in one place
    u = torch.special.ndtr(randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
    return -1.0 + 2.0 * (k + u) / levels


# the most levels bits_per_dim takes: with more, the grid spacing 2 / (levels - 1) falls under the
# tolerance of the on-grid check (1e-3 of a level) only in name: at 2**40 any float data passes it
MAX_LEVELS = 2**16


def check_levels(levels) -> None:
    """ValueError unless levels is an integer in [2, MAX_LEVELS = 2**16]."""
    message = f"levels must be an integer >= 2 (256 for 8-bit data, 17 for digits) or None, got {levels!r}"
    checked(check_int, "levels", levels, 2, message=message)
    if levels > MAX_LEVELS:
        raise ValueError(f"levels must be at most {MAX_LEVELS} (16-bit data), got {levels!r}: with more, "
                         "the check that x lies on the grid of levels would pass for any data")


def levels_of(x: Tensor, levels: int) -> Tensor:
    """Integer levels k (as x's dtype) of x on the grid {-1 + 2k/(K-1)}; ValueError when off the grid."""
    check_levels(levels)
    k_real = (x + 1.0) * (levels - 1) / 2.0
    k = torch.round(k_real)
    # validation at the boundary (one host sync per call)
    off = float((k_real - k).abs().max()) if x.numel() else 0.0
    if off > 1e-3 or bool((k < 0).any()) or bool((k > levels - 1).any()):
        raise ValueError(
            f"x is not on the grid of {levels} levels {{-1 + 2k/{levels - 1} : k = 0..{levels - 1}}} "
            f"(largest distance {off:.3g} levels); pass levels=None for continuous data"
        )
    return k


def standard_error(draws: Tensor) -> Tensor:
    """Standard error of the mean of iid draws (B, n); NaN for n = 1."""
    n = draws.shape[1]
    if n == 1:
        return torch.full_like(draws[:, 0], float("nan"))
    return draws.std(1) / math.sqrt(n)
