"""The torchdiffeq modes: the augmented probability-flow ODE [x, delta / d], integrated from t_eps to T.

Adaptive solvers (ADAPTIVE_METHODS; rtol, atol) or fixed-grid ones (FIXED_METHODS; a solvers.grids
grid), in the variable t or log-SNR lambda.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchdiffeq import odeint

from solvers import grids
from solvers.protocol import Model, bcast, time_like

from .divergence import Divergence, score_and_divergence

__all__ = ["ADAPTIVE_METHODS", "FIXED_METHODS", "VARIABLES"]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
FIXED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4")
VARIABLES = ("t", "lambda")


class _AugmentedODE(torch.nn.Module):
    """Right-hand side of the augmented probability-flow ODE; counts its calls (the NFE).

    The state is [x, delta / d] with d = prod(D): the log-determinant per dimension, so that
    rtol and atol bound its error in nats per dimension, as they bound x's per component (the
    solver's norm takes the largest of the two root-mean-square errors). variable "t":
    d[x, delta/d]/dt = [F, div F / d]. variable "lambda" (log-SNR, decreasing from lambda(t_eps)
    to lambda(T)): the same ODE times dt/dlambda = -2 sigma^2 / g^2, i.e. dx/dlambda =
    (d log alpha / dlambda) x + sigma^2 score, smooth in lambda for every schedule.
    """

    def __init__(self, model: Model, y, divergence: Divergence, probes: Tensor | None, variable: str):
        super().__init__()
        self.model, self.y, self.divergence, self.probes, self.variable = model, y, divergence, probes, variable
        self.nfe = 0

    def forward(self, s: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, _ = state
        sde = self.model.sde
        self.nfe += 1
        # the adaptive solver may try a first step past the end while choosing its initial step
        # size (steps themselves stop there through step_t); clamping keeps every time in [0, T]
        # (in lambda first: t_of_lambda refuses log-SNRs outside [lambda(T), lambda(0)])
        if self.variable != "t":
            lo, hi = (float(v) for v in sde.lambda_(torch.tensor([sde.T, 0.0], dtype=torch.float64)))
            s = sde.t_of_lambda(torch.clamp(s.reshape(1), min=lo, max=hi))[0]
        tt = time_like(torch.clamp(s, min=0.0, max=sde.T), x)
        score, div = score_and_divergence(self.model, x, tt, y=self.y, divergence=self.divergence, probes=self.probes)
        drift, div = sde.pf_drift(x, tt, score), div / x[0].numel()
        if self.variable == "t":
            return drift, div
        dt_dlam = -2.0 * sde.sigma(tt) ** 2 / sde.g2(tt)
        return bcast(dt_dlam, x) * drift, dt_dlam[:, None] * div


def increasing_grid(model: Model, grid: str, steps: int, t_eps: float) -> Tensor:
    """(steps + 1,) float64 grid increasing from t_eps to T, built by solvers.grids (then flipped)."""
    return grids.make(grid, model.sde, steps, t_start=model.sde.T, t_end=t_eps).flip(0)


def integrate_torchdiffeq(
    model, x, *, y, method, rtol, atol, steps, grid, t_eps, variable, divergence, probes, n_div
) -> tuple[Tensor, Tensor, int]:
    """Returns z (B, *D), delta = int div F dt (B, K) and the NFE."""
    sde = model.sde
    d = x[0].numel()
    func = _AugmentedODE(model, y, divergence, probes, variable)
    delta0 = torch.zeros(x.shape[0], n_div, dtype=x.dtype, device=x.device)
    if method in ADAPTIVE_METHODS:
        ts = torch.tensor([t_eps, sde.T], dtype=torch.float64, device=x.device)
    else:
        ts = increasing_grid(model, grid, steps, t_eps).to(x.device)
    # float64 times (torchdiffeq keeps times in float64 and the state in x's dtype)
    ss = ts if variable == "t" else sde.lambda_(ts)
    if method in ADAPTIVE_METHODS:
        options = {"step_t": ss[1:]}
        xs, deltas = odeint(func, (x, delta0), ss, method=method, rtol=rtol, atol=atol, options=options)
    else:
        xs, deltas = odeint(
            func, (x, delta0), ss[[0, -1]], method=method, options={"grid_constructor": lambda f, y0, t: ss}
        )
    return xs[-1], d * deltas[-1], func.nfe
