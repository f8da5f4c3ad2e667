"""scoresde: continuous-time score-based diffusion models.

Forward SDEs (`VPSDE`, `SubVPSDE`, `VESDE`, `DiscreteVPSDE`, `FlowSDE`), the parameterization layer
(`ScoreModel`, conversions in `scoresde.param`), exact Gaussian and Gaussian-mixture ground truth
(`Gaussian`, `GaussianMixture`, `AnalyticModel`), and `sample` (any solver by name). Samplers live
in the top-level `solvers` package.
"""

from . import param
from .analytic import AnalyticModel, Gaussian, GaussianMixture
from .param import ScoreModel
from .sampling import Samples, sample
from .sde import AffineSDE, DiscreteVPSDE, FlowSDE, SubVPSDE, VESDE, VPSDE
from .vlb import VLB, vlb_bits_per_dim

__version__ = "0.1.0"

__all__ = [
    "AffineSDE", "AnalyticModel", "DiscreteVPSDE", "FlowSDE", "Gaussian", "GaussianMixture", "ScoreModel",
    "Samples", "SubVPSDE", "VESDE", "VLB", "VPSDE", "param", "sample", "vlb_bits_per_dim",
]
