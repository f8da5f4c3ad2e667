"""DPM-Solver++ (Lu et al. 2022b, arXiv:2211.01095): exponential integrators in the data-prediction form.

With the data prediction x0(x, t) the probability-flow ODE of an affine SDE has the exact solution
(`solvers.coefficients`; h = lambda_t - lambda_s > 0)

    x_t = sigma_t / sigma_s x_s + alpha_t int_0^h e^{-(h - u)} x0(lambda_s + u) du,

and expanding x0 in lambda gives, with phi_k = phi_k(-h) the standard phi functions,

    x_t = sigma_t/sigma_s x_s + alpha_t h (phi_1 x0 + phi_2 (h x0') + phi_3 (h^2 x0'') + ...).

Singlestep methods (2S, 3S) estimate the derivatives from extra evaluations inside the step;
multistep methods (2M, 3M) from stored data predictions of earlier steps, one evaluation per step.
The SDE variant integrates the reverse SDE with the same linear part done exactly.

Notation: s -> t a step, h = lambda_t - lambda_s; for multistep, x0_s is the prediction at the
current time s, x0_p1, x0_p2 those at the previous grid times, h_0 = lambda_s - lambda_p1,
h_1 = lambda_p1 - lambda_p2, r0 = h_0 / h, r1 = h_1 / h; D1 estimates h x0' and D2 estimates h^2 x0''.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Hook, Solver, State
from .coefficients import marginal, phis, step_order, zero_noise_limit
from .protocol import CountedModel, GeneratorArg, coef, randn_like, time_like
from .validate import check_bool, check_choice


def dpm_solver_pp_1_step(x_s: Tensor, x0_s: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor) -> Tensor:
    """DPM-Solver++(1) from s to t: x0 frozen at s; equals DDIM (eta = 0) and DPM-Solver-1."""
    (phi_1,) = phis(-h, 1)
    # Lu et al. 2022b, first-order DPM-Solver++ (Eq. 10 with x0 frozen): x_t = s_t/s_s x_s + a_t h phi_1 x0_s
    return coef(sigma_t / sigma_s, x_s) * x_s + coef(alpha_t * h * phi_1, x_s) * x0_s


def dpm_solver_pp_2s_step(
    x_s: Tensor, x0_s: Tensor, x0_s1: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor, r1: float
) -> Tensor:
    """Last line of DPM-Solver++(2S); x0_s1 is the prediction at u = DPM-Solver++(1) from s to s1."""
    (phi_1,) = phis(-h, 1)
    # Lu et al. 2022b, Algorithm 1 (2S): D = (1 - 1/(2 r1)) x0_s + 1/(2 r1) x0_s1; x_t = s_t/s_s x_s + a_t h phi_1 D
    D = (1 - 1 / (2 * r1)) * x0_s + 1 / (2 * r1) * x0_s1
    return coef(sigma_t / sigma_s, x_s) * x_s + coef(alpha_t * h * phi_1, x_s) * D


def dpm_solver_pp_3s_mid(
    x_s: Tensor, x0_s: Tensor, x0_s1: Tensor, sigma_s: Tensor, alpha_s2: Tensor, sigma_s2: Tensor, h: Tensor, r1: float, r2: float
) -> Tensor:
    """Second stage u2 of DPM-Solver++(3S), a second-order step from s to s2 (a step of r2 h)."""
    phi_1, phi_2 = phis(-r2 * h, 2)
    D1 = (x0_s1 - x0_s) / r1  # estimates h x0'
    # data-form analogue of DPM-Solver-3's u2: u2 = s_s2/s_s x_s + a_s2 r2 h (phi_1 x0_s + r2 phi_2 D1)
    return (
        coef(sigma_s2 / sigma_s, x_s) * x_s
        + coef(alpha_s2 * r2 * h * phi_1, x_s) * x0_s
        + coef(alpha_s2 * r2 * h * r2 * phi_2, x_s) * D1
    )


def dpm_solver_pp_3s_step(
    x_s: Tensor, x0_s: Tensor, x0_s2: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor, r2: float
) -> Tensor:
    """Last line of DPM-Solver++(3S) (third order needs r2 = 2/3, as for DPM-Solver-3)."""
    phi_1, phi_2 = phis(-h, 2)
    D1 = (x0_s2 - x0_s) / r2  # estimates h x0'
    # data-form analogue of DPM-Solver-3's last line: x_t = s_t/s_s x_s + a_t h (phi_1 x0_s + phi_2 D1)
    return coef(sigma_t / sigma_s, x_s) * x_s + coef(alpha_t * h * phi_1, x_s) * x0_s + coef(alpha_t * h * phi_2, x_s) * D1


def dpm_solver_pp_2m_step(
    x_s: Tensor, x0_s: Tensor, x0_p1: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor, r0: Tensor
) -> Tensor:
    """DPM-Solver++(2M) from s to t with the stored prediction x0_p1 of the previous grid time."""
    (phi_1,) = phis(-h, 1)
    # Lu et al. 2022b, Algorithm 2 (2M): D = (1 + 1/(2 r0)) x0_s - 1/(2 r0) x0_p1; x_t = s_t/s_s x_s + a_t h phi_1 D
    D = coef(1 + 1 / (2 * r0), x_s) * x0_s - coef(1 / (2 * r0), x_s) * x0_p1
    return coef(sigma_t / sigma_s, x_s) * x_s + coef(alpha_t * h * phi_1, x_s) * D


def dpm_solver_pp_3m_step(
    x_s: Tensor,
    x0_s: Tensor,
    x0_p1: Tensor,
    x0_p2: Tensor,
    sigma_s: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    h: Tensor,
    r0: Tensor,
    r1: Tensor,
) -> Tensor:
    """DPM-Solver++(3M) from s to t with the stored predictions x0_p1, x0_p2 of the two previous times."""
    phi_1, phi_2, phi_3 = phis(-h, 3)
    D1_0 = coef(1 / r0, x_s) * (x0_s - x0_p1)
    D1_1 = coef(1 / r1, x_s) * (x0_p1 - x0_p2)
    D1 = D1_0 + coef(r0 / (r0 + r1), x_s) * (D1_0 - D1_1)  # h x0' + O(h^3)
    D2 = coef(2 / (r0 + r1), x_s) * (D1_0 - D1_1)  # h^2 x0'' + O(h^3)
    # Lu et al. 2022b, DPM-Solver++(3M): x_t = s_t/s_s x_s + a_t h (phi_1 x0_s + phi_2 D1 + phi_3 D2)
    return (
        coef(sigma_t / sigma_s, x_s) * x_s
        + coef(alpha_t * h * phi_1, x_s) * x0_s
        + coef(alpha_t * h * phi_2, x_s) * D1
        + coef(alpha_t * h * phi_3, x_s) * D2
    )


def dpm_solver_pp_multistep(
    x_s: Tensor, x0_s: Tensor, lam_s: Tensor, hist: tuple, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor, p: int
) -> Tensor:
    """DPM-Solver++(pM) from s to t: hist holds (lambda, x0) of the earlier grid times, newest last."""
    if p == 1:
        return dpm_solver_pp_1_step(x_s, x0_s, sigma_s, alpha_t, sigma_t, h)
    lam_p1, x0_p1 = hist[-1]
    if p == 2:
        return dpm_solver_pp_2m_step(x_s, x0_s, x0_p1, sigma_s, alpha_t, sigma_t, h, (lam_s - lam_p1) / h)
    lam_p2, x0_p2 = hist[-2]
    r0, r1 = (lam_s - lam_p1) / h, (lam_p1 - lam_p2) / h
    return dpm_solver_pp_3m_step(x_s, x0_s, x0_p1, x0_p2, sigma_s, alpha_t, sigma_t, h, r0, r1)


def sde_dpm_solver_pp_step(
    x_s: Tensor,
    x0_s: Tensor,
    x0_p1: Tensor | None,
    noise: Tensor,
    sigma_s: Tensor,
    alpha_t: Tensor,
    sigma_t: Tensor,
    h: Tensor,
    r0: Tensor | None,
) -> Tensor:
    """SDE-DPM-Solver++(1) (x0_p1 None) or (2M) from s to t; noise ~ N(0, I) of x's shape.

    The reverse SDE in lambda has the exactly integrable linear part e^{-h} sigma_t/sigma_s and the
    exact noise variance sigma_t^2 (1 - e^{-2h}); the data term is integrated as in DPM-Solver++.
    """
    one_minus_e2h = -torch.expm1(-2 * h)  # 1 - e^{-2h}
    # Lu et al. 2022b, SDE-DPM-Solver++(1): x_t = s_t/s_s e^{-h} x_s + a_t (1 - e^{-2h}) x0_s + s_t sqrt(1 - e^{-2h}) z
    x_t = (
        coef(sigma_t / sigma_s * torch.exp(-h), x_s) * x_s
        + coef(alpha_t * one_minus_e2h, x_s) * x0_s
        + coef(sigma_t * one_minus_e2h.sqrt(), x_s) * noise
    )
    if x0_p1 is None:
        return x_t
    D1 = coef(1 / r0, x_s) * (x0_s - x0_p1)  # estimates h x0'
    # Lu et al. 2022b, SDE-DPM-Solver++(2M): adds a_t (1 - e^{-2h}) D1 / 2
    return x_t + coef(alpha_t * one_minus_e2h / 2, x_s) * D1


def data_prediction_at_start(model: CountedModel, x: Tensor, s: Tensor, t: Tensor) -> tuple:
    """A data-form step's start: s as float64 (1,), x0 at (x, s) (one evaluation), lambda_s, sigma_s,
    alpha_t, sigma_t and h = lambda_t - lambda_s."""
    s, t = s.to(torch.float64).reshape(1), t.to(torch.float64).reshape(1)
    _, sigma_s, lam_s = marginal(model.sde, s)
    alpha_t, sigma_t, lam_t = marginal(model.sde, t)
    return s, model.x0(x, time_like(s, x)), lam_s, sigma_s, alpha_t, sigma_t, lam_t - lam_s


@dataclass(frozen=True)
class MultistepState(State):
    """x and x0 at the current grid time, what the solver keeps of earlier grid times (newest last;
    DPM-Solver++: (lambda, x0) pairs, the noise-form solvers and iPNDM: their predictions), the index
    i of the next step and the grid's step count."""

    hist: tuple = ()
    i: int = 0
    steps: int = 0


@dataclass(frozen=True, kw_only=True)
class DPMSolverPP(Solver):
    """DPM-Solver++ (Lu et al. 2022b, arXiv:2211.01095), data-prediction form.

    Options: `solver_type` ("multistep", default, or "singlestep"); `order` (1, 2 or 3; default 2:
    2M / 2S); `lower_order_final` (default True: on grids of fewer than 10 steps the last steps use
    orders 2 and 1); `denoise_final`. Multistep: one evaluation per step, storing earlier data
    predictions (the first steps ramp up from order 1). Singlestep: `order` evaluations per step with
    r1 = 1/2 (2S) or r1, r2 = 1/3, 2/3 (3S).
    """

    name = "dpm_solver++"
    description = "DPM-Solver++ 1/2M/3M multistep and 2S/3S singlestep, x0 form (Lu et al. 2022b)"
    stochastic = False
    default_steps = 20
    default_grid = "uniform_lambda"

    solver_type: str = "multistep"
    order: int = 2
    lower_order_final: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_choice("solver_type", self.solver_type, ("multistep", "singlestep"))
        check_choice("order", self.order, (1, 2, 3))
        check_bool("lower_order_final", self.lower_order_final)
        # 1 for multistep; `order` for singlestep (at most: lower_order_final may save some)
        self._set(nfe_per_step=1 if self.solver_type == "multistep" else self.order)

    def init(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg) -> MultistepState:
        return MultistepState(x=x, steps=ts.numel() - 1)

    def step(
        self, model: CountedModel, state: MultistepState, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> MultistepState:
        x = state.x
        s, x0_s, lam_s, sigma_s, alpha_t, sigma_t, h = data_prediction_at_start(model, x, s, t)
        if self.solver_type == "singlestep":
            p = step_order(self.order, state.i, state.steps, warmup=None, lower_order_final=self.lower_order_final)
            x_t = self._singlestep(model, x, x0_s, s, lam_s, sigma_s, alpha_t, sigma_t, h, p)
            x_t = zero_noise_limit(x_t, x0_s, alpha_t, sigma_t)  # a step to sigma_t = 0 (t_end = 0 on VP)
            return MultistepState(x=x_t, x0=x0_s, i=state.i + 1, steps=state.steps)
        warmup = len(state.hist) + 1
        p = step_order(self.order, state.i, state.steps, warmup=warmup, lower_order_final=self.lower_order_final)
        x_t = dpm_solver_pp_multistep(x, x0_s, lam_s, state.hist, sigma_s, alpha_t, sigma_t, h, p)
        x_t = zero_noise_limit(x_t, x0_s, alpha_t, sigma_t)  # a step to sigma_t = 0 (t_end = 0 on VP)
        hist = (*state.hist, (lam_s, x0_s))[-2:]
        return MultistepState(x=x_t, x0=x0_s, hist=hist, i=state.i + 1, steps=state.steps)

    def _singlestep(self, model, x, x0_s, s, lam_s, sigma_s, alpha_t, sigma_t, h, p: int) -> Tensor:
        """DPM-Solver++(1), (2S) with r1 = 1/2 or (3S) with r1, r2 = 1/3, 2/3 from s to t; p - 1 more evaluations."""
        if p == 1:
            return dpm_solver_pp_1_step(x, x0_s, sigma_s, alpha_t, sigma_t, h)
        sde = model.sde
        r1 = 0.5 if p == 2 else 1.0 / 3.0
        s1 = sde.t_of_lambda(lam_s + r1 * h)
        alpha_s1, sigma_s1, _ = marginal(sde, s1)
        u1 = dpm_solver_pp_1_step(x, x0_s, sigma_s, alpha_s1, sigma_s1, r1 * h)
        x0_s1 = model.x0(u1, time_like(s1, x))
        if p == 2:
            return dpm_solver_pp_2s_step(x, x0_s, x0_s1, sigma_s, alpha_t, sigma_t, h, r1)
        r2 = 2.0 / 3.0
        s2 = sde.t_of_lambda(lam_s + r2 * h)
        alpha_s2, sigma_s2, _ = marginal(sde, s2)
        u2 = dpm_solver_pp_3s_mid(x, x0_s, x0_s1, sigma_s, alpha_s2, sigma_s2, h, r1, r2)
        x0_s2 = model.x0(u2, time_like(s2, x))
        return dpm_solver_pp_3s_step(x, x0_s, x0_s2, sigma_s, alpha_t, sigma_t, h, r2)


@dataclass(frozen=True, kw_only=True)
class SDEDPMSolverPP(Solver):
    """SDE-DPM-Solver++(1) and (2M) (Lu et al. 2022b, arXiv:2211.01095; Gonzalez et al. 2023, SEEDS).

    Integrates the reverse-time SDE in the data-prediction form: the linear drift and the noise are
    integrated exactly, the data prediction by a first-order (order 1) or two-step multistep
    (order 2, midpoint form) expansion. One evaluation per step; noise from `generator`.
    Options: `order` (1 or 2; default 2), `lower_order_final` (default True), `denoise_final`.
    `order` is the weak order of the deterministic part.
    """

    name = "sde_dpm_solver++"
    description = "SDE-DPM-Solver++(1)/(2M): stochastic exponential integrator, x0 form (Lu et al. 2022b)"
    stochastic = True
    nfe_per_step = 1
    default_steps = 50
    default_grid = "uniform_lambda"

    order: int = 2
    lower_order_final: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_choice("order", self.order, (1, 2))
        check_bool("lower_order_final", self.lower_order_final)

    init = DPMSolverPP.init

    def step(
        self, model: CountedModel, state: MultistepState, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> MultistepState:
        x = state.x
        s, x0_s, lam_s, sigma_s, alpha_t, sigma_t, h = data_prediction_at_start(model, x, s, t)
        p = step_order(self.order, state.i, state.steps, warmup=state.i + 1, lower_order_final=self.lower_order_final)
        noise = randn_like(x, generator)
        if p == 1:
            x_t = sde_dpm_solver_pp_step(x, x0_s, None, noise, sigma_s, alpha_t, sigma_t, h, None)
        else:
            lam_p1, x0_p1 = state.hist[-1]
            x_t = sde_dpm_solver_pp_step(x, x0_s, x0_p1, noise, sigma_s, alpha_t, sigma_t, h, (lam_s - lam_p1) / h)
        return MultistepState(x=x_t, x0=x0_s, hist=((lam_s, x0_s),), i=state.i + 1, steps=state.steps)
