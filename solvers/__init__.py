"""Reverse-time samplers for affine diffusion processes, usable without ``scoresde``.

    import solvers
    solvers.available()                          # name -> one-line description
    sampler = solvers.get("dpm_solver++", order=3)
    sol = sampler(model, x_T, solvers.grids.uniform_lambda(model.sde, 20))
    sol.x, sol.nfe
    ts = solvers.fit_grid(sampler, model, x_cal, x_cal_ref, 10)  # a grid fitted to this model
"""

from . import grids
from .base import Sampler, Solution, Step
from .grid_fit import FitStep, fit_grid
from .protocol import Model, Process, bcast, pf_drift, randn, randn_like, reverse_drift, time_like
from .registry import available, get, register, unregister

__all__ = [
    "FitStep", "Model", "Process", "Sampler", "Solution", "Step", "available", "bcast", "fit_grid", "get", "grids",
    "pf_drift", "randn", "randn_like", "register", "reverse_drift", "time_like", "unregister",
]
