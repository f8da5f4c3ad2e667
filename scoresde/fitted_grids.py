"""Fitted time grids stored in a model file, and the lookup `scoresde.sample` makes in them (issue 18).

A model file's metadata entry "fitted_grids" (`META_KEY`) holds a JSON list of entries, each a grid fitted by
`solvers.fit_grid` to that model for one solver configuration and step count:

    {"solver": "unipc", "options": {... solver.options() ...}, "steps": 10, "ts": [1.0, ..., 0.001], "fit": {...}}

"options" are the built solver's full options (`Solver.options()`, defaults included), "ts" the (steps + 1,)
float64 times from T to t_eps (JSON floats round-trip float64 exactly), "fit" a JSON object saying how the grid
was fitted (benchmarks/fit_shipped_grids.py writes its calibration seed, reference and held-out error ratios).
`training.checkpoints.load_pretrained` reads them into `model.fitted_grids` (a tuple of `FittedGrid`; empty for
files without the entry, such as every file written before it), and `store_fitted_grids` writes them.

`sample(model, solver=..., steps=N)` with no `grid` (and `solver="auto"` after its resolution) walks the entry
whose solver name, options and steps equal the run's (`find`), when the run keeps the default ends; its
settings then say grid "fitted", "fitted_grid" (the entry's index) and "ts". An explicit `grid=` wins.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["META_KEY", "FittedGrid", "find", "from_json", "to_json"]

META_KEY = "fitted_grids"
MAX_ENTRIES = 256
MAX_STEPS = 10_000  # a fitted grid's steps (fit_grid differentiates through every step: far fewer in practice)
_KEYS = {"solver", "options", "steps", "ts", "fit"}


@dataclass(frozen=True)
class FittedGrid:
    """One stored grid: `solver` (a name in solvers.names()) built with `options` (its full `options()`),
    `steps` steps, times `ts` (steps + 1 floats, strictly decreasing) and `fit`, how it was fitted."""

    solver: str
    options: dict
    steps: int
    ts: tuple[float, ...]
    fit: dict = field(default_factory=dict)

    def grid(self) -> Tensor:
        """The times as a (steps + 1,) float64 CPU tensor."""
        return torch.tensor(self.ts, dtype=torch.float64)

    def to_dict(self) -> dict:
        return {"solver": self.solver, "options": _plain(self.options), "steps": self.steps, "ts": list(self.ts),
                "fit": _plain(self.fit)}


def _plain(value):
    """value as JSON would give it back (tuples become lists), so that stored and live options compare."""
    return json.loads(json.dumps(value))


def to_json(entries) -> str:
    """The metadata text of `entries` (FittedGrid): a JSON list."""
    return json.dumps([e.to_dict() for e in entries])


def _entry(where: str, i: int, d, T: float) -> FittedGrid:
    """Entry i of a stored list, checked: ValueError naming `where`, the entry and what is wrong."""
    bad = f"{where}: metadata '{META_KEY}' entry {i}"
    if not isinstance(d, dict) or set(d) != _KEYS:
        got = sorted(d)[:8] if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{bad} must be an object with exactly the keys {sorted(_KEYS)}, got {got}")
    name, options, steps, ts, fit = (d[k] for k in ("solver", "options", "steps", "ts", "fit"))
    if not (isinstance(name, str) and 0 < len(name) <= 100):
        raise ValueError(f"{bad}: 'solver' must be a solver name, got {str(name)[:40]!r}")
    if not isinstance(options, dict) or not isinstance(fit, dict):
        raise ValueError(f"{bad}: 'options' and 'fit' must be JSON objects")
    if not (type(steps) is int and 1 <= steps <= MAX_STEPS):
        raise ValueError(f"{bad}: 'steps' must be an integer in [1, {MAX_STEPS}], got {str(steps)[:40]}")
    if not (isinstance(ts, list) and len(ts) == steps + 1):
        raise ValueError(f"{bad}: 'ts' must be a list of steps + 1 = {steps + 1} times")
    if not all(type(t) in (int, float) and math.isfinite(t) for t in ts):
        raise ValueError(f"{bad}: 'ts' must hold finite numbers")
    ts = tuple(float(t) for t in ts)
    if not all(a > b for a, b in zip(ts, ts[1:])) or not (0.0 <= ts[-1] and ts[0] <= T):
        raise ValueError(f"{bad}: 'ts' must be strictly decreasing within [0, T={T}], got [{ts[0]}, ..., {ts[-1]}]")
    return FittedGrid(name, options, steps, ts, fit)


def from_json(where: str, value, sde) -> tuple[FittedGrid, ...]:
    """The entries of a decoded "fitted_grids" list for a model of `sde` (its T bounds the times), checked."""
    if not isinstance(value, list) or len(value) > MAX_ENTRIES:
        raise ValueError(f"{where}: metadata '{META_KEY}' must be a JSON list of at most {MAX_ENTRIES} entries")
    return tuple(_entry(where, i, d, float(sde.T)) for i, d in enumerate(value))


def find(model, solver, steps, t_start=None, t_end=None) -> tuple[int, FittedGrid] | None:
    """(index, entry) of `model.fitted_grids` for a built `solver` run on `steps` steps (its `default_steps`
    when None) between t_start and t_end (None: the default ends), or None when no entry matches.

    An entry matches when its solver name, full options and steps equal the run's and its ends equal any
    given t_start / t_end. Adaptive solvers (`grid_ends_only`) never match: they choose their own steps.
    """
    entries = getattr(model, "fitted_grids", ())
    if not entries or solver.grid_ends_only:
        return None
    steps = solver.default_steps if steps is None else steps
    if type(steps) is not int:
        return None  # an invalid steps matches nothing; make_grid reports it
    options = _plain(solver.options())
    for i, entry in enumerate(entries):
        if (entry.solver == solver.name and entry.steps == steps and _plain(entry.options) == options
                and (t_start is None or t_start == entry.ts[0]) and (t_end is None or t_end == entry.ts[-1])):
            return i, entry
    return None
