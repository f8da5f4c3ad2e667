"""The consistency losses in the trainer (TrainConfig.loss "cd", "ct", "ect"; scoresde.fewstep).

A consistency run trains a `ConsistencyModel` whose network predicts like a diffusion network
(`TrainConfig.prediction`, usually "eps"): f = c_skip x + c_den D(x, t), D that prediction's data
estimate (c_skip = 1, c_den = 0 at t_eps; c_skip -> 0, c_den -> 1 within `boundary_width` of it), so a student that starts from a teacher's weights starts as the teacher's one-step denoiser
(LCM's parameterization, Luo et al. 2023). The boundary time is the process's t_eps, where the
"consistency" sampler's default grid ends.

- The teacher (cd: evaluated by the loss; ect: only its weights start the run) is a model file of the same
  process; unless `init_from` names other weights to start from, also of the same network configuration
  (dropout aside), prediction and noise input (`check_teacher` checks each). init_from lets a student predict
  otherwise than its teacher, e.g. "v" from weights fine-tuned to v-prediction (docs/few_step.md).
- The target network: with target_decay > 0 (cd's default 0.95) a third copy of the weights, updated as an
  EMA of the student after each step and checkpointed ("target.*"); with 0 (ct, ect) the student itself
  without gradients (iCT, Song & Dhariwal 2023).
- The EMA network (TrainConfig.ema_decay) is what sampling and export use, as for diffusion runs.
- The schedules: iCT's discretization N(k) and ECT's stage a(k) are functions of the step k and
  TrainConfig.steps, so a resumed run continues them exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..fewstep.consistency import ConsistencyModel
from ..fewstep.consistency_losses import cd_loss, ct_loss, ect_loss, ect_stage, ict_discretization
from ..param import ScoreModel
from ..sde import SDE
from .builders import net_config_diff
from .config import TrainConfig

__all__ = ["check_image_teacher", "check_teacher", "consistency_loss", "consistency_model"]


def consistency_model(config: TrainConfig, net: nn.Module, sde: SDE) -> ConsistencyModel:
    """The ConsistencyModel of a consistency run over `net` (the student, its EMA or its target)."""
    return ConsistencyModel(net, sde, c_noise=config.c_noise, net_prediction=config.prediction,
                            boundary_width=config.boundary_width)


def check_teacher(config: TrainConfig, teacher: ScoreModel, net_config, sde: SDE, *, weights: bool = True) -> None:
    """Refuse a teacher (a loaded model file) of another process, and, when its weights start the student
    (`weights`: no init_from), one whose network (dropout aside: no weight depends on it), prediction or noise
    input differ from the run's; the error names every difference."""
    path = config.teacher
    if isinstance(teacher, ConsistencyModel):
        raise ValueError(f"teacher {path}: it is a consistency model; the teacher must be a diffusion model")
    diffs = []
    if teacher.sde.config() != sde.config():
        diffs.append(f"sde: {teacher.sde.config()} -> {sde.config()}")
    if weights:
        t_net = teacher.net_config
        if type(t_net) is not type(net_config):
            diffs.append(f"network {type(t_net).__name__} -> {type(net_config).__name__}")
        else:
            diffs += net_config_diff(t_net, net_config)
        for name in ("prediction", "c_noise"):
            if getattr(teacher, name) != getattr(config, name):
                diffs.append(f"{name}: {getattr(teacher, name)!r} -> {getattr(config, name)!r}")
    if diffs:
        fix = "set the run's net, net_options, sde, prediction and c_noise to the teacher's" if weights else \
            "set the run's sde to the teacher's"
        raise ValueError(f"teacher {path} differs from this run (teacher -> run) in {'; '.join(diffs)}; {fix}"
                         + ("" if not weights else ", or start from other weights with init_from"))


def check_image_teacher(config: TrainConfig, teacher: ScoreModel, net_config) -> None:
    """Refuse a teacher (a loaded model file) of a distillation run ("pd", "reflow") that is not a model of the run's
    data: a latent model, or one of another image shape than the run's network sees."""
    path = config.teacher
    if hasattr(teacher, "latent_shape"):
        raise ValueError(f"teacher {path}: it is a latent diffusion model (its file holds a VAE); loss {config.loss!r} "
                         "distills models of the data itself")
    shape = (net_config.in_channels, net_config.image_size, net_config.image_size)
    t_shape = getattr(teacher, "image_shape", None)
    if t_shape is not None and tuple(t_shape) != shape:
        raise ValueError(f"teacher {path}: it models images {tuple(t_shape)}; this run's network sees {shape}")


def consistency_loss(config: TrainConfig, student: ConsistencyModel, target: ConsistencyModel,
                     teacher: ScoreModel | None, x0: Tensor, step: int, generator: torch.Generator) -> Tensor:
    """The batch's scalar loss under config.loss ("cd", "ct", "ect") at training step `step`; x0 (B, *D)."""
    distance, _ = config.consistency_options()
    if config.loss == "cd":
        return cd_loss(student, target, teacher, x0, generator=generator, N=config.cd_n, method=config.teacher_step,
                       dist=distance)
    if config.loss == "ct":
        return ct_loss(student, target, x0, generator=generator, N=ict_discretization(step, config.steps),
                       dist=distance)
    return ect_loss(student, target, x0, generator=generator, stage=ect_stage(step, config.steps, config.ect_stages),
                    dist=distance)
