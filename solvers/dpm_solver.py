"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927): exponential integrators in the noise-prediction form.

With the noise prediction eps(x, t) the probability-flow ODE of an affine SDE has the exact solution
(Lu et al. 2022, Eq. 3.4; `solvers.coefficients`; h = lambda_t - lambda_s > 0)

    x_t = alpha_t / alpha_s x_s - sigma_t int_0^h e^{h - u} eps(lambda_s + u) du,

and expanding eps in lambda gives, with phi_k = phi_k(h) the standard phi functions (`phis(h, n)`),

    x_t = alpha_t / alpha_s x_s - sigma_t h (phi_1 eps_s + phi_2 (h eps') + ...).

DPM-Solver-k estimates the derivatives from k - 1 extra evaluations inside the step. The linear part
is integrated exactly, so the same code serves VP, sub-VP and VE (alpha = 1) processes: a step only
needs alpha, sigma and lambda at its ends and `sde.t_of_lambda` for its intermediate times.

Notation (the paper's): a step goes from s to the less noisy t, h = lambda_t - lambda_s > 0;
s1, s2 are the intermediate times with lambda_s1 = lambda_s + r1 h, lambda_s2 = lambda_s + r2 h;
u1, u2 the intermediate states; D1 = eps_s1 - eps_s, D2 = eps_s2 - eps_s. The paper's e^h - 1 is
h phi_1(h) and its (e^h - 1) / h - 1 is h phi_2(h). Grids, coefficients and times are float64 and
are cast where they meet x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Callback, Hook, Solver, State, report
from .coefficients import LOWER_ORDER_FINAL_STEPS, grid_time, marginal, phis, step_order, zero_noise_limit
from .controllers import LogSNRController, StepSizeOptions
from .conversions import x0_from_eps
from .protocol import CountedModel, GeneratorArg, coef, time_like
from .validate import check_bool, check_choice, check_number

__all__ = [
    "LOWER_ORDER_FINAL_STEPS", "DPMSolver", "DPMSolverAdaptive", "SinglestepState", "default_rs",
    "dpm_solver_1_step", "dpm_solver_2_step", "dpm_solver_3_mid", "dpm_solver_3_step", "dpm_solver_singlestep",
]


# ---------------------------------------------------------------------------------------------
# update rules (pure functions: tensors and float64 coefficients in, next state out)


def dpm_solver_1_step(x_s: Tensor, eps_s: Tensor, alpha_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor) -> Tensor:
    """DPM-Solver-1 from s to t; the same update as DDIM (eta = 0) and the exponential Euler step.

    x_s, eps_s (B, *D); alpha_*, sigma_t, h float64 (1,) or (B,). Returns x_t (B, *D).
    """
    (phi_1,) = phis(h, 1)
    # Lu et al. 2022, DPM-Solver-1 (Eq. 3.4, eps frozen at s): x_t = a_t/a_s x_s - s_t h phi_1 eps_s
    return coef(alpha_t / alpha_s, x_s) * x_s - coef(sigma_t * h * phi_1, x_s) * eps_s


def dpm_solver_2_step(
    x_s: Tensor, eps_s: Tensor, eps_s1: Tensor, alpha_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor, r1: float
) -> Tensor:
    """Last line of DPM-Solver-2: eps_s1 is the prediction at u1 = DPM-Solver-1 from s to s1."""
    (phi_1,) = phis(h, 1)
    D1 = eps_s1 - eps_s
    # Lu et al. 2022, DPM-Solver-2 (general r1): x_t = a_t/a_s x_s - s_t h phi_1 eps_s - s_t h phi_1 / (2 r1) D1
    return (
        coef(alpha_t / alpha_s, x_s) * x_s
        - coef(sigma_t * h * phi_1, x_s) * eps_s
        - coef(sigma_t * h * phi_1 / (2 * r1), x_s) * D1
    )


def dpm_solver_3_mid(
    x_s: Tensor,
    eps_s: Tensor,
    eps_s1: Tensor,
    alpha_s: Tensor,
    alpha_s2: Tensor,
    sigma_s2: Tensor,
    h: Tensor,
    r1: float,
    r2: float,
) -> Tensor:
    """Second stage u2 of DPM-Solver-3 (a second-order step from s to s2, a step of r2 h)."""
    phi_1, phi_2 = phis(r2 * h, 2)
    D1 = eps_s1 - eps_s
    # Lu et al. 2022, DPM-Solver-3: u2 = a_s2/a_s x_s - s_s2 r2 h (phi_1 eps_s + r2/r1 phi_2 D1), phi_k = phi_k(r2 h)
    return (
        coef(alpha_s2 / alpha_s, x_s) * x_s
        - coef(sigma_s2 * r2 * h * phi_1, x_s) * eps_s
        - coef(sigma_s2 * (r2 / r1) * r2 * h * phi_2, x_s) * D1
    )


def dpm_solver_3_step(
    x_s: Tensor, eps_s: Tensor, eps_s2: Tensor, alpha_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor, r2: float
) -> Tensor:
    """Last line of DPM-Solver-3: eps_s2 is the prediction at u2 (third order needs r2 = 2/3)."""
    phi_1, phi_2 = phis(h, 2)
    D2 = eps_s2 - eps_s
    # Lu et al. 2022, DPM-Solver-3: x_t = a_t/a_s x_s - s_t h (phi_1 eps_s + phi_2 D2 / r2)
    return (
        coef(alpha_t / alpha_s, x_s) * x_s
        - coef(sigma_t * h * phi_1, x_s) * eps_s
        - coef(sigma_t / r2 * h * phi_2, x_s) * D2
    )


def dpm_solver_singlestep(
    model: CountedModel, x_s: Tensor, s: Tensor, t: Tensor, order: int, r1: float | None, r2: float | None,
    *, embedded: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """One DPM-Solver-`order` step from s to t (float64 (1,) times); `order` model evaluations.

    Returns x_t, with `embedded` the lower-order result from the same evaluations (DPM-Solver-1 inside
    DPM-Solver-2, DPM-Solver-2 with r1 inside DPM-Solver-3; None for order 1 or without `embedded`), and the data
    prediction at s. A step ending at sigma_t = 0 returns the exact limit alpha_t x0_s for both
    (`solvers.coefficients.zero_noise_limit`).
    """
    sde = model.sde
    alpha_s, sigma_s, lam_s = marginal(sde, s)
    alpha_t, sigma_t, lam_t = marginal(sde, t)
    h = lam_t - lam_s
    eps_s = model.eps(x_s, time_like(s, x_s))
    x0_s = x0_from_eps(x_s, eps_s, alpha_s, sigma_s)
    higher, lower = _dpm_solver_stages(model, x_s, eps_s, alpha_s, lam_s, alpha_t, sigma_t, h, order, r1, r2, embedded)
    if lower is not None:
        lower = zero_noise_limit(lower, x0_s, alpha_t, sigma_t)
    return zero_noise_limit(higher, x0_s, alpha_t, sigma_t), lower, x0_s


def _dpm_solver_stages(model, x_s, eps_s, alpha_s, lam_s, alpha_t, sigma_t, h, order, r1, r2, embedded):
    """(x_t, the embedded lower-order x_t when `embedded`, else None) of a DPM-Solver-`order` step;
    order - 1 more evaluations. The lower-order result is computed only when asked for (adaptive steps)."""
    sde = model.sde
    if order == 1:
        return dpm_solver_1_step(x_s, eps_s, alpha_s, alpha_t, sigma_t, h), None
    s1 = sde.t_of_lambda(lam_s + r1 * h)
    alpha_s1, sigma_s1, _ = marginal(sde, s1)
    u1 = dpm_solver_1_step(x_s, eps_s, alpha_s, alpha_s1, sigma_s1, r1 * h)
    eps_s1 = model.eps(u1, time_like(s1, x_s))
    if order == 2:
        x_1 = dpm_solver_1_step(x_s, eps_s, alpha_s, alpha_t, sigma_t, h) if embedded else None
        return dpm_solver_2_step(x_s, eps_s, eps_s1, alpha_s, alpha_t, sigma_t, h, r1), x_1
    s2 = sde.t_of_lambda(lam_s + r2 * h)
    alpha_s2, sigma_s2, _ = marginal(sde, s2)
    u2 = dpm_solver_3_mid(x_s, eps_s, eps_s1, alpha_s, alpha_s2, sigma_s2, h, r1, r2)
    eps_s2 = model.eps(u2, time_like(s2, x_s))
    x_2 = dpm_solver_2_step(x_s, eps_s, eps_s1, alpha_s, alpha_t, sigma_t, h, r1) if embedded else None
    return dpm_solver_3_step(x_s, eps_s, eps_s2, alpha_s, alpha_t, sigma_t, h, r2), x_2


def default_rs(order: int, r1: float | None, r2: float | None) -> tuple[float | None, float | None]:
    """Validated intermediate-point fractions: r1 = 1/2 for order 2; r1, r2 = 1/3, 2/3 for order 3."""
    if order == 1:
        if r1 is not None or r2 is not None:
            raise ValueError(f"order 1 has no intermediate points; leave r1 and r2 unset, got r1={r1!r}, r2={r2!r}")
        return None, None
    if order == 2:
        if r2 is not None:
            raise ValueError(f"order 2 uses only r1; leave r2 unset, got r2={r2!r}")
        return check_number("r1", 0.5 if r1 is None else r1, 0, 1, low_open=True), None
    r1 = check_number("r1", 1.0 / 3.0 if r1 is None else r1)
    r2 = check_number("r2", 2.0 / 3.0 if r2 is None else r2)
    if not math.isclose(r2, 2.0 / 3.0, rel_tol=0.0, abs_tol=1e-12):
        raise ValueError(
            f"order 3 needs r2 = 2/3 (the third-order condition of DPM-Solver-3: its last stage uses only D2), got r2={r2!r}"
        )
    if not 0.0 < r1 < r2:
        raise ValueError(f"r1 must lie in (0, r2) = (0, 2/3), got {r1!r}")
    return r1, r2


# ---------------------------------------------------------------------------------------------
# solvers


@dataclass(frozen=True)
class SinglestepState(State):
    """x and the data prediction x0 at the current grid time, the index i of the next step and the
    grid's step count (for lower_order_final)."""

    i: int = 0
    steps: int = 0


@dataclass(frozen=True, kw_only=True)
class DPMSolver(Solver):
    """DPM-Solver-1, -2, -3 (Lu et al. 2022, arXiv:2206.00927), singlestep, noise-prediction form.

    Options: `order` (1, 2 or 3; default 3), `r1` (default 1/2 for order 2, 1/3 for order 3) and
    `r2` (order 3 only; must be 2/3), `lower_order_final` (default True: on grids of fewer than 10
    steps the last two steps use orders <= 2 and 1), `denoise_final`.
    Each step costs `order` evaluations (`nfe_per_step`; fewer on the last steps with
    lower_order_final); order 1 is exactly DDIM (eta = 0).
    """

    name = "dpm_solver"
    description = "DPM-Solver-1/2/3: singlestep exponential integrator, eps form (Lu et al. 2022)"
    stochastic = False
    default_steps = 10  # 30 evaluations at order 3
    default_grid = "uniform_lambda"

    order: int = 3
    r1: float | None = None
    r2: float | None = None
    lower_order_final: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_choice("order", self.order, (1, 2, 3))
        check_bool("lower_order_final", self.lower_order_final)
        r1, r2 = default_rs(self.order, self.r1, self.r2)
        self._set(r1=r1, r2=r2, nfe_per_step=self.order)

    def init(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg) -> SinglestepState:
        return SinglestepState(x=x, steps=ts.numel() - 1)

    def step(
        self, model: CountedModel, state: SinglestepState, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> SinglestepState:
        p = step_order(self.order, state.i, state.steps, warmup=None, lower_order_final=self.lower_order_final)
        r1, r2 = (self.r1, self.r2) if p == self.order else default_rs(p, None, None)
        s, t = s.to(torch.float64).reshape(1), t.to(torch.float64).reshape(1)
        x_t, _, x0_s = dpm_solver_singlestep(model, state.x, s, t, p, r1, r2)
        return SinglestepState(x=x_t, x0=x0_s, i=state.i + 1, steps=state.steps)


@dataclass(frozen=True, kw_only=True)
class DPMSolverAdaptive(Solver, StepSizeOptions):
    """Adaptive DPM-Solver-12 and -23 (Lu et al. 2022, arXiv:2206.00927, Sec. 3.3 and Appendix).

    A lower- and a higher-order step share their model evaluations; `controller`
    (`solvers.controllers.LogSNRController`, built from the options) turns their difference into
    acceptance and the next log-SNR step. Only ts[0] and ts[-1] are used; the loop stops within
    t_err of ts[-1]. order 2: DPM-Solver-1 vs DPM-Solver-2 (r1 = 1/2), 2 evaluations per try;
    order 3: DPM-Solver-2 vs DPM-Solver-3 (r1 = 1/3, r2 = 2/3), 3 evaluations per try. Defaults as in
    the paper: rtol = 0.05, atol = 0.0078 (for data in [-1, 1]), h_init = 0.05 (in lambda),
    theta = 0.9, t_err = 1e-5. The hook is applied at ts[0] and after each accepted step; the
    callback sees each accepted step.

    Deviation: the paper's rule lets h grow without limit. Where the ODE is nearly linear (early,
    noisy times) E is ~1e-12, h then jumps to the end, and on that one huge step both orders agree
    on a wrong answer (VE, analytic Gaussian, defaults: RMS error 1.4 after 15 evaluations). So h
    grows by at most `max_growth` (default 5, Hairer et al.'s facmax) per try; max_growth=None
    restores the paper's rule.
    """

    name = "dpm_solver_adaptive"
    description = "Adaptive DPM-Solver-12/23 with log-SNR step-size control (Lu et al. 2022)"
    stochastic = False
    nfe_per_step = 0
    grid_ends_only = True
    default_steps = 1  # only the ends of the grid are used
    default_grid = "uniform_lambda"

    order: int = 3  # rtol, atol, h_init, theta, t_err, max_growth: StepSizeOptions

    def __post_init__(self):
        super().__post_init__()
        check_choice("order", self.order, (2, 3))
        self._set(controller=LogSNRController(order=self.order, **self.step_size_options()))

    def integrate(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg = None,
                  callback: Callback | None = None, hook: Hook | None = None) -> Tensor:
        """The controller loop from ts[0] to ts[-1]: propose t, try, accept if E <= 1, next h."""
        sde, ctl = model.sde, self.controller
        r1, r2 = default_rs(self.order, None, None)
        if hook is not None:
            x = hook(x, ts[0])
        s, t_end = grid_time(ts, 0), grid_time(ts, -1)
        lam_s, lam_end = sde.lambda_(s), sde.lambda_(t_end)
        h = ctl.first_step(lam_s)
        x_prev, i = x, 0
        # the host syncs in this loop (done, reaches_end, accept, the finiteness check) are the step control
        while not ctl.done(s, t_end):
            t = t_end if ctl.reaches_end(h, lam_s, lam_end) else sde.t_of_lambda(lam_s + h)
            x_higher, x_lower, x0_s = dpm_solver_singlestep(model, x, s, t, self.order, r1, r2, embedded=True)
            E = ctl.error_norm(x_lower, x_higher, x_prev)
            if not bool(torch.isfinite(E)):
                raise RuntimeError(f"non-finite error estimate at t={float(s)} (step h={float(h)} in lambda)")
            if ctl.accept(E):
                x, x_prev, s, lam_s = x_higher, x_lower, t, sde.lambda_(t)
                if hook is not None:
                    x = hook(x, s.reshape(()))
                report(callback, i, s.reshape(()), x, x0_s, model)
                i += 1
            h = ctl.next_step(h, E, lam_s, lam_end)
        return x
