"""What every sampler shares: the result type, the callback record, validation and the loop shell.

A sampler is an object built by ``solvers.get(name, **options)`` and called as
``sampler(model, x_T, ts, *, generator=None, callback=None) -> Solution``. Subclasses set the
class attributes below and implement ``integrate``; ``__call__`` validates, counts model
evaluations, applies the optional final denoising step and packs the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .protocol import CountedModel, GeneratorArg, Model, Process, time_like

ALL_KINDS = frozenset({"vp", "subvp", "ve", "flow"})


@dataclass(frozen=True)
class Solution:
    """Result of a sampler run.

    x: (B, *D) final state (Tweedie's x0 estimate when the sampler denoises at the end);
    nfe: model evaluations used, final denoising included; ts: (N + 1,) float64 grid walked.
    """

    x: Tensor
    nfe: int
    ts: Tensor


@dataclass(frozen=True)
class Step:
    """What a sampler hands its callback after step i (from ts[i] to ts[i + 1]).

    x: (B, *D) state at time t = ts[i + 1]; x0: (B, *D) latest data prediction, or None when the
    step made none; nfe: evaluations so far.
    """

    i: int
    t: Tensor
    x: Tensor
    x0: Tensor | None
    nfe: int


Callback = Callable[[Step], None]


def check_grid(ts: Tensor, process: Process) -> None:
    """Raise ValueError unless ts is a 1-D, strictly decreasing float grid inside [0, T]."""
    if not isinstance(ts, Tensor) or ts.ndim != 1 or ts.numel() < 2 or not ts.is_floating_point():
        shape = tuple(ts.shape) if isinstance(ts, Tensor) else type(ts).__name__
        raise ValueError(f"ts must be a 1-D float tensor of N + 1 >= 2 times, got {shape}")
    # one host sync per call, not per step
    if not bool(torch.all(ts[1:] < ts[:-1])):
        raise ValueError("ts must be strictly decreasing (from T towards t_eps)")
    lo, hi = float(ts[-1].detach()), float(ts[0].detach())  # ts may carry grad (solvers.fit_grid)
    if not (lo >= 0.0 and hi <= process.T + 1e-12):
        raise ValueError(f"ts must lie in [0, T={process.T}], got [{lo}, {hi}]")


class Sampler:
    """Base class of every sampler.

    Class attributes (overridden by subclasses): `name`; `description` (one line); `order` (the
    convergence order of the deterministic part: global order for ODE solvers, weak order for
    SDE samplers); `stochastic`; `nfe_per_step` (model evaluations per grid step, 0 when
    adaptive); `kinds` (process kinds it supports) and `why_unsupported` (said when refused);
    `default_steps` and `default_grid` (what `scoresde.sample` uses unless told otherwise).
    """

    name: ClassVar[str] = "sampler"
    description: ClassVar[str] = ""
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    nfe_per_step: ClassVar[int] = 1
    kinds: ClassVar[frozenset[str]] = ALL_KINDS
    why_unsupported: ClassVar[str] = ""
    default_steps: ClassVar[int] = 100  # what scoresde.sample uses when no step count is given
    default_grid: ClassVar[str] = "uniform_t"  # a name in solvers.grids.GRIDS

    def __init__(self, *, denoise_final: bool = False):
        if not isinstance(denoise_final, bool):
            raise ValueError(f"denoise_final must be True or False, got {denoise_final!r}")
        self.denoise_final = denoise_final

    def options(self) -> dict:
        """The options this sampler was built with (name -> value)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def check_supported(self, process: Process) -> None:
        if process.kind not in self.kinds:
            why = f": {self.why_unsupported}" if self.why_unsupported else ""
            raise ValueError(
                f"solver {self.name!r} does not support {process.kind!r} processes "
                f"(supported: {sorted(self.kinds)}){why}"
            )

    def __call__(
        self,
        model: Model,
        x_T: Tensor,
        ts: Tensor,
        *,
        generator: GeneratorArg = None,
        callback: Callback | None = None,
    ) -> Solution:
        self.check_supported(model.sde)
        check_grid(ts, model.sde)
        counted = CountedModel(model)
        x = self.integrate(counted, x_T, ts, generator=generator, callback=callback)
        if self.denoise_final:
            # Tweedie's formula: E[x_0 | x_t] (Efron 2011), one more evaluation at the last time
            x = counted.x0(x, time_like(ts[-1], x))
        return Solution(x=x, nfe=counted.nfe, ts=ts)

    def integrate(
        self,
        model: CountedModel,
        x: Tensor,
        ts: Tensor,
        *,
        generator: GeneratorArg,
        callback: Callback | None,
    ) -> Tensor:
        """Walk the grid ts from ts[0] to ts[-1]; return the state at ts[-1]."""
        raise NotImplementedError


def report(callback: Callback | None, i: int, t: Tensor, x: Tensor, x0: Tensor | None, model: CountedModel) -> None:
    """Call `callback` with a Step record when one is given."""
    if callback is not None:
        callback(Step(i=i, t=t, x=x, x0=x0, nfe=model.nfe))


class OneStepSampler(Sampler):
    """A sampler that walks the grid with one `step` per interval, reporting after each.

    Subclasses implement `step(model, x, t_cur, t_next, *, generator) -> (x_next, x0 or None)`
    with t_cur, t_next 0-d float64 grid entries; `integrate` is the loop.
    """

    def step(
        self, model: CountedModel, x: Tensor, t_cur: Tensor, t_next: Tensor, *, generator: GeneratorArg
    ) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def integrate(
        self,
        model: CountedModel,
        x: Tensor,
        ts: Tensor,
        *,
        generator: GeneratorArg,
        callback: Callback | None,
    ) -> Tensor:
        for i in range(len(ts) - 1):
            x, x0 = self.step(model, x, ts[i], ts[i + 1], generator=generator)
            report(callback, i, ts[i + 1], x, x0, model)
        return x
