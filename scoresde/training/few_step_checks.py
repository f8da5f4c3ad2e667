"""The few-step trainers' TrainConfig checks (consistency losses cd / ct / ect, progressive distillation "pd",
rectified-flow reflow): a teacher exactly where the loss uses one, each loss's options only with that loss, and no
option its trainer does not implement, each refused by name rather than ignored. TrainConfig runs them on
itself (`config`: a TrainConfig; this module does not import config.py, which imports it)."""

from __future__ import annotations

__all__ = ["CONSISTENCY_LOSSES", "TEACHER_LOSSES", "check_consistency", "check_pd", "check_reflow"]

CONSISTENCY_LOSSES = ("cd", "ct", "ect")  # the model is a ConsistencyModel (scoresde.fewstep)
TEACHER_LOSSES = ("cd", "ect", "pd", "reflow")  # the losses that take a teacher model file


def check_consistency(config) -> None:
    """The consistency losses' fields: a teacher exactly where the loss uses one, and no option the
    consistency trainer does not implement (each named, rather than ignored)."""
    consistency = config.loss in CONSISTENCY_LOSSES
    if config.loss == "cd" and config.teacher is None:
        raise ValueError("loss 'cd' needs teacher (a model file: a diffusion model of this data and sde)")
    if config.loss == "ect" and config.teacher is None and config.init_from is None:
        raise ValueError("loss 'ect' tunes a pretrained diffusion model: give teacher or init_from (its weights)")
    if config.teacher is not None and config.loss not in TEACHER_LOSSES:
        raise ValueError(f"teacher is for loss 'cd', 'ect', 'pd' or 'reflow', got loss {config.loss!r}")
    if not consistency:
        unused = [name for name in ("distance", "target_decay") if getattr(config, name) is not None]
        if unused:
            raise ValueError(f"{unused} apply to the consistency losses {list(CONSISTENCY_LOSSES)}; "
                             f"loss is {config.loss!r}")
        return
    _check_few_step(config, "consistency", "noise levels", "the consistency losses evaluate the network")


def check_pd(config) -> None:
    """Progressive distillation's fields: a teacher and pd_steps with loss "pd", its options with no other loss,
    and no option its trainer does not implement (each named, rather than ignored)."""
    if not _loss_options(config, "pd", ("pd_steps", "pd_grid", "pd_weighting"), "progressive distillation"):
        return
    if config.teacher is None:
        raise ValueError("loss 'pd' needs teacher (a model file: a diffusion model of this data and sde, or the "
                         "student of the previous round)")
    if config.pd_steps is None:
        raise ValueError("loss 'pd' needs pd_steps (N >= 1: the student's DDIM steps; the teacher takes 2N)")
    _check_few_step(config, "distillation", "times (the student's grid)", "loss 'pd' evaluates the networks on its grid,")


def check_reflow(config) -> None:
    """Reflow's fields: a teacher and reflow_pairs (at least one batch) with loss "reflow", its options with no other
    loss, and no option its trainer does not implement (each named, rather than ignored): the data only give the
    image shape, so also no flips or dequantization."""
    if not _loss_options(config, "reflow", ("reflow_pairs", "reflow_solver", "reflow_steps", "reflow_round"),
                         "rectified-flow reflow"):
        return
    if config.teacher is None:
        raise ValueError("loss 'reflow' needs teacher (a model file: a flow model of this data, sde 'flow', e.g. a "
                         "flow_matching run's, or the student of the previous reflow round)")
    if config.reflow_pairs is None or config.reflow_pairs < config.batch_size:
        raise ValueError(f"loss 'reflow' needs reflow_pairs >= batch_size {config.batch_size} (P: the (noise, sample) "
                         f"pairs the teacher makes at the start; batches are drawn from them), got {config.reflow_pairs!r}")
    unused = [name for name in ("flip", "dequantize") if getattr(config, name)]
    if unused:
        raise ValueError(f"loss 'reflow' does not support {unused}: it trains on the teacher's (noise, sample) pairs, "
                         "not on the data (which only give the image shape)")
    _check_few_step(config, "reflow", "times", "loss 'reflow' evaluates the network")


def _loss_options(config, loss: str, names: tuple[str, ...], what: str) -> bool:
    """Whether the run's loss is `loss`; with another loss, refuse any of the fields `names` that is set (not None),
    naming them and `what` the loss is."""
    if config.loss == loss:
        return True
    options = [name for name in names if getattr(config, name) is not None]
    if options:
        raise ValueError(f"{options} apply to loss {loss!r} ({what}); loss is {config.loss!r}")
    return False


def _check_few_step(config, trainer: str, draws: str, evaluates: str) -> None:
    """What the consistency and distillation trainers share: no class labels, augmentation, learned variance or
    bf16; uniform time_sampling (they draw their own times); a continuous c_noise (they evaluate between the
    DDPM timesteps). `trainer`, `draws`, `evaluates`: the words of the errors."""
    unsupported = {"conditional": config.conditional, "learn_variance": config.learn_variance,
                   "augment_p": config.augment_p > 0, "precision bf16": config.precision == "bf16"}
    bad = [name for name, on in unsupported.items() if on]
    if bad:
        raise ValueError(f"loss {config.loss!r} does not support {bad} yet (the {trainer} trainer is unconditional, "
                         "fp32, without augmentation or learned variance)")
    if config.time_sampling != "uniform":
        raise ValueError(f"loss {config.loss!r} draws its own {draws}; time_sampling must stay 'uniform', "
                         f"got {config.time_sampling!r}")
    if config.sde == "ddpm" and config.c_noise == "timestep":
        raise ValueError(f"{evaluates} between the DDPM timesteps; use a continuous c_noise (e.g. 'log_noise')")
