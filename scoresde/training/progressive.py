"""Progressive distillation in the trainer (TrainConfig.loss "pd"; scoresde.fewstep.progressive, docs/distillation.md).

One run is one halving round of Salimans & Ho 2022 (arXiv:2202.00512, Algorithm 2): the student, a plain
`ScoreModel` over the run's network (`TrainConfig.prediction`, usually "v"), learns to take N = `pd_steps`
deterministic DDIM steps on ts[::2], where the teacher takes 2N on ts = grids.make(pd_grid, sde, 2N). The loss
is `fewstep.progressive.distillation_loss` (the closed-form two-DDIM-step target), so a round gets everything a
diffusion run has: EMA, checkpoints, exact resume, DDP, metrics; sampling and export use the EMA network.

- The teacher (`TrainConfig.teacher`, a model file) passes `training.consistency.check_teacher` as for "cd" (the
  same process; unless `init_from` names other weights, also the network, prediction and noise input whose
  weights start the student) and `check_pd_teacher`: a diffusion model of the data itself, and, when it is the
  student of an earlier "pd" round (its file records loss "pd", pd_steps and pd_grid), one distilled to exactly
  2N steps on the same grid. A plain diffusion teacher has no recorded steps and takes any 2N.
- Every grid of solvers.grids is uniform in some function of t, so the grids nest: round k's student grid
  make(grid, sde, 2N)[::2] is make(grid, sde, N), the grid the next round's teacher walks.
- The run's files record N and the grid in their TrainConfig; `pd_sampling(model)` reads them back, and
  `scoresde sample --model FILE` uses them: DDIM, N steps, that grid unless told otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from solvers import grids

from ..fewstep.progressive import distillation_loss
from ..param import ScoreModel
from ..sde import SDE
from .config import TrainConfig, recorded_config
from .consistency import check_image_teacher

__all__ = ["check_pd_teacher", "pd_loss", "pd_sampling", "pd_teacher_grid"]


def pd_teacher_grid(config: TrainConfig, sde: SDE) -> Tensor:
    """The teacher's (2N + 1,) float64 grid of a "pd" run, grids.make(pd_grid, sde, 2 * pd_steps); the student
    walks every other time of it."""
    return grids.make(config.pd_options()[0], sde, 2 * config.pd_steps)


def pd_sampling(model) -> tuple[int, str] | None:
    """(steps, grid name) a loaded model file was distilled to by a "pd" run (sample it with DDIM on
    grids.make(grid, sde, steps)), or None for any other model (its `config` records another loss, or none)."""
    recorded = recorded_config(model, "pd")
    return None if recorded is None else recorded.ddim_sampling()


def check_pd_teacher(config: TrainConfig, teacher: ScoreModel, net_config) -> None:
    """Refuse a teacher (a loaded model file) of a "pd" run that is not a diffusion model of the run's data (a latent
    model, or one of another image shape), or that an earlier "pd" round distilled to other than 2 * pd_steps steps
    or to another grid; the error names both numbers (or both grids) and the fix."""
    path, grid = config.teacher, config.pd_options()[0]
    check_image_teacher(config, teacher, net_config)
    recorded = pd_sampling(teacher)
    if recorded is None:  # a plain diffusion model: any 2N steps
        return
    t_steps, t_grid = recorded
    if t_steps != 2 * config.pd_steps:
        fix = f"set pd_steps {t_steps // 2} to halve it" if t_steps % 2 == 0 else "an odd count cannot be halved"
        raise ValueError(f"teacher {path} was distilled to {t_steps} DDIM steps (its run's pd_steps); this run's "
                         f"pd_steps {config.pd_steps} needs a teacher of 2 x {config.pd_steps} = {2 * config.pd_steps} "
                         f"steps: {fix}")
    if t_grid != grid:
        raise ValueError(f"teacher {path} was distilled on grid {t_grid!r}; this run's pd_grid is {grid!r}: set pd_grid "
                         f"{t_grid!r} (the student walks every other time of its teacher's grid)")


def pd_loss(config: TrainConfig, student: ScoreModel, teacher: ScoreModel, teacher_ts: Tensor, x0: Tensor,
            generator: torch.Generator) -> Tensor:
    """The batch's scalar loss of loss "pd": the mean of `fewstep.progressive.distillation_loss` on the teacher's
    grid `teacher_ts` (2N + 1,) with config's weighting; x0 (B, *D); draws step indices and noise from `generator`."""
    return distillation_loss(teacher, student, teacher_ts, x0, weighting=config.pd_options()[1],
                             generator=generator).mean()
