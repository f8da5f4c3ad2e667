"""Time grids for sampling: (N + 1,) float64 tensors decreasing from t_start to t_end.

Every builder takes the sde (for T, t_eps and the log-SNR map) and the number of steps N.
Defaults: t_start = sde.T, t_end = sde.t_eps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .protocol import SDE
from .validate import check_int, check_name, check_number

MAX_STEPS = 1_000_000  # a grid of more steps is never meant (and 2**31 of them would not fit in memory)


def _ends(sde: SDE, steps: int, t_start: float | None, t_end: float | None) -> tuple[float, float]:
    check_int("steps", steps, 1, MAX_STEPS)
    t0 = float(sde.T) if t_start is None else check_number("t_start", t_start)
    t1 = float(sde.t_eps) if t_end is None else check_number("t_end", t_end)
    if not (0.0 <= t1 < t0 <= sde.T):
        raise ValueError(f"need 0 <= t_end < t_start <= T={sde.T}, got t_start={t0}, t_end={t1}")
    return t0, t1


def _decreasing(ts: Tensor, name: str, steps: int, t0: float, t1: float, extra: str = "") -> Tensor:
    """ts itself, unless round-off made two of its times equal (or NaN): a ValueError naming the arguments."""
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"grid {name!r} with steps={steps}, t_start={t0}, t_end={t1}{extra} is not strictly "
                         "decreasing in float64: fewer steps or a wider interval" + (", or rho nearer 7" if extra else ""))
    return ts


def uniform_t(sde: SDE, steps: int, *, t_start: float | None = None, t_end: float | None = None) -> Tensor:
    """N steps uniform in t."""
    t0, t1 = _ends(sde, steps, t_start, t_end)
    return _decreasing(torch.linspace(t0, t1, steps + 1, dtype=torch.float64), "uniform_t", steps, t0, t1)


def quadratic_t(sde: SDE, steps: int, *, t_start: float | None = None, t_end: float | None = None) -> Tensor:
    """N steps uniform in sqrt(t) (DPM-Solver's "time_quadratic"), denser near t_end."""
    t0, t1 = _ends(sde, steps, t_start, t_end)
    ts = torch.linspace(math.sqrt(t0), math.sqrt(t1), steps + 1, dtype=torch.float64) ** 2
    return _decreasing(ts, "quadratic_t", steps, t0, t1)


def uniform_lambda(sde: SDE, steps: int, *, t_start: float | None = None, t_end: float | None = None) -> Tensor:
    """N steps uniform in log-SNR lambda = log(alpha / sigma) (DPM-Solver's "logSNR")."""
    t0, t1 = _ends(sde, steps, t_start, t_end)
    ends = torch.tensor([t0, t1], dtype=torch.float64)
    lam = sde.lambda_(ends)
    if not bool(torch.isfinite(lam).all()):
        raise ValueError(
            f"grid 'uniform_lambda' needs a finite log-SNR at both ends, got lambda={lam.tolist()} at "
            f"t_start={t0}, t_end={t1} (sigma(t) = 0 at t = 0 on VP and sub-VP): use t_end > 0 or another grid"
        )
    ts = sde.t_of_lambda(torch.linspace(float(lam[0]), float(lam[1]), steps + 1, dtype=torch.float64))
    ts[0], ts[-1] = t0, t1  # remove round-off at the ends
    return _decreasing(ts, "uniform_lambda", steps, t0, t1)


def karras(
    sde: SDE, steps: int, *, rho: float = 7.0, t_start: float | None = None, t_end: float | None = None
) -> Tensor:
    """EDM grid (Karras et al. 2022, arXiv:2206.00364, Eq. 5) in noise level sigma/alpha = exp(-lambda).

    noise_i = (n_max^(1/rho) + i/N (n_min^(1/rho) - n_max^(1/rho)))^rho, mapped back to t.
    Computed in logs, log noise_i = log n_max + rho log1p(i/N expm1((log n_min - log n_max) / rho)),
    so that no power overflows for small rho or rounds to 1 for large rho.
    """
    check_number("rho", rho, 0, low_open=True)
    t0, t1 = _ends(sde, steps, t_start, t_end)
    lam = sde.lambda_(torch.tensor([t0, t1], dtype=torch.float64))
    frac = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    # log noise = -lambda; Karras et al. 2022, Eq. 5 in logs
    log_noise = -lam[0] + rho * torch.log1p(frac * torch.expm1((lam[0] - lam[1]) / rho))
    log_noise[0], log_noise[-1] = -lam[0], -lam[1]  # the ends exactly (log1p(-1) = -inf for tiny rho)
    ts = sde.t_of_lambda(-log_noise)
    ts[0], ts[-1] = t0, t1
    return _decreasing(ts, "karras", steps, t0, t1, f", rho={rho}")


GRIDS = {"uniform_t": uniform_t, "quadratic_t": quadratic_t, "uniform_lambda": uniform_lambda, "karras": karras}


def make(name: str, sde: SDE, steps: int, **options) -> Tensor:
    """Build the grid `name` (one of GRIDS)."""
    check_name("grid", name, sorted(GRIDS))
    return GRIDS[name](sde, steps, **options)
