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
whose solver name, options and steps equal the run's (`find`), when the run keeps the default ends and its
guidance is the fitted setting (no labels, or labels at guidance scale 1: `choose`); its settings then say grid
"fitted", "fitted_grid" (the entry's index) and "ts". An explicit `grid=` wins. A guided run at another scale
walks the usual grid, and its settings say which entry it passed over and why ("fitted_grid_unused").
`store_fitted_grids` writes entries into a model file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .files import DIGEST_KEY, atomic_write, read_safetensors, write_safetensors

__all__ = ["META_KEY", "MODEL_FORMAT", "FittedGrid", "choose", "find", "from_json", "store_fitted_grids", "to_json"]

META_KEY = "fitted_grids"
# the exported model files that carry fitted grids (training.checkpoints.PRETRAINED_FORMAT, which is this
# constant: defined here so that `store_fitted_grids` checks files without importing training.checkpoints)
MODEL_FORMAT = "scoresde-pretrained-1"
FITTED_GUIDANCE_SCALE = 1.0  # the shipped conditional model's grids were fitted on its conditional predictions
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


def choose(model, solver, steps, t_start, t_end, *, grid_given: bool, labels, guidance_scale):
    """(entry or None, settings) for `sample`: the fitted grid a run walks and what its settings record.

    No entry when a grid is given or none matches (`find`): settings {}. A match is walked when the run is
    unguided (labels None) or guided at scale FITTED_GUIDANCE_SCALE (None means 1), the setting the grids were
    fitted in: settings {"fitted_grid": index}. A guided run at another scale walks the usual grid instead:
    settings {"fitted_grid_unused": {"index": index, "reason": ...}}.
    """
    match = None if grid_given else find(model, solver, steps, t_start, t_end)
    if match is None:
        return None, {}
    scale = FITTED_GUIDANCE_SCALE if guidance_scale is None else float(guidance_scale)
    if labels is not None and scale != FITTED_GUIDANCE_SCALE:
        reason = f"guidance_scale {scale:g}: the fitted grids were fitted at guidance scale {FITTED_GUIDANCE_SCALE:g}"
        return None, {"fitted_grid_unused": {"index": match[0], "reason": reason}}
    return match[1], {"fitted_grid": match[0]}  # the index in model.fitted_grids


def store_fitted_grids(path: str | os.PathLike, entries) -> Path:
    """Rewrite the model file `path` (an exported model) atomically with metadata "fitted_grids" set to
    `entries` (`FittedGrid`s; replacing any it held). Tensors and the other metadata are written back as read,
    so the weights stay bit-identical; a SHA-256 digest is recomputed when the file had one, and none is
    added to a file without (the shipped models have none)."""
    tensors, meta = read_safetensors(path, fmt=MODEL_FORMAT, what="pretrained model")
    had_digest = meta.pop(DIGEST_KEY, None) is not None
    meta[META_KEY] = to_json(entries)
    if had_digest:
        return write_safetensors(path, tensors, meta, mode=0o644)
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), mode=0o644)
    return Path(path)
