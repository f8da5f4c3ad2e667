"""Solvers by name: one literal table of built-ins, imported when asked for, plus what research code registers."""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable

from .base import Solver

# name -> (module in this package, class); keep alphabetical within each family
_BUILTIN: dict[str, tuple[str, str]] = {
    # reverse-SDE samplers (Euler–Maruyama, reverse diffusion, ancestral, predictor–corrector, torchsde)
    "ancestral": ("reverse_diffusion", "Ancestral"),
    "ddpm_learned": ("learned_variance", "LearnedVarianceAncestral"),
    "euler_maruyama": ("euler_maruyama", "EulerMaruyama"),
    "langevin": ("pc", "Langevin"),
    "pc": ("pc", "PC"),
    "reverse_diffusion": ("reverse_diffusion", "ReverseDiffusion"),
    "torchsde": ("sde_torchsde", "TorchSDE"),
    # probability-flow ODE solvers (DDIM, EDM Heun, torchdiffeq)
    "ddim": ("ddim", "DDIM"),
    "heun": ("heun", "Heun"),
    "ode": ("ode", "ProbabilityFlowODE"),
    # exponential integrators (DPM-Solver family, DEIS, iPNDM, UniPC)
    "deis": ("deis", "DEIS"),
    "dpm_solver": ("dpm_solver", "DPMSolver"),
    "dpm_solver++": ("dpm_solver_pp", "DPMSolverPP"),
    "dpm_solver_adaptive": ("dpm_solver", "DPMSolverAdaptive"),
    "dpm_solver_multistep": ("dpm_solver_multistep", "DPMSolverMultistep"),
    "ipndm": ("ipndm", "IPNDM"),
    "sde_dpm_solver++": ("dpm_solver_pp", "SDEDPMSolverPP"),
    "unipc": ("unipc", "UniPC"),
    # few-step samplers of consistency models
    "consistency": ("consistency", "Consistency"),
}

_REGISTERED: dict[str, Callable[..., Solver]] = {}
_LOCK = threading.Lock()  # register / unregister from several threads


def builtin(name: str) -> Callable[..., Solver]:
    """The class of the built-in solver `name`, importing its module on first use."""
    module, cls = _BUILTIN[name]
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def _all() -> dict[str, Callable[..., Solver]]:
    return {**{name: builtin(name) for name in _BUILTIN}, **_REGISTERED}


def names() -> list[str]:
    """Every solver name, sorted (imports nothing)."""
    return sorted({*_BUILTIN, *_REGISTERED})


def available() -> dict[str, str]:
    """Every solver name with its one-line description (imports the built-in solvers' modules)."""
    return {name: getattr(factory, "description", "") for name, factory in sorted(_all().items())}


def factory(name: str) -> Callable[..., Solver]:
    """The class or factory registered under `name`."""
    if not isinstance(name, str):  # a list or dict would fail the lookups below as unhashable
        raise ValueError(f"unknown solver {name!r}; choose one of {names()}"[:600])
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        return builtin(name)
    raise ValueError(f"unknown solver {name!r}; choose one of {names()}")


def get(name: str, **options) -> Solver:
    """Build the solver `name` with its options fixed, e.g. ``get("pc", snr=0.16)``."""
    make = factory(name)
    params = inspect.signature(make).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = sorted(k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for solver {name!r}; valid options: {valid}")
    return make(**options)


def register(name: str, factory: Callable[..., Solver]) -> None:
    """Add a solver factory under `name`; refuses a name that is taken."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"solver name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise ValueError(f"factory for {name!r} must be callable, got {type(factory).__name__}")
    with _LOCK:
        if name in _BUILTIN or name in _REGISTERED:
            raise ValueError(f"solver {name!r} is already registered; choose another name")
        _REGISTERED[name] = factory


def unregister(name: str) -> None:
    """Remove a solver added by `register` (built-ins cannot be removed)."""
    with _LOCK:
        if name not in _REGISTERED:
            raise ValueError(f"{name!r} was not added by register(); registered: {sorted(_REGISTERED)}")
        del _REGISTERED[name]
