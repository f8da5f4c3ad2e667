"""Training, kept importable under its old name: `from scoresde.train import TrainConfig, train`.

The code lives in `scoresde.training`: `config` (TrainConfig, build_sde), `checkpoints` (checkpoint
and model files, load_model), `step` (loss, optimizer, EMA), `samples` (progress grids) and `loop`
(`train`; its docstring describes a run). This module only re-exports their names.
"""

from .sde_names import SDE_NAMES as SDES
from .training.checkpoints import CHECKPOINT, Checkpoint, load_checkpoint, load_model
from .training.builders import build_sde
from .training.config import COMPILE, OPTIMIZER_IMPLS, TrainConfig
from .training.loop import TrainResult, setup_distributed, train
from .training.samples import sample_images, save_image_grid
from .training.step import ParameterUpdate, compute_loss, ema_update, make_optimizer, optimizer_impl

# importable from here as before, outside __all__
from .training.checkpoints import FORMAT, save_checkpoint  # noqa: F401
from .training.config import LOSSES, OPTIMIZERS, PRECISIONS, RESUMABLE_CHANGES, TRAIN_PREDICTIONS  # noqa: F401

__all__ = [
    "CHECKPOINT", "COMPILE", "OPTIMIZER_IMPLS", "SDES", "Checkpoint", "ParameterUpdate", "TrainConfig",
    "TrainResult", "build_sde", "compute_loss", "ema_update", "load_checkpoint", "load_model", "make_optimizer",
    "optimizer_impl", "sample_images", "save_image_grid", "setup_distributed", "train",
]
