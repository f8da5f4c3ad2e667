"""diffusers' inference timesteps as scoresde time grids, so that our solvers walk the same times.

diffusers' timestep n is our time t = (n + 1) / N (`diffusers_models`); its "previous timestep"
-1, where alpha_cumprod is 1, is t = 0. Where each scheduler ends:

- DDIMScheduler: steps from n to n - N // K (K inference steps); the last step ends at alpha_cumprod
  1 (set_alpha_to_one=True: t = 0) or alphas_cumprod[0] (False: t = 1/N).
- DDPMScheduler: steps from each timestep to the next listed one; the last step ends at -1 (t = 0).
- DPMSolverMultistepScheduler: its `sigmas` end at 0 (final_sigmas_type "zero": t = 0) or at the
  noise level of timestep 0 ("sigma_min": t = 1/N).
"""

from __future__ import annotations

import torch
from torch import Tensor

from solvers.validate import check_int

from .diffusers_models import SUPPORTED_SCHEDULERS, _config  # noqa: F401  (SUPPORTED_SCHEDULERS: re-exported)

__all__ = ["SUPPORTED_SCHEDULERS", "grid_from_scheduler", "grid_from_timesteps"]


def grid_from_timesteps(timesteps, num_train_timesteps: int, *, final_timestep: int = -1) -> Tensor:
    """Time grid (K + 1,) float64, decreasing: t = (n + 1) / N for the timesteps n, then final_timestep.

    timesteps: diffusers' decreasing timesteps (K,) (`scheduler.timesteps`); final_timestep: where
    the last step ends, -1 (alpha_cumprod 1, t = 0) or a timestep below the last one.
    """
    check_int("num_train_timesteps", num_train_timesteps, 2)
    n = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).reshape(-1)
    n = torch.cat([n, torch.tensor([float(final_timestep)], dtype=torch.float64)])
    if n.numel() < 2 or not bool(torch.all(n[1:] < n[:-1])):
        raise ValueError(f"timesteps and final_timestep must decrease strictly, got {n.tolist()}")
    if float(n[-1]) < -1 or float(n[0]) > num_train_timesteps - 1:
        raise ValueError(f"timesteps must lie in [-1, {num_train_timesteps - 1}], got {n.tolist()}")
    return (n + 1) / num_train_timesteps


def grid_from_scheduler(scheduler) -> Tensor:
    """The time grid (K + 1,) float64 on which our solvers reproduce `scheduler`'s sampling loop.

    scheduler: one of SUPPORTED_SCHEDULERS after `set_timesteps(K)`. Raises ValueError where the
    scheduler's loop is not a walk over one grid: DDIM whose step n -> n - N // K misses the next
    listed timestep ("trailing" / "linspace" spacing with K not dividing N), and DPM-Solver with
    Karras / Lu / exponential / beta / flow sigmas (the network sees rounded timesteps while the
    step uses the unrounded sigmas).
    """
    name = type(scheduler).__name__
    if name not in SUPPORTED_SCHEDULERS:
        raise ValueError(f"unsupported scheduler {name}; choose one of {list(SUPPORTED_SCHEDULERS)} "
                         "or build the grid with grid_from_timesteps")
    if getattr(scheduler, "num_inference_steps", None) is None and name != "DDPMScheduler":
        raise ValueError(f"{name} has no inference timesteps yet: call scheduler.set_timesteps(steps) first")
    config = _config(scheduler)
    N = int(config["num_train_timesteps"])
    timesteps = [int(n) for n in scheduler.timesteps]
    if name == "DDIMScheduler":
        final = _ddim_final(timesteps, N, bool(config.get("set_alpha_to_one", True)))
    elif name == "DDPMScheduler":
        final = -1
    else:
        final = _dpm_solver_final(config)
    return grid_from_timesteps(timesteps, N, final_timestep=final)


def _ddim_final(timesteps: list[int], N: int, set_alpha_to_one: bool) -> int:
    """Where DDIM's last step ends, after checking that each step n -> n - N // K lands on the next timestep."""
    gap = N // len(timesteps)
    prev = [n - gap for n in timesteps]
    if prev[:-1] != timesteps[1:]:
        raise ValueError(
            f"DDIMScheduler steps from each timestep n to n - {gap} (N // K), which here is not the next "
            f"timestep it evaluates (timesteps {timesteps}, steps to {prev}): no single grid reproduces that; "
            f"use timestep_spacing 'leading', or a number of steps that divides num_train_timesteps={N}"
        )
    if prev[-1] >= 0:
        return prev[-1]
    return -1 if set_alpha_to_one else 0


def _dpm_solver_final(config: dict) -> int:
    for option in ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas"):
        if config.get(option):
            raise ValueError(f"DPMSolverMultistepScheduler with {option}=True steps on sigmas that are not its "
                             "(rounded) timesteps' own: no single grid reproduces it; turn the option off")
    final = config.get("final_sigmas_type", "zero")
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"unknown final_sigmas_type {final!r}; choose one of ['sigma_min', 'zero']")
    return -1 if final == "zero" else 0
