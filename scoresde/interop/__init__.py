"""Bring your own model: diffusers UNets and schedulers, EDM / k-diffusion denoisers (docs/interop.md).

- diffusers -> scoresde: `from_diffusers(unet, scheduler)` and `load_diffusers(folder)` give a
  `ScoreModel` on the scheduler's `DiscreteVPSDE` (`sde_from_scheduler`) whose network sees diffusers'
  integer timesteps; `grid_from_scheduler(scheduler)` is the time grid on which our solvers
  reproduce DDIMScheduler, DPMSolverMultistepScheduler and DDPMScheduler.
- scoresde -> diffusers: `DiffusersStyleUNet(model)` is called like a UNet by a diffusers scheduler
  built with trained_betas=`scheduler_betas(model.sde)`.
- EDM / k-diffusion -> scoresde: `from_denoiser(D, sde)` (with `precondition=True`, EDM's c_skip,
  c_out, c_in, c_noise around a raw network: `EDMPrecond`).
- scoresde -> EDM / k-diffusion: `as_denoiser(model)`, a callable D(x, sigma).

diffusers is optional (`pip install 'scoresde[diffusers]'`): importing this package never imports
it; the functions that need it raise ImportError naming the extra.
"""

from ._optional import EXTRA_HINT, require_diffusers
from .denoisers import Denoiser, EDMPrecond, as_denoiser, edm_preconditioning, edm_sde, from_denoiser
from .diffusers_grids import SUPPORTED_SCHEDULERS, grid_from_scheduler, grid_from_timesteps
from .diffusers_models import (
    PREDICTION_TYPES,
    SUPPORTED_UNETS,
    DiffusersModel,
    DiffusersStyleUNet,
    DiffusersUNet,
    diffusers_timestep,
    from_diffusers,
    load_diffusers,
    prediction_from_scheduler,
    scheduler_betas,
    sde_from_scheduler,
)

__all__ = [
    "EXTRA_HINT", "PREDICTION_TYPES", "SUPPORTED_SCHEDULERS", "SUPPORTED_UNETS",
    "Denoiser", "DiffusersModel", "DiffusersStyleUNet",
    "DiffusersUNet", "EDMPrecond", "as_denoiser", "diffusers_timestep", "edm_preconditioning", "edm_sde",
    "from_denoiser", "from_diffusers", "grid_from_scheduler", "grid_from_timesteps", "load_diffusers",
    "prediction_from_scheduler", "require_diffusers", "scheduler_betas", "sde_from_scheduler",
]
