"""What every solver shares: the result and callback records, grid validation and the one grid loop.

A solver is a frozen dataclass whose fields are its options, built by ``solvers.get(name, **options)``
and called as ``solver(model, x_T, ts, *, generator=None, callback=None, hook=None) -> Solution``.
It declares its per-run state and one step, in the spirit of diffrax's init / step:

    init(model, x, ts, *, generator) -> State             # before the first step, usually no evaluation
    step(model, state, s, t, *, generator, hook) -> State  # one grid interval, from s to the less noisy t

and the base class owns the loop: evaluation counting, the callback after each step, the optional
final denoising step, and a hook ``x = hook(x, t)`` applied to the state at every grid time (the
first included) that may change x (inpainting and colorization by replacement, thresholding). A
step that evaluates the model again at its end time t (a predictor–corrector's corrector, UniPC's
corrector) passes that intermediate state through `hook` first, so conditioning keeps every solver
at its full order where the math allows (docs/architecture.md). Adaptive solvers put a step-size
controller beside the loop (`solvers.controllers`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch
from torch import Tensor

from .protocol import SDE, CountedModel, GeneratorArg, Model, time_like
from .validate import check_bool

__all__ = [
    "ALL_KINDS", "Callback", "Hook", "OneStepSolver", "Solution", "Solver", "State", "Step", "check_grid", "report",
]

ALL_KINDS = frozenset({"vp", "subvp", "ve", "flow"})


@dataclass(frozen=True)
class Solution:
    """Result of a solver run.

    x: (B, *D) final state (Tweedie's x0 estimate when the solver denoises at the end);
    nfe: model evaluations used, final denoising included; ts: (N + 1,) float64 grid walked.
    """

    x: Tensor
    nfe: int
    ts: Tensor


@dataclass(frozen=True)
class Step:
    """What a solver hands its callback after step i (from ts[i] to ts[i + 1]).

    x: (B, *D) state at time t = ts[i + 1]; x0: (B, *D) latest data prediction, or None when the
    step made none; nfe: evaluations so far.
    """

    i: int
    t: Tensor
    x: Tensor
    x0: Tensor | None
    nfe: int


@dataclass(frozen=True)
class State:
    """What a solver carries from one grid time to the next: the state x (B, *D) and the latest data
    prediction x0 (B, *D) or None. Solvers with history subclass it (a frozen dataclass too)."""

    x: Tensor
    x0: Tensor | None = None


Callback = Callable[[Step], None]
Hook = Callable[[Tensor, Tensor], Tensor]  # (x (B, *D), t 0-d float64) -> x


def check_grid(ts: Tensor, sde: SDE) -> None:
    """Raise ValueError unless ts is a 1-D, strictly decreasing float grid inside [0, T]."""
    if not isinstance(ts, Tensor) or ts.ndim != 1 or ts.numel() < 2 or not ts.is_floating_point():
        shape = tuple(ts.shape) if isinstance(ts, Tensor) else type(ts).__name__
        raise ValueError(f"ts must be a 1-D float tensor of N + 1 >= 2 times, got {shape}")
    # one host sync per call, not per step
    if not bool(torch.all(ts[1:] < ts[:-1])):
        raise ValueError("ts must be strictly decreasing (from T towards t_eps)")
    lo, hi = float(ts[-1].detach()), float(ts[0].detach())  # ts may carry grad (solvers.fit_grid)
    if not (lo >= 0.0 and hi <= sde.T + 1e-12):
        raise ValueError(f"ts must lie in [0, T={sde.T}], got [{lo}, {hi}]")


def report(callback: Callback | None, i: int, t: Tensor, x: Tensor, x0: Tensor | None, model: CountedModel) -> None:
    """Call `callback` with a Step record when one is given."""
    if callback is not None:
        callback(Step(i=i, t=t, x=x, x0=x0, nfe=model.nfe))


def no_hook(x: Tensor, t: Tensor) -> Tensor:
    """The identity hook."""
    return x


@dataclass(frozen=True, kw_only=True)
class Solver:
    """Base class of every solver; the dataclass fields are its options.

    Class attributes (set by subclasses; a few depend on the options and are then set per instance
    in `__post_init__`): `name`; `description` (one line); `order` (the convergence order of the
    deterministic part: global order for ODE solvers, weak order for SDE samplers); `stochastic`;
    `nfe_per_step` (model evaluations per grid step, 0 when adaptive); `kinds` (SDE kinds it
    supports) and `why_unsupported` (said when refused); `default_steps` and `default_grid` (what
    `scoresde.sample` uses unless told otherwise); `grid_ends_only` (True for adaptive solvers, which
    without a hook use only ts[0] and ts[-1]: `scoresde.sample` then refuses steps and grid names).
    """

    name: ClassVar[str] = "solver"
    description: ClassVar[str] = ""
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    nfe_per_step: ClassVar[int] = 1
    kinds: ClassVar[frozenset[str]] = ALL_KINDS
    why_unsupported: ClassVar[str] = ""
    default_steps: ClassVar[int] = 100  # what scoresde.sample uses when no step count is given
    default_grid: ClassVar[str] = "uniform_t"  # a name in solvers.grids.GRIDS
    grid_ends_only: ClassVar[bool] = False  # adaptive: only the grid's ends are used (without a hook)

    denoise_final: bool = False

    def __post_init__(self):
        check_bool("denoise_final", self.denoise_final)

    def _set(self, **values) -> None:
        """Set attributes from __post_init__: normalized options, and class attributes that depend on them (e.g.
        `stochastic` for DDIM with eta > 0)."""
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def options(self) -> dict:
        """The options this solver was built with (name -> value)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def check_supported(self, sde: SDE) -> None:
        if sde.kind not in self.kinds:
            why = f": {self.why_unsupported}" if self.why_unsupported else ""
            raise ValueError(
                f"solver {self.name!r} does not support {sde.kind!r} processes "
                f"(supported: {sorted(self.kinds)}){why}"
            )

    def check_model(self, model: Model) -> None:
        """Raise ValueError if `model` lacks what this solver needs (default: nothing beyond Model)."""

    def __call__(self, model: Model, x_T: Tensor, ts: Tensor, *, generator: GeneratorArg = None,
                 callback: Callback | None = None, hook: Hook | None = None) -> Solution:
        self.check_supported(model.sde)
        self.check_model(model)
        check_grid(ts, model.sde)
        counted = CountedModel(model)
        hooked = {} if hook is None else {"hook": hook}  # a 0.1-style integrate(...) takes no hook
        x = self.integrate(counted, x_T, ts, generator=generator, callback=callback, **hooked)
        if self.denoise_final:
            # Tweedie's formula: E[x_0 | x_t] (Efron 2011), one more evaluation at the last time
            x = counted.x0(x, time_like(ts[-1], x))
        return Solution(x=x, nfe=counted.nfe, ts=ts)

    def integrate(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg = None,
                  callback: Callback | None = None, hook: Hook | None = None) -> Tensor:
        """The grid loop: walk ts from ts[0] to ts[-1] with `step`; return the state at ts[-1]."""
        if hook is not None:
            x = hook(x, ts[0])
        state = self.init(model, x, ts, generator=generator)
        for i in range(len(ts) - 1):
            state = self.step(model, state, ts[i], ts[i + 1], generator=generator, hook=hook or no_hook)
            if hook is not None:
                state = replace(state, x=hook(state.x, ts[i + 1]))
            report(callback, i, ts[i + 1], state.x, state.x0, model)
        return state.x

    def init(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg) -> State:
        """The state at ts[0] (default: x alone; no evaluation)."""
        return State(x=x)

    def step(
        self, model: CountedModel, state: State, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> State:
        """One step from grid time s to the less noisy grid time t (0-d float64 tensors)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither step nor integrate")


@dataclass(frozen=True, kw_only=True)
class OneStepSolver(Solver):
    """A solver whose step is one call of a module-level function, its class attribute `update`
    (a staticmethod): update(model, x, s, t, *, generator) -> (x_t, x0 or None). First order, one
    evaluation per step unless the subclass says otherwise."""

    update: ClassVar[Callable[..., tuple[Tensor, Tensor | None]]]

    def step(
        self, model: CountedModel, state: State, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> State:
        return State(*self.update(model, state.x, s, t, generator=generator))
