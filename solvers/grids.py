"""Time grids for sampling: (N + 1,) float64 tensors decreasing from t_start to t_end.

Every builder takes the process (for T, t_eps and the log-SNR map) and the number of steps N.
Defaults: t_start = process.T, t_end = process.t_eps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .protocol import Process


def _ends(process: Process, steps: int, t_start: float | None, t_end: float | None) -> tuple[float, float]:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    t0 = float(process.T if t_start is None else t_start)
    t1 = float(process.t_eps if t_end is None else t_end)
    if not (0.0 <= t1 < t0 <= process.T):
        raise ValueError(f"need 0 <= t_end < t_start <= T={process.T}, got t_start={t0}, t_end={t1}")
    return t0, t1


def uniform_t(process: Process, steps: int, *, t_start: float | None = None, t_end: float | None = None) -> Tensor:
    """N steps uniform in t."""
    t0, t1 = _ends(process, steps, t_start, t_end)
    return torch.linspace(t0, t1, steps + 1, dtype=torch.float64)


def quadratic_t(process: Process, steps: int, *, t_start: float | None = None, t_end: float | None = None) -> Tensor:
    """N steps uniform in sqrt(t) (DPM-Solver's "time_quadratic"), denser near t_end."""
    t0, t1 = _ends(process, steps, t_start, t_end)
    return torch.linspace(math.sqrt(t0), math.sqrt(t1), steps + 1, dtype=torch.float64) ** 2


def uniform_lambda(process: Process, steps: int, *, t_start: float | None = None, t_end: float | None = None) -> Tensor:
    """N steps uniform in log-SNR lambda = log(alpha / sigma) (DPM-Solver's "logSNR")."""
    t0, t1 = _ends(process, steps, t_start, t_end)
    ends = torch.tensor([t0, t1], dtype=torch.float64)
    lam = process.lambda_(ends)
    ts = process.t_of_lambda(torch.linspace(float(lam[0]), float(lam[1]), steps + 1, dtype=torch.float64))
    ts[0], ts[-1] = t0, t1  # remove round-off at the ends
    return ts


def karras(
    process: Process, steps: int, *, rho: float = 7.0, t_start: float | None = None, t_end: float | None = None
) -> Tensor:
    """EDM grid (Karras et al. 2022, arXiv:2206.00364, Eq. 5) in noise level sigma/alpha = exp(-lambda).

    noise_i = (n_max^(1/rho) + i/N (n_min^(1/rho) - n_max^(1/rho)))^rho, mapped back to t.
    """
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")
    t0, t1 = _ends(process, steps, t_start, t_end)
    lam = process.lambda_(torch.tensor([t0, t1], dtype=torch.float64))
    n_max, n_min = torch.exp(-lam[0]), torch.exp(-lam[1])
    frac = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    noise = (n_max ** (1 / rho) + frac * (n_min ** (1 / rho) - n_max ** (1 / rho))) ** rho
    ts = process.t_of_lambda(-torch.log(noise))
    ts[0], ts[-1] = t0, t1
    return ts


GRIDS = {"uniform_t": uniform_t, "quadratic_t": quadratic_t, "uniform_lambda": uniform_lambda, "karras": karras}


def make(name: str, process: Process, steps: int, **options) -> Tensor:
    """Build the grid `name` (one of GRIDS)."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose one of {sorted(GRIDS)}")
    return GRIDS[name](process, steps, **options)
