"""A discrete DDPM schedule (Ho et al. 2020; Nichol & Dhariwal 2021) seen as a continuous-time VP SDE."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.validate import check_int, check_name

from .sde import SDE, _vp_log_alpha_from_lambda, _vp_sigma, check_time

__all__ = ["DISCRETE_SCHEDULES", "DiscreteVPSDE", "ddpm_betas"]


DISCRETE_SCHEDULES = ("linear", "cosine")


def ddpm_betas(schedule: str, num_steps: int = 1000) -> Tensor:
    """Discrete DDPM betas (float64, (N,)).

    "linear": linspace(1e-4, 0.02, N) (Ho et al. 2020); "cosine": beta_n = min(1 - abar(n+1)/abar(n), 0.999)
    with abar(n) = cos^2(pi/2 (n/N + s)/(1 + s)), s = 0.008 (Nichol & Dhariwal 2021, Eq. 17).
    """
    check_name("schedule", schedule, DISCRETE_SCHEDULES)
    check_int("num_steps", num_steps, 2)
    if schedule == "linear":
        return torch.linspace(1e-4, 0.02, num_steps, dtype=torch.float64)
    s = 0.008
    n = torch.arange(num_steps + 1, dtype=torch.float64)
    abar = torch.cos(0.5 * math.pi * (n / num_steps + s) / (1 + s)) ** 2
    return torch.clamp(1 - abar[1:] / abar[:-1], max=0.999)


def _as_float64(name: str, values) -> Tensor:
    """values (a tensor or sequence of numbers) as a float64 tensor, else ValueError naming `name`."""
    try:
        return torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a tensor or sequence of numbers of shape (N,), got {type(values).__name__}") from None


class DiscreteVPSDE(SDE):
    """A discrete DDPM schedule seen as a continuous-time VP process.

    Give exactly one of `betas` (N,), `alphas_cumprod` (N,) or `schedule` ("linear": 1e-4..0.02,
    "cosine"; N = num_steps, default 1000). Knots t_n = (n + 1)/N carry log alpha_n = log(abar_n)/2;
    log alpha is piecewise linear in t between them and through (0, 0), so alpha(0) = 1,
    alpha(t_n)^2 = abar_n exactly, and T = 1. A network trained on integer timesteps n = 0..N-1
    sees the continuous index `timestep(t)` = t N - 1 (n at the knots). t_eps = 1/N (the first
    knot) for sampling and for likelihood.
    """

    kind = "vp"

    def __init__(
        self,
        betas: Tensor | None = None,
        *,
        alphas_cumprod: Tensor | None = None,
        schedule: str | None = None,
        num_steps: int = 1000,
    ):
        given = [name for name, v in (("betas", betas), ("alphas_cumprod", alphas_cumprod), ("schedule", schedule)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give one of betas, alphas_cumprod or schedule, got {given}")
        if not given:
            schedule = "linear"
        if schedule is not None:
            betas = ddpm_betas(schedule, num_steps)
        self.schedule = schedule
        if betas is not None:
            betas = _as_float64("betas", betas)
            if betas.ndim != 1 or betas.numel() < 2:
                raise ValueError(f"betas must have shape (N,) with N >= 2, got {tuple(betas.shape)}")
            if not bool(torch.all((betas > 0) & (betas < 1))):
                raise ValueError("betas must lie in (0, 1)")
            log_abar = torch.cumsum(torch.log1p(-betas), 0)
        else:
            abar = _as_float64("alphas_cumprod", alphas_cumprod)
            if abar.ndim != 1 or abar.numel() < 2:
                raise ValueError(f"alphas_cumprod must have shape (N,) with N >= 2, got {tuple(abar.shape)}")
            if not bool(torch.all((abar > 0) & (abar < 1))) or not bool(torch.all(abar[1:] < abar[:-1])):
                raise ValueError("alphas_cumprod must lie in (0, 1) and decrease strictly")
            log_abar = torch.log(abar)
        self.N = log_abar.numel()
        self.t_eps = self.t_eps_likelihood = 1.0 / self.N
        # knots (0, 0), (t_n, log alpha_n); float64 on the CPU, moved to t's device when used
        self._knots_t = torch.arange(self.N + 1, dtype=torch.float64) / self.N
        self._knots_log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * log_abar])
        self._slopes = torch.diff(self._knots_log_alpha) * self.N

    @property
    def alphas_cumprod(self) -> Tensor:
        """abar_n, (N,) float64."""
        return torch.exp(2.0 * self._knots_log_alpha[1:])

    def _config(self) -> dict:
        if self.schedule is not None:
            return {"schedule": self.schedule, "num_steps": self.N}
        return {"alphas_cumprod": self.alphas_cumprod.tolist()}

    def _segment(self, t: Tensor) -> Tensor:
        # index k of the segment [t_k, t_{k+1}] holding t (k in 0..N-1)
        return torch.clamp(torch.floor(t.to(torch.float64) * self.N).long(), 0, self.N - 1)

    def _log_alpha(self, t: Tensor) -> Tensor:
        k = self._segment(t)
        knots = self._knots_log_alpha.to(t.device)
        slopes = self._slopes.to(t.device)
        t0 = k.to(torch.float64) / self.N
        return (knots[k] + slopes[k] * (t.to(torch.float64) - t0)).to(t.dtype)

    def _sigma(self, t: Tensor) -> Tensor:
        return _vp_sigma(self._log_alpha(t))

    def _dlog_alpha_dt(self, t: Tensor) -> Tensor:
        return self._slopes.to(t.device)[self._segment(t)].to(t.dtype)

    def _g2(self, t: Tensor) -> Tensor:
        return -2.0 * self._dlog_alpha_dt(t)

    def _t_of_lambda(self, lam: Tensor) -> Tensor:
        return self._t_of_log_alpha(_vp_log_alpha_from_lambda(lam))

    def _t_of_log_alpha(self, log_alpha: Tensor) -> Tensor:
        # invert the decreasing piecewise-linear log alpha: find the segment, then solve linearly
        knots = -self._knots_log_alpha.to(log_alpha.device)  # increasing
        la = log_alpha.to(torch.float64)
        k = torch.clamp(torch.searchsorted(knots, -la.contiguous()) - 1, 0, self.N - 1)
        t = k.to(torch.float64) / self.N + (la - self._knots_log_alpha.to(la.device)[k]) / self._slopes.to(la.device)[k]
        return t.to(log_alpha.dtype)

    def timestep(self, t: Tensor) -> Tensor:
        """Continuous index t N - 1 of a network trained on integer timesteps 0..N-1, (B,)."""
        check_time(t, self.T)
        return t * self.N - 1.0

    def t_of_timestep(self, n: Tensor) -> Tensor:
        """Inverse of `timestep`: t = (n + 1) / N, (B,) float."""
        n = torch.as_tensor(n)
        return (n.to(torch.float64 if not n.is_floating_point() else n.dtype) + 1.0) / self.N


