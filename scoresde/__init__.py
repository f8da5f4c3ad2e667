"""scoresde: continuous-time score-based diffusion models.

Forward SDEs (`VPSDE`, `SubVPSDE`, `VESDE`, `DiscreteVPSDE`, `FlowSDE`), the parameterization layer
(`ScoreModel`, conversions in `scoresde.param`), exact Gaussian and Gaussian-mixture ground truth
(`Gaussian`, `GaussianMixture`, `AnalyticModel`), `sample` (any solver by name), likelihoods
(`log_likelihood`, `bits_per_dim` through the probability-flow ODE; `vlb_bits_per_dim`), the U-Net
and trainer (`UNet`, `TrainConfig`, `load_model`), shipped digits models (`default_model`), and
conditional generation: `CFGModel`, `ClassifierGuidedModel`, `inpaint`, `colorize` (docs/guidance.md).
`speed.optimize` runs a ScoreModel's network compiled, in bf16 or channels_last (docs/gpu.md).
Samplers live in the top-level `solvers` package.
"""

from . import data, losses, metrics, param, speed
from .nn import UNet, UNetConfig
from .analytic import AnalyticModel, ConditionalAnalyticModel, CorrelatedGaussian, CorrelatedGaussianModel, Gaussian, GaussianMixture
from .controllable import colorize, inpaint
from .guidance import CFGModel, ClassifierGuidedModel
from .likelihood import Likelihood, bits_per_dim, log_likelihood
from .param import ScoreModel
from .pretrained import default_model, load_pretrained
from .sampling import Samples, sample
from .sde import AffineSDE, DiscreteVPSDE, FlowSDE, SubVPSDE, VESDE, VPSDE
from .train import TrainConfig, load_model
from .vlb import VLB, vlb_bits_per_dim

__version__ = "0.1.0"

__all__ = [
    "AffineSDE", "AnalyticModel", "DiscreteVPSDE", "FlowSDE", "Gaussian", "GaussianMixture", "ScoreModel",
    "Samples", "SubVPSDE", "VESDE", "VLB", "VPSDE", "param", "sample", "vlb_bits_per_dim",
    "Likelihood", "bits_per_dim", "log_likelihood", "default_model", "load_pretrained",
    # networks and training (docs/training.md)
    "TrainConfig", "UNet", "UNetConfig", "data", "load_model", "losses", "metrics",
    # speed: compiled / bf16 / channels_last networks for sampling and likelihoods (docs/gpu.md)
    "speed",
    # conditional generation (docs/guidance.md)
    "CFGModel", "ClassifierGuidedModel", "ConditionalAnalyticModel", "CorrelatedGaussian", "CorrelatedGaussianModel",
    "colorize", "inpaint",
]
