"""UniPC (Zhao et al. 2023, arXiv:2302.04867): unified predictor UniP-p and corrector UniC-p.

A multistep exponential integrator. With the model output m (data prediction x0 by default, or eps)
at the current time s and at the p - 1 previous grid times, UniP-p predicts x_t; UniC-p then
re-solves the step adding the output at the predicted x_t, which raises the order by one. The
output at the predicted x_t is reused as m_s of the next step, so a step costs one evaluation.

Notation (the paper's): h = lambda_t - lambda_s > 0; hh = -h for data prediction and +h for noise
prediction; h_phi_k = hh phi_k(hh) with the standard phi functions of `solvers.coefficients.phis`
(phi_1(z) = (e^z - 1)/z, phi_{k+1}(z) = (phi_k(z) - 1/k!)/z), so h_phi_1 = e^hh - 1;
r_m = (lambda_{m} - lambda_s) / h for the previous times (negative) and r = 1 for t;
D1_m = (m_m - m_s) / r_m; B(h) = hh ("bh1") or expm1(hh) ("bh2"); the coefficients a solve R a = g
with R[k, m] = r_m^k and g_k = (k + 1)! h_phi_{k+2} / B(h), k = 0..p-1 (for a single coefficient the
paper takes a = 1/2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Hook, Solver, State
from .coefficients import grid_time, marginal, phis, step_order, zero_noise_limit
from .conversions import x0_from_eps
from .protocol import CountedModel, GeneratorArg, coef, time_like
from .validate import check_bool, check_choice

__all__ = ["UniPC", "UniPCState", "unipc_coefficients", "unipc_differences", "unipc_h_phis", "unipc_step"]


def unipc_h_phis(hh: Tensor, n: int) -> list[Tensor]:
    """[h_phi_1, ..., h_phi_n] for hh (float64 (1,)): h_phi_k = hh phi_k(hh)."""
    return [hh * phi for phi in phis(hh, n)]


def unipc_coefficients(rks: Tensor, hh: Tensor, B_h: Tensor) -> Tensor:
    """Coefficients a (K,) solving R a = g for the nodes rks (K,) (float64; hh, B_h of shape (1,)).

    R[k, m] = rks[m]^k, g_k = (k + 1)! h_phi_{k+2} / B(h); with one node a = 1/2 (Zhao et al. 2023).
    """
    K = rks.numel()
    if K == 1:
        return torch.full((1,), 0.5, dtype=torch.float64, device=rks.device)
    h_phi = unipc_h_phis(hh, K + 1)
    R = torch.stack([rks**k for k in range(K)])
    g = torch.cat([math.factorial(k + 1) * h_phi[k + 1] / B_h for k in range(K)])
    # solve_ex skips linalg.solve's singularity check, a host synchronization on CUDA at every step; R is a
    # Vandermonde matrix of distinct nodes (the grid's log-SNRs strictly increase), so it is never singular
    return torch.linalg.solve_ex(R, g).result


def unipc_differences(prev: tuple, m_s: Tensor, lam_s: Tensor, h: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Nodes r_m = (lambda_m - lambda_s) / h ((1,) float64) and D1_m = (m_m - m_s) / r_m (B, *D) for the
    earlier (lambda, m) pairs `prev`."""
    rks = [(lam_m - lam_s) / h for lam_m, _ in prev]
    D1s = [(m_m - m_s) / coef(r, m_s) for r, (_, m_m) in zip(rks, prev)]
    return rks, D1s


def unipc_step(
    x_s: Tensor, m_s: Tensor, D1s: list[Tensor], a: Tensor, ratio: Tensor, c_t: Tensor, h_phi_1: Tensor, B_h: Tensor
) -> Tensor:
    """One UniP-p or UniC-p update from s to t.

    x_s, m_s and each D1s[m] (B, *D); a (K,) float64 with K = len(D1s); ratio = sigma_t / sigma_s and
    c_t = alpha_t for data prediction (alpha_t / alpha_s and sigma_t for noise prediction).
    """
    x_t = coef(ratio, x_s) * x_s - coef(c_t * h_phi_1, x_s) * m_s
    if not D1s:
        return x_t
    res = sum(a[m].to(dtype=x_s.dtype, device=x_s.device) * D1 for m, D1 in enumerate(D1s))
    # Zhao et al. 2023, UniP-p / UniC-p: x_t = ratio x_s - c_t h_phi_1 m_s - c_t B(h) sum_m a_m D1_m
    return x_t - coef(c_t * B_h, x_s) * res


@dataclass(frozen=True)
class UniPCState(State):
    """x at the current grid time and the latest data prediction x0; the (lambda, m) pairs of the
    current and earlier grid times (newest last, at most `order`); the index i of the next step and
    the grid's step count."""

    hist: tuple = ()
    i: int = 0
    steps: int = 0


@dataclass(frozen=True, kw_only=True)
class UniPC(Solver):
    """UniPC-p multistep predictor-corrector (Zhao et al. 2023, arXiv:2302.04867).

    Options: `order` p (1, 2 or 3; default 3) of the predictor UniP-p and corrector UniC-p; `variant`
    ("bh1": B(h) = h, or "bh2": B(h) = e^h - 1; default "bh2"); `prediction` ("x0", default, or
    "eps"); `corrector` (default True; False gives plain UniP); `final_corrector` (default False: the
    last step is predictor-only, so N steps cost N evaluations; True adds one evaluation);
    `lower_order_final` (default True: grids of fewer than 10 steps end with orders 2, 1);
    `denoise_final`. The first steps ramp up from order 1. Observed global order: p + 1 for p <= 2
    with the corrector, 3 for p = 3 (the first, order-1 step limits it); p without corrector.

    The model is evaluated once at ts[0] (`init`) and then once per step at the predicted x_t, which
    passes through the hook first: every evaluation sees a state whose conditioned part is set.
    """

    name = "unipc"
    description = "UniPC: multistep UniP-p predictor + UniC-p corrector, 1 NFE/step (Zhao et al. 2023)"
    stochastic = False
    nfe_per_step = 1
    default_steps = 20
    default_grid = "uniform_lambda"

    order: int = 3
    variant: str = "bh2"
    prediction: str = "x0"
    corrector: bool = True
    final_corrector: bool = False
    lower_order_final: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_choice("order", self.order, (1, 2, 3))
        check_choice("variant", self.variant, ("bh1", "bh2"))
        check_choice("prediction", self.prediction, ("x0", "eps"))
        check_bool("corrector", self.corrector)
        check_bool("final_corrector", self.final_corrector)
        check_bool("lower_order_final", self.lower_order_final)
        if self.final_corrector and not self.corrector:
            raise ValueError("final_corrector=True needs corrector=True (it applies UniC after the last step)")

    def _predict(self, model: CountedModel, x: Tensor, t: Tensor) -> Tensor:
        t = time_like(t, x)
        return model.x0(x, t) if self.prediction == "x0" else model.eps(x, t)

    def init(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg) -> UniPCState:
        t0 = grid_time(ts, 0)
        return UniPCState(x=x, hist=((model.sde.lambda_(t0), self._predict(model, x, t0)),), steps=ts.numel() - 1)

    def step(
        self, model: CountedModel, state: UniPCState, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> UniPCState:
        x, hist, data = state.x, state.hist, self.prediction == "x0"
        t_hook = t
        s, t = s.to(torch.float64).reshape(1), t.to(torch.float64).reshape(1)
        alpha_s, sigma_s, lam_s = marginal(model.sde, s)
        alpha_t, sigma_t, lam_t = marginal(model.sde, t)
        h = lam_t - lam_s
        hh = -h if data else h
        B_h = hh if self.variant == "bh1" else torch.expm1(hh)
        (h_phi_1,) = unipc_h_phis(hh, 1)
        ratio, c_t = (sigma_t / sigma_s, alpha_t) if data else (alpha_t / alpha_s, sigma_t)
        p = step_order(self.order, state.i, state.steps, warmup=len(hist), lower_order_final=self.lower_order_final)
        m_s = hist[-1][1]
        rks, D1s = unipc_differences(hist[len(hist) - p : -1], m_s, lam_s, h)  # the p - 1 earlier outputs
        a_p = unipc_coefficients(torch.cat(rks), hh, B_h) if rks else None
        # predictor UniP-p
        x_t = unipc_step(x, m_s, D1s, a_p, ratio, c_t, h_phi_1, B_h)
        x0_s = m_s if data else x0_from_eps(x, m_s, alpha_s, sigma_s)
        x_t = zero_noise_limit(x_t, x0_s, alpha_t, sigma_t)  # a step to sigma_t = 0 (t_end = 0 on VP)
        following = {"x0": x0_s, "i": state.i + 1, "steps": state.steps}
        if state.i == state.steps - 1 and not self.final_corrector:
            return UniPCState(x=x_t, hist=hist, **following)
        x_t = hook(x_t, t_hook)  # the evaluation below then sits at a conditioned state
        m_t = self._predict(model, x_t, t)
        if self.corrector:
            # corrector UniC-p: the nodes gain r = 1 with D1 = m_t - m_s
            a_c = unipc_coefficients(torch.cat(rks + [torch.ones_like(h)]), hh, B_h)
            x_t = zero_noise_limit(unipc_step(x, m_s, D1s + [m_t - m_s], a_c, ratio, c_t, h_phi_1, B_h), x0_s, alpha_t, sigma_t)
        hist = (*hist, (lam_t, m_t))[-self.order :]
        return UniPCState(x=x_t, hist=hist, **following)
