"""Reverse-time solvers for affine diffusion processes, usable without ``scoresde``.

    import solvers
    solvers.available()                          # name -> one-line description
    solver = solvers.get("dpm_solver++", order=3)
    sol = solver(model, x_T, solvers.grids.uniform_lambda(model.sde, 20))
    sol.x, sol.nfe
    ts = solvers.fit_grid(solver, model, x_cal, x_cal_ref, 10)  # a grid fitted to this model
    name, options, grid = solvers.recommend(model.sde, 10)     # the best measured choice for 10 evaluations

Importing the package loads the ground floor (protocols, conversions, coefficients, validators), the
base class, the registry and the grids; each solver's module (and torchdiffeq, torchsde) is
imported when that solver is first asked for. docs/architecture.md maps the modules.
"""

import warnings

from . import grids
from .base import Solution, Solver, State, Step
from .grid_fit import FitStep, fit_grid
from .protocol import SDE, Model, PredictionWrapper, bcast, pf_drift, randn, randn_like, reverse_drift, time_like
from .registry import available, get, names, register, unregister

__all__ = [
    "SDE", "FitStep", "Model", "PredictionWrapper", "Recommendation", "Solution", "Solver", "State", "Step",
    "available", "bcast", "fit_grid", "get", "grids", "names", "pf_drift", "randn", "randn_like", "recommend",
    "register", "reverse_drift", "time_like", "unregister",
]

# names before version 0.2 -> (new name, object); docs/conventions.md
_DEPRECATED = {"Sampler": ("Solver", Solver), "Process": ("SDE", SDE)}


def __getattr__(name: str):
    if name in ("Recommendation", "recommend"):  # imported when first asked for, like the solvers' modules
        from . import recommended

        return getattr(recommended, name)
    if name in _DEPRECATED:
        new, obj = _DEPRECATED[name]
        warnings.warn(f"solvers.{name} is deprecated; use solvers.{new}", DeprecationWarning, stacklevel=2)
        return obj
    raise AttributeError(f"module 'solvers' has no attribute {name!r}")
