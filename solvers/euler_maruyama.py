"""Euler–Maruyama on the reverse-time SDE (Song et al. 2021, arXiv:2011.13456).

The reverse SDE dx = [f(x, t) - g(t)^2 score(x, t)] dt + g(t) dw̄ (Eq. 6) is walked from ts[0]
down to ts[-1] with dt = t_next - t_cur < 0, one score evaluation per step.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import OneStepSolver
from .protocol import CountedModel, GeneratorArg, bcast, randn_like, reverse_drift, time_like


def euler_maruyama_update(x: Tensor, drift: Tensor, g: Tensor, dt: Tensor, z: Tensor) -> Tensor:
    """One Euler–Maruyama step x + drift dt + g sqrt(-dt) z of the reverse SDE (dt < 0).

    Shapes: x, drift, z (B, *D); g, dt (B,). Returns the state at t + dt.
    """
    # Song et al. 2021, Eq. (6) discretized by Euler–Maruyama: dw̄ ~ sqrt(|dt|) z
    return x + bcast(dt, x) * drift + bcast(g * (-dt).sqrt(), x) * z


def euler_maruyama_step(
    model: CountedModel, x: Tensor, t_cur: Tensor, t_next: Tensor, *, generator: GeneratorArg = None
) -> tuple[Tensor, Tensor | None]:
    """One reverse-SDE step from t_cur to t_next (0-d float64 grid entries); one evaluation.

    Returns (x_next, None): the step makes no data prediction.
    """
    t = time_like(t_cur, x)
    drift = reverse_drift(model.sde, x, t, model.score(x, t))
    z = randn_like(x, generator)
    return euler_maruyama_update(x, drift, model.sde.g(t), time_like(t_next - t_cur, x), z), None


@dataclass(frozen=True, kw_only=True)
class EulerMaruyama(OneStepSolver):
    """Euler–Maruyama on the reverse-time SDE; weak order 1, one evaluation per step."""

    name = "euler_maruyama"
    description = "Euler–Maruyama on the reverse-time SDE (Song et al. 2021, Eq. 6)"
    stochastic = True
    default_steps = 1000
    update = staticmethod(euler_maruyama_step)
