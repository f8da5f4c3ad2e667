"""Heun's second-order sampler of EDM (Karras et al. 2022, arXiv:2206.00364, Algorithm 2), any affine process.

Notation (EDM -> here): EDM's sigma is the noise level n = sigma / alpha = exp(-lambda); EDM's x is
the scaled state y = x / alpha; D(y; n) is E[x_0 | x_t]; d = (y - D) / n equals the model's eps.
In these coordinates the probability-flow ODE of every affine process is dy/dn = eps(alpha y, t(n))
(Karras et al. 2022, Eq. 4 with s(t) = alpha, sigma(t) = n), which Heun's method integrates on the
grid's noise levels. The solver's state (what the loop, its callback and hook see) is the real x;
each step works in y and converts at its ends (the scaled state is carried over exactly unless a
hook changed x).

Churn (Algorithm 2, lines 4-6): with S_churn > 0, each step whose noise level lies in [S_min, S_max]
first raises it to n_hat = n (1 + gamma), gamma = min(S_churn / N, sqrt(2) - 1), adding noise of
std S_noise sqrt(n_hat^2 - n^2). n_hat is capped at the noise level of the process at T (the model
is not defined beyond T). An instance built with S_churn > 0 is stochastic (its `stochastic`
attribute is True); with S_churn = 0 (default) it is Algorithm 1, the deterministic Heun sampler.
Every step is a Heun step (two evaluations, the second at the step's end time t, where the hook is
applied first) except a last step to noise level 0 (ts[-1] = 0 for VP), which is an Euler step as
in the algorithm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .base import Hook, Solver, State
from .protocol import CountedModel, GeneratorArg, bcast, randn_like, time_like
from .validate import check_number


def churn_update(y: Tensor, n_cur: Tensor, n_hat: Tensor, S_noise: float, z: Tensor) -> Tensor:
    """Raise the noise level of y from n_cur to n_hat; y, z (B, *D), n_* (B,)."""
    # Karras et al. 2022, Algorithm 2, line 6: x_hat = x + sqrt(t_hat^2 - t^2) S_noise eps
    return y + bcast(S_noise * (n_hat**2 - n_cur**2).sqrt(), y) * z


def euler_update(y: Tensor, d: Tensor, n_cur: Tensor, n_next: Tensor) -> Tensor:
    """Euler step of dy/dn = d from n_cur to n_next; y, d (B, *D), n_* (B,)."""
    # Karras et al. 2022, Algorithm 2, line 8: x_{i+1} = x_hat + (t_{i+1} - t_hat) d_i
    return y + bcast(n_next - n_cur, y) * d


def heun_update(y: Tensor, d: Tensor, d_next: Tensor, n_cur: Tensor, n_next: Tensor) -> Tensor:
    """Heun (trapezoidal) correction from n_cur to n_next; y, d, d_next (B, *D), n_* (B,)."""
    # Karras et al. 2022, Algorithm 2, line 11: x_{i+1} = x_hat + (t_{i+1} - t_hat) (d_i + d'_i) / 2
    return y + bcast(n_next - n_cur, y) * (0.5 * (d + d_next))


def check_s_max(S_max, S_min: float) -> float:
    """float(S_max), unless it is not a number >= S_min (math.inf, no upper bound, is allowed)."""
    if S_max == math.inf:
        return math.inf
    try:
        return check_number("S_max", S_max, S_min)
    except ValueError:
        raise ValueError(f"S_max must be a number >= S_min={S_min} (math.inf allowed), got {S_max!r}") from None


@dataclass(frozen=True)
class HeunState(State):
    """The state x (B, *D) at grid time ts[i] and the last data prediction x0, with what the run fixes once:

    y: the scaled state x / alpha at ts[i], and y_of: the x it belongs to (a hook that replaced x
    makes the next step rescale it); alpha, noise: (N + 1,) float64 alpha and noise levels on the
    grid, levels: their host copy (churn and last-step decisions); gamma_max, n_max: churn's factor
    min(S_churn / N, sqrt(2) - 1) and its cap, the noise level at T.
    """

    y: Tensor | None = None
    y_of: Tensor | None = None
    i: int = 0
    alpha: Tensor | None = None
    noise: Tensor | None = None
    levels: tuple[float, ...] = ()
    gamma_max: float = 0.0
    n_max: float = math.inf


@dataclass(frozen=True, kw_only=True)
class Heun(Solver):
    """EDM Heun sampler (Algorithm 2; Algorithm 1 when S_churn = 0); order 2, two evaluations per step.

    Options: S_churn, S_min, S_max, S_noise (Algorithm 2; defaults 0, 0, inf, 1), `denoise_final`.
    """

    name = "heun"
    description = "EDM Heun sampler, 2nd order, optional churn (Karras et al. 2022, Alg. 1-2)"
    order = 2
    stochastic = False
    nfe_per_step = 2
    default_steps = 18
    default_grid = "karras"

    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = math.inf
    S_noise: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        self._set(**{key: check_number(key, getattr(self, key), 0) for key in ("S_churn", "S_min", "S_noise")})
        self._set(S_max=check_s_max(self.S_max, self.S_min))
        self._set(stochastic=self.S_churn > 0)

    def init(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg) -> HeunState:
        sde = model.sde
        ts = ts.to(torch.float64)
        alpha, noise = sde.alpha(ts), torch.exp(-sde.lambda_(ts))  # (N + 1,)
        n_max = float(torch.exp(-sde.lambda_(torch.tensor([sde.T], dtype=torch.float64))))
        levels = tuple(noise.tolist())  # host copy for the churn and last-step decisions, once per call
        gamma_max = min(self.S_churn / (len(ts) - 1), math.sqrt(2) - 1)
        y = x / bcast(time_like(alpha[0], x), x)
        return HeunState(x=x, y=y, y_of=x, alpha=alpha, noise=noise, levels=levels, gamma_max=gamma_max, n_max=n_max)

    def churned_level(self, level: float, state: HeunState) -> float | None:
        """The raised noise level n_hat of a step starting at noise level `level`, or None when it does not churn."""
        if not (self.S_churn > 0 and self.S_min <= level <= self.S_max):
            return None
        n_hat = min(level * (1 + state.gamma_max), state.n_max)
        return n_hat if n_hat > level else None

    def step(
        self, model: CountedModel, state: HeunState, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> HeunState:
        sde, i = model.sde, state.i
        s, t = s.to(torch.float64), t.to(torch.float64)
        y = state.y if state.y_of is state.x else state.x / bcast(time_like(state.alpha[i], state.x), state.x)
        t_hat, n_hat = s, state.noise[i]
        churned = self.churned_level(state.levels[i], state)
        if churned is not None:
            n_hat = torch.tensor(churned, dtype=torch.float64, device=s.device)
            t_hat = torch.clamp(sde.t_of_lambda(-torch.log(n_hat).reshape(1))[0], max=sde.T)
            y = churn_update(y, time_like(state.noise[i], y), time_like(n_hat, y), self.S_noise, randn_like(y, generator))
        x_hat = bcast(time_like(sde.alpha(t_hat.reshape(1)), y), y) * y
        d = model.eps(x_hat, time_like(t_hat, y))
        n_cur, n_next = time_like(n_hat, y), time_like(state.noise[i + 1], y)
        alpha_t = bcast(time_like(state.alpha[i + 1], y), y)
        y_next = euler_update(y, d, n_cur, n_next)
        if state.levels[i + 1] > 0:
            x_next = hook(alpha_t * y_next, t)
            y_next = heun_update(y, d, model.eps(x_next, time_like(t, y)), n_cur, n_next)
        x0 = y - bcast(n_cur, y) * d  # D(y_hat; n_hat) = y_hat - n_hat d
        x_t = alpha_t * y_next
        return replace(state, x=x_t, x0=x0, y=y_next, y_of=x_t, i=i + 1)
