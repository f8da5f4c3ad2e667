"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927): exponential integrators in the noise-prediction form.

In log-SNR lambda = log(alpha / sigma) the probability-flow ODE of any affine process has the exact
solution (Lu et al. 2022, Eq. 3.4)

    x_t = alpha_t / alpha_s x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps(x_lambda, lambda) dlambda,

and DPM-Solver-k expands eps in lambda to order k - 1 around the start of the step. The linear part is
integrated exactly, so the same code serves VP, sub-VP and VE (alpha = 1) processes: a step only needs
alpha, sigma and lambda at its ends and `process.t_of_lambda` for its intermediate times.

Notation (the paper's): a step goes from s to the less noisy t, h = lambda_t - lambda_s > 0;
s1, s2 are the intermediate times with lambda_s1 = lambda_s + r1 h, lambda_s2 = lambda_s + r2 h;
phi_1 = expm1(h) (the paper's e^h - 1); u, u1, u2 are the intermediate states; D1 = eps_s1 - eps_s,
D2 = eps_s2 - eps_s. Grids, coefficients and times are float64 and are cast where they meet x.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Callback, Sampler, report
from .protocol import CountedModel, GeneratorArg, Process, bcast, time_like

# lower_order_final applies on grids with fewer steps than this (as in Lu et al.'s reference code,
# whose docstring says "< 15" while the code uses 10; we use and test 10)
LOWER_ORDER_FINAL_STEPS = 10


# ---------------------------------------------------------------------------------------------
# helpers shared by the exponential-integrator modules (dpm_solver_pp, unipc)


def coef(v: Tensor, x: Tensor) -> Tensor:
    """A float64 per-sample coefficient (B,) or (1,), cast to x's dtype/device and broadcast."""
    return bcast(v.to(dtype=x.dtype, device=x.device), x)


def marginal(process: Process, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """alpha, sigma, lambda at the float64 time(s) t (shape (1,) or (B,))."""
    return process.alpha(t), process.sigma(t), process.lambda_(t)


def grid_time(ts: Tensor, i: int) -> Tensor:
    """Grid entry i as a float64 tensor of shape (1,)."""
    return ts[i].to(torch.float64).reshape(1)


def step_order(order: int, i: int, steps: int, *, warmup: int | None, lower_order_final: bool) -> int:
    """Order used on step i of `steps`.

    Multistep methods ramp up (warmup = number of stored model outputs); with `lower_order_final` the
    last steps of a short grid (fewer than LOWER_ORDER_FINAL_STEPS steps) drop to orders 2, 1 so
    that the final, stiffest steps near t_eps stay stable (as Lu et al. 2022b do for few steps).
    """
    p = order if warmup is None else min(order, warmup)
    if lower_order_final and steps < LOWER_ORDER_FINAL_STEPS:
        p = min(p, steps - i)
    return p


def check_choice(name: str, value, choices) -> None:
    """Raise ValueError naming the valid choices unless value is one of them (bools are not ints)."""
    if isinstance(value, bool) and not all(isinstance(c, bool) for c in choices):
        ok = False
    else:
        ok = value in choices
    if not ok:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


# ---------------------------------------------------------------------------------------------
# update rules (pure functions: tensors and float64 coefficients in, next state out)


def dpm_solver_1_step(x_s: Tensor, eps_s: Tensor, alpha_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor) -> Tensor:
    """DPM-Solver-1 from s to t; the same update as DDIM (eta = 0) and the exponential Euler step.

    x_s, eps_s (B, *D); alpha_*, sigma_t, h float64 (1,) or (B,). Returns x_t (B, *D).
    """
    phi_1 = torch.expm1(h)
    # Lu et al. 2022, Eq. (3.4) with eps frozen at s (DPM-Solver-1)
    return coef(alpha_t / alpha_s, x_s) * x_s - coef(sigma_t * phi_1, x_s) * eps_s


def dpm_solver_2_step(
    x_s: Tensor, eps_s: Tensor, eps_s1: Tensor, alpha_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor, r1: float
) -> Tensor:
    """Last line of DPM-Solver-2: eps_s1 is the prediction at u = DPM-Solver-1 from s to s1."""
    phi_1 = torch.expm1(h)
    D1 = eps_s1 - eps_s
    # Lu et al. 2022, DPM-Solver-2 (general r1): x_t = a_t/a_s x_s - s_t phi_1 eps_s - s_t/(2 r1) phi_1 D1
    return (
        coef(alpha_t / alpha_s, x_s) * x_s
        - coef(sigma_t * phi_1, x_s) * eps_s
        - coef(sigma_t * phi_1 / (2 * r1), x_s) * D1
    )


def dpm_solver_3_mid(
    x_s: Tensor, eps_s: Tensor, eps_s1: Tensor, alpha_s: Tensor, alpha_s2: Tensor, sigma_s2: Tensor, h: Tensor, r1: float, r2: float
) -> Tensor:
    """Second stage u2 of DPM-Solver-3 (a second-order step from s to s2)."""
    phi_1 = torch.expm1(r2 * h)
    D1 = eps_s1 - eps_s
    # Lu et al. 2022, DPM-Solver-3: u2 = a_s2/a_s x_s - s_s2 (e^{r2 h} - 1) eps_s - s_s2 r2/r1 ((e^{r2 h} - 1)/(r2 h) - 1) D1
    return (
        coef(alpha_s2 / alpha_s, x_s) * x_s
        - coef(sigma_s2 * phi_1, x_s) * eps_s
        - coef(sigma_s2 * (r2 / r1) * (phi_1 / (r2 * h) - 1), x_s) * D1
    )


def dpm_solver_3_step(
    x_s: Tensor, eps_s: Tensor, eps_s2: Tensor, alpha_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor, r2: float
) -> Tensor:
    """Last line of DPM-Solver-3: eps_s2 is the prediction at u2 (third order needs r2 = 2/3)."""
    phi_1 = torch.expm1(h)
    D2 = eps_s2 - eps_s
    # Lu et al. 2022, DPM-Solver-3: x_t = a_t/a_s x_s - s_t phi_1 eps_s - s_t / r2 (phi_1 / h - 1) D2
    return (
        coef(alpha_t / alpha_s, x_s) * x_s
        - coef(sigma_t * phi_1, x_s) * eps_s
        - coef(sigma_t / r2 * (phi_1 / h - 1), x_s) * D2
    )


def x0_from_eps(x: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Data prediction implied by a noise prediction, x0 = (x - sigma eps) / alpha (no model call)."""
    return (x - coef(sigma, x) * eps) / coef(alpha, x)


def dpm_solver_singlestep(
    model: CountedModel, x_s: Tensor, s: Tensor, t: Tensor, order: int, r1: float | None, r2: float | None
) -> tuple[Tensor, Tensor]:
    """One DPM-Solver-`order` step from s to t (float64 (1,) times); `order` model evaluations.

    Returns x_t and the data prediction at s (for callbacks).
    """
    process = model.sde
    alpha_s, sigma_s, lam_s = marginal(process, s)
    alpha_t, sigma_t, lam_t = marginal(process, t)
    h = lam_t - lam_s
    eps_s = model.eps(x_s, time_like(s, x_s))
    x0_s = x0_from_eps(x_s, eps_s, alpha_s, sigma_s)
    if order == 1:
        return dpm_solver_1_step(x_s, eps_s, alpha_s, alpha_t, sigma_t, h), x0_s
    s1 = process.t_of_lambda(lam_s + r1 * h)
    alpha_s1, sigma_s1, _ = marginal(process, s1)
    u1 = dpm_solver_1_step(x_s, eps_s, alpha_s, alpha_s1, sigma_s1, r1 * h)
    eps_s1 = model.eps(u1, time_like(s1, x_s))
    if order == 2:
        return dpm_solver_2_step(x_s, eps_s, eps_s1, alpha_s, alpha_t, sigma_t, h, r1), x0_s
    s2 = process.t_of_lambda(lam_s + r2 * h)
    alpha_s2, sigma_s2, _ = marginal(process, s2)
    u2 = dpm_solver_3_mid(x_s, eps_s, eps_s1, alpha_s, alpha_s2, sigma_s2, h, r1, r2)
    eps_s2 = model.eps(u2, time_like(s2, x_s))
    return dpm_solver_3_step(x_s, eps_s, eps_s2, alpha_s, alpha_t, sigma_t, h, r2), x0_s


def default_rs(order: int, r1: float | None, r2: float | None) -> tuple[float | None, float | None]:
    """Validated intermediate-point fractions: r1 = 1/2 for order 2; r1, r2 = 1/3, 2/3 for order 3."""
    if order == 1:
        if r1 is not None or r2 is not None:
            raise ValueError(f"order 1 has no intermediate points; leave r1 and r2 unset, got r1={r1!r}, r2={r2!r}")
        return None, None
    if order == 2:
        if r2 is not None:
            raise ValueError(f"order 2 uses only r1; leave r2 unset, got r2={r2!r}")
        r1 = 0.5 if r1 is None else r1
        if isinstance(r1, bool) or not isinstance(r1, (int, float)) or not 0.0 < r1 <= 1.0:
            raise ValueError(f"r1 must be a number in (0, 1], got {r1!r}")
        return float(r1), None
    r1 = 1.0 / 3.0 if r1 is None else r1
    r2 = 2.0 / 3.0 if r2 is None else r2
    for name, r in (("r1", r1), ("r2", r2)):
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            raise ValueError(f"{name} must be a number, got {r!r}")
    if not math.isclose(r2, 2.0 / 3.0, rel_tol=0.0, abs_tol=1e-12):
        raise ValueError(
            f"order 3 needs r2 = 2/3 (the third-order condition of DPM-Solver-3: its last stage uses only D2), got r2={r2!r}"
        )
    if not 0.0 < r1 < r2:
        raise ValueError(f"r1 must lie in (0, r2) = (0, 2/3), got {r1!r}")
    return float(r1), float(r2)


class DPMSolver(Sampler):
    """DPM-Solver-1, -2, -3 (Lu et al. 2022, arXiv:2206.00927), singlestep, noise-prediction form.

    Options: `order` (1, 2 or 3; default 3), `r1` (default 1/2 for order 2, 1/3 for order 3) and
    `r2` (order 3 only; must be 2/3), `lower_order_final` (default True: on grids of fewer than 10
    steps the last two steps use orders <= 2 and 1), `denoise_final`.
    Each step costs `order` evaluations (fewer on the last steps with lower_order_final); order 1
    is exactly DDIM (eta = 0).
    """

    name = "dpm_solver"
    description = "DPM-Solver-1/2/3: singlestep exponential integrator, eps form (Lu et al. 2022)"
    order = 3
    stochastic = False
    default_steps = 10  # 30 evaluations at order 3
    default_grid = "uniform_lambda"

    def __init__(
        self,
        *,
        order: int = 3,
        r1: float | None = None,
        r2: float | None = None,
        lower_order_final: bool = True,
        denoise_final: bool = False,
    ):
        super().__init__(denoise_final=denoise_final)
        check_choice("order", order, (1, 2, 3))
        check_bool("lower_order_final", lower_order_final)
        self.order = order
        self.r1, self.r2 = default_rs(order, r1, r2)
        self.lower_order_final = lower_order_final

    @property
    def nfe_per_step(self) -> int:  # type: ignore[override]
        """Evaluations per step (an upper bound on the last steps of short grids with lower_order_final)."""
        return self.order

    def integrate(
        self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg, callback: Callback | None
    ) -> Tensor:
        steps = ts.numel() - 1
        for i in range(steps):
            p = step_order(self.order, i, steps, warmup=None, lower_order_final=self.lower_order_final)
            r1, r2 = (self.r1, self.r2) if p == self.order else default_rs(p, None, None)
            t_cur, t_next = grid_time(ts, i), grid_time(ts, i + 1)
            x, x0 = dpm_solver_singlestep(model, x, t_cur, t_next, p, r1, r2)
            report(callback, i, ts[i + 1], x, x0, model)
        return x


class DPMSolverAdaptive(Sampler):
    """Adaptive DPM-Solver-12 and -23 (Lu et al. 2022, arXiv:2206.00927, Sec. 3.3 and Appendix).

    A lower- and a higher-order step share their model evaluations; their difference, scaled by
    delta = max(atol, rtol * max(|x_lower|, |x_prev|)) and measured as a per-sample RMS (maximum over
    the batch), decides acceptance (E <= 1) and the next log-SNR step h <- min(theta h E^(-1/order),
    lambda_end - lambda_s). Only ts[0] and ts[-1] are used; the loop stops within t_err of ts[-1].
    order 2: DPM-Solver-1 vs DPM-Solver-2 (r1 = 1/2), 2 evaluations per try; order 3: DPM-Solver-2 vs
    DPM-Solver-3 (r1 = 1/3, r2 = 2/3), 3 evaluations per try. Defaults as in the paper: rtol = 0.05,
    atol = 0.0078 (for data in [-1, 1]), h_init = 0.05 (in lambda), theta = 0.9, t_err = 1e-5.

    Deviation: the paper's rule lets h grow without limit. Where the ODE is nearly linear (early,
    noisy times) E is ~1e-12, h then jumps to the end, and on that one huge step both orders agree
    on a wrong answer (VE, analytic Gaussian, defaults: RMS error 1.4 after 15 evaluations). So h
    grows by at most `max_growth` (default 5, Hairer et al.'s facmax) per try; max_growth=None
    restores the paper's rule.
    """

    name = "dpm_solver_adaptive"
    description = "Adaptive DPM-Solver-12/23 with log-SNR step-size control (Lu et al. 2022)"
    order = 3
    stochastic = False
    nfe_per_step = 0
    default_steps = 1  # only the ends of the grid are used
    default_grid = "uniform_lambda"

    def __init__(
        self,
        *,
        order: int = 3,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.05,
        theta: float = 0.9,
        t_err: float = 1e-5,
        max_growth: float | None = 5.0,
        denoise_final: bool = False,
    ):
        super().__init__(denoise_final=denoise_final)
        check_choice("order", order, (2, 3))
        if max_growth is not None and (
            isinstance(max_growth, bool) or not isinstance(max_growth, (int, float)) or not max_growth > 1.0
        ):
            raise ValueError(f"max_growth must be None or a number > 1, got {max_growth!r}")
        for name, v, lo in (("rtol", rtol, 0.0), ("atol", atol, 0.0), ("h_init", h_init, 0.0), ("t_err", t_err, 0.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= lo and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number >= {lo}, got {v!r}")
        if rtol == 0 and atol == 0:
            raise ValueError("rtol and atol cannot both be 0")
        if h_init == 0 or t_err == 0:
            raise ValueError(f"h_init and t_err must be > 0, got h_init={h_init!r}, t_err={t_err!r}")
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0.0 < theta <= 1.0:
            raise ValueError(f"theta must be a number in (0, 1], got {theta!r}")
        self.order = order
        self.rtol, self.atol, self.h_init, self.theta, self.t_err = rtol, atol, h_init, theta, t_err
        self.max_growth = max_growth

    def integrate(
        self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg, callback: Callback | None
    ) -> Tensor:
        process = model.sde
        r1, r2 = (0.5, None) if self.order == 2 else (1.0 / 3.0, 2.0 / 3.0)
        t_end = grid_time(ts, -1)
        s = grid_time(ts, 0)
        lam_end = process.lambda_(t_end)
        lam_s = process.lambda_(s)
        h = torch.full_like(lam_s, float(self.h_init))
        x_prev = x
        i = 0
        # host syncs below are the adaptive step control (allowed by the style guide)
        while float((s - t_end).abs()) > self.t_err:
            last = bool(h >= lam_end - lam_s)
            t = t_end if last else process.t_of_lambda(lam_s + h)
            x_lower, x_higher, x0_s = self._pair(model, x, s, t, r1, r2)
            delta = torch.maximum(
                torch.full_like(x_lower, float(self.atol)), self.rtol * torch.maximum(x_lower.abs(), x_prev.abs())
            )
            E = ((x_higher - x_lower) / delta).flatten(1).pow(2).mean(1).sqrt().max().to(torch.float64)
            if not bool(torch.isfinite(E)):
                raise RuntimeError(f"non-finite error estimate at t={float(s)} (step h={float(h)} in lambda)")
            if bool(E <= 1.0):
                x, x_prev, s, lam_s = x_higher, x_lower, t, process.lambda_(t)
                report(callback, i, s.reshape(()), x, x0_s, model)
                i += 1
            # Lu et al. 2022, adaptive step size: h <- min(theta h E^(-1/order), lambda_end - lambda_s)
            factor = self.theta * E.clamp_min(1e-300) ** (-1.0 / self.order)
            if self.max_growth is not None:
                factor = factor.clamp_max(self.max_growth)
            h = torch.minimum(h * factor, lam_end - lam_s)
        return x

    def _pair(
        self, model: CountedModel, x_s: Tensor, s: Tensor, t: Tensor, r1: float, r2: float | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Lower- and higher-order results from s to t sharing their evaluations, and x0 at s."""
        process = model.sde
        alpha_s, sigma_s, lam_s = marginal(process, s)
        alpha_t, sigma_t, lam_t = marginal(process, t)
        h = lam_t - lam_s
        eps_s = model.eps(x_s, time_like(s, x_s))
        x0_s = x0_from_eps(x_s, eps_s, alpha_s, sigma_s)
        s1 = process.t_of_lambda(lam_s + r1 * h)
        alpha_s1, sigma_s1, _ = marginal(process, s1)
        u1 = dpm_solver_1_step(x_s, eps_s, alpha_s, alpha_s1, sigma_s1, r1 * h)
        eps_s1 = model.eps(u1, time_like(s1, x_s))
        if self.order == 2:
            x_lower = dpm_solver_1_step(x_s, eps_s, alpha_s, alpha_t, sigma_t, h)
            return x_lower, dpm_solver_2_step(x_s, eps_s, eps_s1, alpha_s, alpha_t, sigma_t, h, r1), x0_s
        x_lower = dpm_solver_2_step(x_s, eps_s, eps_s1, alpha_s, alpha_t, sigma_t, h, r1)
        s2 = process.t_of_lambda(lam_s + r2 * h)
        alpha_s2, sigma_s2, _ = marginal(process, s2)
        u2 = dpm_solver_3_mid(x_s, eps_s, eps_s1, alpha_s, alpha_s2, sigma_s2, h, r1, r2)
        eps_s2 = model.eps(u2, time_like(s2, x_s))
        return x_lower, dpm_solver_3_step(x_s, eps_s, eps_s2, alpha_s, alpha_t, sigma_t, h, r2), x0_s
