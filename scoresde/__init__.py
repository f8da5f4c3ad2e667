"""scoresde: continuous-time score-based diffusion models.

Forward SDEs (`VPSDE`, `SubVPSDE`, `VESDE`, `DiscreteVPSDE`), the parameterization layer
(`ScoreModel`, conversions in `scoresde.param`), exact Gaussian and Gaussian-mixture ground truth
(`Gaussian`, `GaussianMixture`, `AnalyticModel`). Samplers live in the top-level `solvers` package.
"""

from . import param
from .analytic import AnalyticModel, Gaussian, GaussianMixture
from .param import ScoreModel
from .sde import AffineSDE, DiscreteVPSDE, SubVPSDE, VESDE, VPSDE

__version__ = "0.1.0"

__all__ = [
    "AffineSDE", "AnalyticModel", "DiscreteVPSDE", "Gaussian", "GaussianMixture", "ScoreModel",
    "SubVPSDE", "VESDE", "VPSDE", "param",
]
