"""Shipped default models, kept importable under their old name: `scoresde.pretrained.default_model`.

The code lives in `scoresde.training.checkpoints`, the one reader and writer of model files; its
docstring describes the exported format. This module only re-exports its names.
"""

from .training.checkpoints import (
    ASSETS, CASCADE_MODELS, CONDITIONAL_MODELS, DEFAULT_MODELS, FEW_STEP_MODELS, LATENT_MODELS, MODEL_DATA, MODEL_KINDS,
    PATCH_MODELS, default_cascade, default_model, export_model, load_pretrained,
)
from .training.checkpoints import PRETRAINED_FORMAT as FORMAT  # noqa: F401  (importable as before, outside __all__)

__all__ = [
    "ASSETS", "CASCADE_MODELS", "CONDITIONAL_MODELS", "DEFAULT_MODELS", "FEW_STEP_MODELS", "LATENT_MODELS", "MODEL_DATA",
    "MODEL_KINDS", "PATCH_MODELS", "default_cascade", "default_model", "export_model", "load_pretrained",
]
