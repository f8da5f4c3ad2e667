"""Multistep consistency sampling (Song et al. 2023, arXiv:2303.01469, Algorithm 1) for any affine SDE.

The model's data prediction x0 is taken as the consistency function f(x, t), the point at the grid's last
time t_end of the probability-flow trajectory through x (a `scoresde.fewstep.ConsistencyModel`'s x0 is f;
the exact one of an analytic Gaussian is `scoresde.fewstep.consistency.FlowMapConsistency`). On the grid
T = ts[0] > ts[1] > ... > ts[N] = t_end:

    x0 = f(x_T, T);  for each later grid time t < ts[0] other than t_end:
        x_t = (alpha_t / alpha_e) x0 + alpha_t sqrt(nu_t^2 - nu_e^2) z,  x0 = f(x_t, t),

nu = sigma / alpha the noise level and alpha_e, nu_e those at t_end; the sample is the last x0. The
re-noising is the exact forward transition from t_end to t, which on VE (alpha = 1) is Algorithm 1's
x0 + sqrt(tau^2 - eps^2) z; with the exact consistency function and an exact draw of p_T, every step count
gives exact samples of p_{t_end}. steps = 1 is one evaluation; N steps are N evaluations. The intermediate
times are the grid's: a grid name and steps, or a tensor (`times_grid(sde, times)` builds [T, *times, t_eps]).

With a diffusion model, x0 is the denoiser E[x_0 | x_t] and this is plain multistep denoising (blurry
samples): the solver is meant for consistency models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Hook, Solver, State
from .protocol import SDE, CountedModel, GeneratorArg, coef, randn_like, time_like
from .validate import check_number

__all__ = ["Consistency", "ConsistencyState", "boundary_time", "renoise_update", "times_grid"]


def renoise_update(x0: Tensor, z: Tensor, alpha_e: Tensor, sigma_e: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """x_t drawn from the forward transition of the boundary point x0 at t_end to the noisier time t.

    Shapes: x0, z (B, *D); alpha_*, sigma_* (1,) or (B,) (e: at t_end). Returns (B, *D).
    """
    nu_e, nu_t = sigma_e / alpha_e, sigma_t / alpha_t
    # Song et al. 2023, Algorithm 1: x = x0 + sqrt(tau^2 - eps^2) z, in the noise level nu and rescaled by alpha
    return coef(alpha_t / alpha_e, x0) * x0 + coef(alpha_t * torch.sqrt(nu_t**2 - nu_e**2), x0) * z


def times_grid(sde: SDE, times: Sequence[float], *, t_start: float | None = None, t_end: float | None = None) -> Tensor:
    """The grid [t_start, *times, t_end] (float64, decreasing) for consistency sampling at the given intermediate
    times (t_start = T, t_end = t_eps when None); times must decrease strictly inside (t_end, t_start)."""
    t0 = float(sde.T) if t_start is None else check_number("t_start", t_start, 0.0, float(sde.T))
    t1 = float(sde.t_eps) if t_end is None else check_number("t_end", t_end, 0.0, t0, high_open=True)
    if isinstance(times, (str, bytes)) or not isinstance(times, Sequence):
        raise ValueError(f"times must be a sequence of floats, got {times!r}"[:300])
    inner = [check_number(f"times[{i}]", v, t1, t0, low_open=True, high_open=True) for i, v in enumerate(times)]
    if any(b >= a for a, b in zip(inner, inner[1:])):
        raise ValueError(f"times must be strictly decreasing, got {list(times)}")
    return torch.tensor([t0, *inner, t1], dtype=torch.float64)


def boundary_time(model) -> float | None:
    """The consistency boundary time t_eps of `model` or of a model it wraps (through `.model`), or None for a
    model without one (a plain diffusion model: then f is its denoiser and any t_end goes)."""
    seen = set()
    while model is not None and id(model) not in seen:
        seen.add(id(model))
        t_eps = getattr(model, "t_eps", None)
        if isinstance(t_eps, (int, float)) and not isinstance(t_eps, bool):
            return float(t_eps)
        model = getattr(model, "model", None)
    return None


@dataclass(frozen=True)
class ConsistencyState(State):
    """State plus the grid's last time t_end (0-d float64), from which each step re-noises."""

    t_end: Tensor | None = None


@dataclass(frozen=True, kw_only=True)
class Consistency(Solver):
    """Multistep consistency sampling: one evaluation of the consistency function (the model's x0) per step.

    Deterministic with steps = 1; each later step draws its noise from `generator`. It has no convergence
    order in the grid (`order` = 0): its error is the consistency function's.
    """

    name = "consistency"
    description = "multistep consistency sampling (Song et al. 2023, Alg. 1): a consistency model in 1-4 evaluations"
    order = 0
    stochastic = True
    nfe_per_step = 1
    default_steps = 1
    default_grid = "karras"

    def init(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg) -> ConsistencyState:
        t_eps = boundary_time(model)
        if t_eps is not None and not math.isclose(float(ts[-1]), t_eps, rel_tol=1e-9, abs_tol=1e-12):
            # f maps to the model's t_eps while the re-noising starts from ts[-1]: they must be the same time
            raise ValueError(f"the grid ends at t_end={float(ts[-1])!r} but the consistency model's boundary time is "
                             f"t_eps={t_eps!r}: pass t_end={t_eps!r} (or a grid ending there)")
        return ConsistencyState(x=x, t_end=ts[-1])

    def step(self, model: CountedModel, state: ConsistencyState, s: Tensor, t: Tensor, *, generator: GeneratorArg,
             hook: Hook) -> ConsistencyState:
        x0 = model.x0(state.x, time_like(s, state.x))
        if bool(t == state.t_end):
            return ConsistencyState(x=x0, x0=x0, t_end=state.t_end)
        et = torch.stack([state.t_end.reshape(()), t.reshape(())]).to(torch.float64)
        alpha, sigma = model.sde.alpha(et), model.sde.sigma(et)
        x_t = renoise_update(x0, randn_like(x0, generator), alpha[:1], sigma[:1], alpha[1:], sigma[1:])
        return ConsistencyState(x=x_t, x0=x0, t_end=state.t_end)
