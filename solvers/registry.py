"""Samplers by name: one literal dict of built-ins, plus what research code registers."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from .base import Sampler
from .ddim import DDIM
from .dpm_solver import DPMSolver, DPMSolverAdaptive
from .dpm_solver_pp import DPMSolverPP, SDEDPMSolverPP
from .euler_maruyama import EulerMaruyama
from .heun import Heun
from .learned_variance import LearnedVarianceAncestral
from .ode import ProbabilityFlowODE
from .pc import PC, Langevin
from .reverse_diffusion import Ancestral, ReverseDiffusion
from .sde_torchsde import TorchSDE
from .unipc import UniPC

# name -> factory (a Sampler subclass); keep alphabetical within each family
_BUILTIN: dict[str, Callable[..., Sampler]] = {
    # reverse-SDE samplers (Euler–Maruyama, reverse diffusion, ancestral, predictor–corrector, torchsde)
    "ancestral": Ancestral,
    "ddpm_learned": LearnedVarianceAncestral,
    "euler_maruyama": EulerMaruyama,
    "langevin": Langevin,
    "pc": PC,
    "reverse_diffusion": ReverseDiffusion,
    "torchsde": TorchSDE,
    # probability-flow ODE samplers (DDIM, EDM Heun, torchdiffeq)
    "ddim": DDIM,
    "heun": Heun,
    "ode": ProbabilityFlowODE,
    # exponential integrators (DPM-Solver family, UniPC)
    "dpm_solver": DPMSolver,
    "dpm_solver++": DPMSolverPP,
    "dpm_solver_adaptive": DPMSolverAdaptive,
    "sde_dpm_solver++": SDEDPMSolverPP,
    "unipc": UniPC,
}

_REGISTERED: dict[str, Callable[..., Sampler]] = {}


def _all() -> dict[str, Callable[..., Sampler]]:
    return {**_BUILTIN, **_REGISTERED}


def available() -> dict[str, str]:
    """Every sampler name with its one-line description."""
    return {name: getattr(factory, "description", "") for name, factory in sorted(_all().items())}


def get(name: str, **options) -> Sampler:
    """Build the sampler `name` with its options fixed, e.g. ``get("pc", snr=0.16)``."""
    factories = _all()
    if name not in factories:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(factories)}")
    factory = factories[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = sorted(k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for solver {name!r}; valid options: {valid}")
    return factory(**options)


def register(name: str, factory: Callable[..., Sampler]) -> None:
    """Add a sampler factory under `name`; refuses a name that is taken."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"solver name must be a non-empty string, got {name!r}")
    if name in _all():
        raise ValueError(f"solver {name!r} is already registered; choose another name")
    if not callable(factory):
        raise ValueError(f"factory for {name!r} must be callable, got {type(factory).__name__}")
    _REGISTERED[name] = factory


def unregister(name: str) -> None:
    """Remove a sampler added by `register` (built-ins cannot be removed)."""
    if name not in _REGISTERED:
        raise ValueError(f"{name!r} was not added by register(); registered: {sorted(_REGISTERED)}")
    del _REGISTERED[name]
