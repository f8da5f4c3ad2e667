"""Probability-flow ODE sampling through torchdiffeq (Song et al. 2021, arXiv:2011.13456, Eq. 13).

dx/dt = f(x, t) - g(t)^2 score(x, t) / 2, integrated from ts[0] down to ts[-1] with
`torchdiffeq.odeint` (Chen et al. 2018). One drift evaluation is one model evaluation.

- Fixed-grid one-step methods (euler, midpoint, heun2, heun3, rk4) take one step per interval of
  ts through the base loop (`step`: one odeint call per interval), and the callback is called
  after each.
- Adaptive methods (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun) integrate from ts[0] to
  ts[-1] only, in one odeint call, with tolerances rtol / atol; the inner grid points are not used.
  torchdiffeq is told to step exactly onto the end (`step_t`) so that no step overshoots beyond it
  (the model is not defined below t = 0). The callback is called once, after the last step.
- Fixed-grid multistep methods (explicit_adams, implicit_adams, fixed_adams) walk ts in one odeint
  call (they need their history), and the callback is called once at the end. torchdiffeq's Adams
  coefficients assume equal steps: on a uniform-lambda VP grid they converge at order 2, not the
  declared 4 (measured), and explicit Adams diverged on VE (32-256 uniform steps). Prefer rk4.

With a hook, adaptive and multistep methods, too, walk the grid through the base loop: each interval
of ts is one odeint call (adaptive: from its start to its end, with `step_t` at the end; multistep:
restarting its history every interval, so at the lower order of its first steps), the hook applies
at every grid time and the callback is called after each interval.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torchdiffeq import odeint
from torchdiffeq._impl.odeint import SOLVERS as _TORCHDIFFEQ_SOLVERS

from .base import Callback, Hook, Solver, State, report
from .protocol import CountedModel, GeneratorArg, pf_drift, time_like
from .validate import check_name, check_number

ADAPTIVE: tuple[str, ...] = ("adaptive_heun", "bosh3", "dopri5", "dopri8", "fehlberg2")
# one-step fixed-grid methods -> drift evaluations per step
FIXED_STAGES: dict[str, int] = {"euler": 1, "heun2": 2, "heun3": 3, "midpoint": 2, "rk4": 4}
MULTISTEP: tuple[str, ...] = ("explicit_adams", "fixed_adams", "implicit_adams")
# methods that use rtol / atol: step-size control, or implicit Adams' corrector iteration
WITH_TOLERANCES: tuple[str, ...] = (*ADAPTIVE, "fixed_adams", "implicit_adams")
# torchdiffeq's own method table, less scipy_solver
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


def pf_odeint(drift: ProbabilityFlowDrift, x: Tensor, ts: Tensor, method: str, tol: dict[str, float]) -> Tensor:
    """x (B, *D) carried from ts[0] to ts[-1] (float64, decreasing) in one odeint call of `method`.

    Fixed one-step methods step on ts; adaptive ones go from ts[0] to ts[-1] with step-size control
    and land exactly on ts[-1]; multistep ones walk ts with their history. `tol` (rtol, atol) goes
    to the methods that use it.
    """
    if method in FIXED_STAGES:
        return odeint(drift, x, ts, method=method)[-1]
    if method in ADAPTIVE:
        ends = ts[[0, -1]]
        return odeint(drift, x, ends, method=method, options={"step_t": ends[1:]}, **tol)[-1]
    return odeint(drift, x, ts, method=method, **tol)[-1]


@dataclass(frozen=True)
class ODEState(State):
    """The state x (B, *D) and the probability-flow drift of the run (its probe clamped to the grid)."""

    drift: ProbabilityFlowDrift | None = None


@dataclass(frozen=True, kw_only=True)
class ProbabilityFlowODE(Solver):
    """Probability-flow ODE with any torchdiffeq method (except scipy_solver).

    Options: `method` (default dopri5), rtol / atol, `denoise_final`. `order` and `nfe_per_step` on
    an instance are those of the method (nfe_per_step = 0 when the count varies: adaptive and
    multistep methods). rtol / atol (default 1e-5 each, as in Song et al.) apply to adaptive methods
    and to implicit Adams' corrector iteration (WITH_TOLERANCES); the other methods refuse them.
    """

    name = "ode"
    description = "probability-flow ODE via torchdiffeq (Song et al. 2021, Eq. 13)"
    order = 5
    stochastic = False
    nfe_per_step = 0

    method: str = "dopri5"
    rtol: float | None = None
    atol: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.method == "scipy_solver":
            raise ValueError("method 'scipy_solver' is not supported: it leaves torch and needs its own options; "
                             f"choose one of {sorted(METHODS)}")
        check_name("method", self.method, sorted(METHODS))
        if self.method not in WITH_TOLERANCES and (self.rtol is not None or self.atol is not None):
            raise ValueError(f"rtol and atol apply to the methods {sorted(WITH_TOLERANCES)}, not to {self.method!r}")
        for key in ("rtol", "atol"):
            if getattr(self, key) is not None:
                self._set(**{key: check_number(key, getattr(self, key), 0, 1, low_open=True, high_open=True)})
        self._set(order=_TORCHDIFFEQ_SOLVERS[self.method].order, nfe_per_step=FIXED_STAGES.get(self.method, 0),
                  grid_ends_only=self.method in ADAPTIVE)

    def check_dtype(self, x: Tensor) -> None:
        """Refuse half precision for methods with step-size control or a multistep history: in float16 and
        bfloat16 their error estimates and step sizes underflow (dopri5 met NaN times, explicit Adams
        returned inf on a two-component mixture), so the result would not be a solution."""
        if x.dtype in (torch.float16, torch.bfloat16) and self.method not in FIXED_STAGES:
            raise ValueError(
                f"dtype {x.dtype} is too coarse for ode method {self.method!r}: use float32 or float64, "
                f"or a fixed-grid one-step method {sorted(FIXED_STAGES)}"
            )

    def tolerances(self) -> dict[str, float]:
        """rtol and atol as odeint takes them (1e-5 each unless given)."""
        return {"rtol": 1e-5 if self.rtol is None else self.rtol, "atol": 1e-5 if self.atol is None else self.atol}

    def integrate(
        self,
        model: CountedModel,
        x: Tensor,
        ts: Tensor,
        *,
        generator: GeneratorArg = None,
        callback: Callback | None = None,
        hook: Hook | None = None,
    ) -> Tensor:
        """The base loop for one-step methods and whenever a hook is given; otherwise one odeint call over ts."""
        self.check_dtype(x)
        if hook is not None or self.method in FIXED_STAGES:
            return super().integrate(model, x, ts, generator=generator, callback=callback, hook=hook)
        drift = ProbabilityFlowDrift(model, ts.min(), ts.max())
        ts = ts.to(torch.float64)
        x = pf_odeint(drift, x, ts, self.method, self.tolerances())
        report(callback, len(ts) - 2, ts[-1], x, None, model)
        return x

    def init(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg) -> ODEState:
        return ODEState(x=x, drift=ProbabilityFlowDrift(model, ts.min(), ts.max()))

    def step(
        self, model: CountedModel, state: ODEState, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> ODEState:
        interval = torch.stack([s, t]).to(torch.float64)
        return replace(state, x=pf_odeint(state.drift, state.x, interval, self.method, self.tolerances()))
