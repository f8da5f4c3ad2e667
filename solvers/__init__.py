"""Reverse-time samplers for affine diffusion processes, usable without ``scoresde``.

    import solvers
    solvers.available()                          # name -> one-line description
    sampler = solvers.get("dpm_solver++", order=3)
    sol = sampler(model, x_T, solvers.grids.uniform_lambda(model.sde, 20))
    sol.x, sol.nfe
"""

from . import grids
from .base import Sampler, Solution, Step
from .protocol import Model, Process, bcast, pf_drift, randn, randn_like, reverse_drift, time_like
from .registry import available, get, register, unregister

__all__ = [
    "Model", "Process", "Sampler", "Solution", "Step", "available", "bcast", "get", "grids",
    "pf_drift", "randn", "randn_like", "register", "reverse_drift", "time_like", "unregister",
]
