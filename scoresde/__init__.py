"""scoresde: continuous-time score-based diffusion models.

Forward SDEs (`VPSDE`, `SubVPSDE`, `VESDE`, `DiscreteVPSDE`, `FlowSDE`), the parameterization layer
(`ScoreModel`, conversions in `scoresde.param`), exact Gaussian and Gaussian-mixture ground truth
(`Gaussian`, `GaussianMixture`, `AnalyticModel`), `sample` (any solver by name), likelihoods
(`log_likelihood`, `bits_per_dim` through the probability-flow ODE; `vlb_bits_per_dim`), the U-Net
and trainer (`UNet`, `TrainConfig`, `load_model`), shipped digits models (`default_model`), and
conditional generation: `CFGModel`, `ClassifierGuidedModel`, `inpaint`, `colorize` (docs/guidance.md).
`speed.optimize` runs a ScoreModel's network compiled, in bf16 or channels_last (docs/gpu.md).
Samplers live in the top-level `solvers` package.

Importing the package loads none of these: each name (and each submodule, as `scoresde.metrics`)
is imported from its module on first use (PEP 562), so `import scoresde` stays light.
"""

import importlib
import pkgutil

__version__ = "0.1.0"

__all__ = [
    "SDE", "AnalyticModel", "DiscreteVPSDE", "FlowSDE", "Gaussian", "GaussianMixture", "ScoreModel",
    "Samples", "SubVPSDE", "VESDE", "VLB", "VPSDE", "param", "sample", "vlb_bits_per_dim",
    "Likelihood", "bits_per_dim", "log_likelihood", "default_model", "load_pretrained",
    # networks and training (docs/training.md)
    "TrainConfig", "UNet", "UNetConfig", "data", "load_model", "losses", "metrics",
    # cascades: the super-resolution stage a run with sr_factor > 1 trains (docs/latent.md)
    "default_cascade", "load_sr_stage",
    # speed: compiled / bf16 / channels_last networks for sampling and likelihoods (docs/gpu.md)
    "speed",
    # conditional generation (docs/guidance.md)
    "CFGModel", "ClassifierGuidedModel", "ConditionalAnalyticModel", "CorrelatedGaussian", "CorrelatedGaussianModel",
    "colorize", "inpaint",
    # streaming many samples to one file
    "save_samples",
    # models trained elsewhere: diffusers, EDM / k-diffusion denoisers (docs/interop.md)
    "interop", "as_denoiser", "from_denoiser", "from_diffusers", "load_diffusers",
]

# public name -> the submodule that defines it
_NAMES = {
    "SDE": "sde", "DiscreteVPSDE": "sde_discrete", "FlowSDE": "sde", "SubVPSDE": "sde", "VESDE": "sde", "VPSDE": "sde",
    "AnalyticModel": "analytic", "ConditionalAnalyticModel": "analytic", "CorrelatedGaussian": "analytic",
    "CorrelatedGaussianModel": "analytic", "Gaussian": "analytic", "GaussianMixture": "analytic",
    "ScoreModel": "param",
    "Samples": "sampling", "sample": "sampling", "save_samples": "sampling_files",
    "Likelihood": "likelihood", "bits_per_dim": "likelihood", "log_likelihood": "likelihood",
    "VLB": "vlb", "vlb_bits_per_dim": "vlb",
    "UNet": "nn", "UNetConfig": "nn",
    "TrainConfig": "training.config",
    "default_model": "training.checkpoints", "load_model": "training.checkpoints",
    "load_pretrained": "training.checkpoints", "load_sr_stage": "training.checkpoints",
    "default_cascade": "training.checkpoints",
    "CFGModel": "guidance", "ClassifierGuidedModel": "guidance",
    "colorize": "controllable", "inpaint": "controllable",
    "as_denoiser": "interop", "from_denoiser": "interop", "from_diffusers": "interop", "load_diffusers": "interop",
}


def _submodules() -> set[str]:
    """The package's public modules and subpackages (not imported)."""
    return {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


# names before version 0.2 -> the name now (docs/conventions.md)
_DEPRECATED = {"AffineSDE": "SDE"}


def __getattr__(name: str):
    if name in _DEPRECATED:
        import warnings

        new = _DEPRECATED[name]
        warnings.warn(f"scoresde.{name} is deprecated; use scoresde.{new}", DeprecationWarning, stacklevel=2)
        return __getattr__(new)
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    if name in _submodules():  # as scoresde.metrics; importing it also makes it an attribute of the package
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _submodules())
