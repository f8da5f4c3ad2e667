"""Probability-flow ODE sampling through torchdiffeq (Song et al. 2021, arXiv:2011.13456, Eq. 13).

dx/dt = f(x, t) - g(t)^2 score(x, t) / 2, integrated from ts[0] down to ts[-1] with
`torchdiffeq.odeint` (Chen et al. 2018). One drift evaluation is one model evaluation.

- Adaptive methods (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun) integrate from ts[0] to
  ts[-1] only, with tolerances rtol / atol; the inner grid points are not used. torchdiffeq is told
  to step exactly onto ts[-1] (`step_t`) so that no step overshoots beyond it (the model is not
  defined below t = 0). The callback is called once, after the last step.
- Fixed-grid one-step methods (euler, midpoint, heun2, heun3, rk4) take one step per interval of
  ts, and the callback is called after each.
- Fixed-grid multistep methods (explicit_adams, implicit_adams, fixed_adams) walk ts in one call
  (they need their history), and the callback is called once at the end. torchdiffeq's Adams
  coefficients assume equal steps: on a uniform-lambda VP grid they converge at order 2, not the
  declared 4 (measured), and explicit Adams diverged on VE (32-256 uniform steps). Prefer rk4.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchdiffeq import odeint
from torchdiffeq._impl.odeint import SOLVERS as _TORCHDIFFEQ_SOLVERS  # torchdiffeq's own method table

from .base import Callback, Sampler, report
from .protocol import CountedModel, GeneratorArg, pf_drift, time_like

ADAPTIVE: tuple[str, ...] = ("adaptive_heun", "bosh3", "dopri5", "dopri8", "fehlberg2")
# one-step fixed-grid methods -> drift evaluations per step
FIXED_STAGES: dict[str, int] = {"euler": 1, "heun2": 2, "heun3": 3, "midpoint": 2, "rk4": 4}
MULTISTEP: tuple[str, ...] = ("explicit_adams", "fixed_adams", "implicit_adams")
# methods that use rtol / atol: step-size control, or implicit Adams' corrector iteration
WITH_TOLERANCES: tuple[str, ...] = (*ADAPTIVE, "fixed_adams", "implicit_adams")
METHODS: tuple[str, ...] = tuple(m for m in _TORCHDIFFEQ_SOLVERS if m != "scipy_solver")


class ProbabilityFlowDrift:
    """dx/dt of the probability-flow ODE as torchdiffeq's func(t, x); t a 0-d tensor, x (B, *D)."""

    def __init__(self, model: CountedModel, t_lo: Tensor | None = None, t_hi: Tensor | None = None):
        self.model = model
        self.t_lo, self.t_hi = t_lo, t_hi

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        if self.t_lo is not None:
            # torchdiffeq's initial-step heuristic probes f at t0 + h0, which can fall outside the
            # interval (and outside [0, T]); steps themselves never do (step_t). Clamp the probe only.
            t = t.clamp(self.t_lo, self.t_hi)
        t_b = time_like(t, x)
        # Song et al. 2021, Eq. (13): dx = [f(x, t) - g(t)^2 score / 2] dt
        return pf_drift(self.model.sde, x, t_b, self.model.score(x, t_b))


class ProbabilityFlowODE(Sampler):
    """Probability-flow ODE with any torchdiffeq method (except scipy_solver).

    `order` and `nfe_per_step` on an instance are those of the method (nfe_per_step = 0 when the
    count varies: adaptive and multistep methods). rtol / atol (default 1e-5 each, as in Song et al.)
    apply to adaptive methods and to implicit Adams' corrector iteration (WITH_TOLERANCES); the other
    methods refuse them.
    """

    name = "ode"
    description = "probability-flow ODE via torchdiffeq (Song et al. 2021, Eq. 13)"
    order = 5
    stochastic = False
    nfe_per_step = 0

    def __init__(
        self, *, method: str = "dopri5", rtol: float | None = None, atol: float | None = None, denoise_final: bool = False
    ):
        super().__init__(denoise_final=denoise_final)
        if method == "scipy_solver":
            raise ValueError("method 'scipy_solver' is not supported: it leaves torch and needs its own options; "
                             f"choose one of {sorted(METHODS)}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
        if method not in WITH_TOLERANCES and (rtol is not None or atol is not None):
            raise ValueError(f"rtol and atol apply to the methods {sorted(WITH_TOLERANCES)}, not to {method!r}")
        for key, value in (("rtol", rtol), ("atol", atol)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1):
                raise ValueError(f"{key} must be a number in (0, 1), got {value!r}")
        self.method = method
        self.rtol = None if rtol is None else float(rtol)
        self.atol = None if atol is None else float(atol)
        self.order = _TORCHDIFFEQ_SOLVERS[method].order
        self.nfe_per_step = FIXED_STAGES.get(method, 0)

    def options(self) -> dict:
        return {k: v for k, v in super().options().items() if k not in ("order", "nfe_per_step")}

    def integrate(
        self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg, callback: Callback | None
    ) -> Tensor:
        drift = ProbabilityFlowDrift(model, ts.min(), ts.max())
        tol = {"rtol": 1e-5 if self.rtol is None else self.rtol, "atol": 1e-5 if self.atol is None else self.atol}
        ts = ts.to(torch.float64)
        if self.method in FIXED_STAGES:
            for i in range(len(ts) - 1):
                x = odeint(drift, x, ts[i : i + 2], method=self.method)[-1]
                report(callback, i, ts[i + 1], x, None, model)
            return x
        if self.method in ADAPTIVE:
            ends = ts[[0, -1]]
            x = odeint(drift, x, ends, method=self.method, options={"step_t": ends[1:]}, **tol)[-1]
        else:
            x = odeint(drift, x, ts, method=self.method, **tol)[-1]
        report(callback, len(ts) - 2, ts[-1], x, None, model)
        return x
