"""The ground floor both packages stand on: the protocols a solver sees, broadcasting and noise helpers.

A solver never imports a network class, an optimizer or a dataset: it sees a `Model`, whose `sde`
is an `SDE`. Both are structural (``typing.Protocol``); ``scoresde`` implements them. Importing this
module (or any ground-floor module: `conversions`, `coefficients`, `validate`) loads torch only,
no sampler and no torchdiffeq.

Notation (all SDEs here are affine): x_t = alpha(t) x_0 + sigma(t) eps, lambda = log(alpha/sigma).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

Prediction = Literal["eps", "x0", "score", "v"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "score", "v")

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


@runtime_checkable
class SDE(Protocol):
    """Affine forward SDE dx = f(x, t) dt + g(t) dw with x_t = alpha(t) x_0 + sigma(t) eps.

    Times t are tensors of shape (B,); every method returns (B,) unless noted.
    `kind` names the family ("vp", "subvp", "ve", "flow"); solvers use it to refuse what they cannot do.
    """

    kind: str
    T: float  # terminal time
    t_eps: float  # smallest time a solver integrates to
    prior_std: float  # the prior is N(0, prior_std^2 I)

    def alpha(self, t: Tensor) -> Tensor: ...
    def sigma(self, t: Tensor) -> Tensor: ...
    def lambda_(self, t: Tensor) -> Tensor: ...  # log(alpha / sigma)
    def t_of_lambda(self, lam: Tensor) -> Tensor: ...
    def f(self, x: Tensor, t: Tensor) -> Tensor: ...  # drift, shape of x
    def g(self, t: Tensor) -> Tensor: ...  # diffusion coefficient
    def prior_sample(self, shape, *, generator: GeneratorArg = None, device=None, dtype=None) -> Tensor: ...
    def prior_logp(self, z: Tensor) -> Tensor: ...  # (B,), nats


Process = SDE  # the name before version 0.2 (docs/conventions.md)


@runtime_checkable
class Model(Protocol):
    """Predictions at x (B, *D), t (B,); each call is one model evaluation and returns (B, *D)."""

    sde: SDE

    def eps(self, x: Tensor, t: Tensor) -> Tensor: ...
    def x0(self, x: Tensor, t: Tensor) -> Tensor: ...
    def score(self, x: Tensor, t: Tensor) -> Tensor: ...
    def v(self, x: Tensor, t: Tensor) -> Tensor: ...


def bcast(v: Tensor, x: Tensor) -> Tensor:
    """View per-sample values v of shape (B,) or (1,) as (B, 1, ..., 1) to broadcast against x."""
    if v.ndim != 1 or v.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"expected shape ({x.shape[0]},) or (1,), got {tuple(v.shape)}")
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def coef(v: Tensor, x: Tensor) -> Tensor:
    """A per-sample coefficient (B,) or (1,) (usually float64), cast to x's dtype/device and broadcast."""
    return bcast(v.to(dtype=x.dtype, device=x.device), x)


def randn_like(x: Tensor, generator: GeneratorArg = None) -> Tensor:
    """Standard normal noise with the shape, dtype and device of x (B, *D).

    `generator` is None, one torch.Generator, or a sequence of B generators (one per sample, so
    that a sample's noise does not depend on the batch it sits in). Noise is drawn on the
    generator's device and moved to x's device.
    """
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def randn(shape, *, generator: GeneratorArg = None, device=None, dtype=None) -> Tensor:
    """Standard normal noise of `shape` (B, *D); see `randn_like` for `generator`."""
    shape = tuple(shape)
    device = torch.device("cpu") if device is None else torch.device(device)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = device if generator is None else generator.device
        return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
    gens = list(generator) if isinstance(generator, Sequence) and not isinstance(generator, (str, bytes)) else None
    if gens is None or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError(
            f"generator must be None, a torch.Generator or a list of them (one per sample), got {generator!r}"[:300]
        )
    if len(gens) != shape[0]:
        raise ValueError(f"generator: got {len(gens)} generators for a batch of {shape[0]}; pass one per sample")
    return torch.stack(
        [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype).to(device) for g in gens]
    )


def time_like(t: Tensor | float, x: Tensor) -> Tensor:
    """A scalar time (0-d or (1,) tensor or float, usually a float64 grid entry) as (B,) in x's dtype."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(1).expand(x.shape[0])


def reverse_drift(sde: SDE, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
    """Drift of the reverse-time SDE, f - g^2 score (Song et al. 2021, arXiv:2011.13456, Eq. 6)."""
    return sde.f(x, t) - bcast(sde.g(t) ** 2, x) * score


def pf_drift(sde: SDE, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
    """Drift of the probability-flow ODE, f - g^2 score / 2 (Song et al. 2021, Eq. 13)."""
    return sde.f(x, t) - 0.5 * bcast(sde.g(t) ** 2, x) * score


class PredictionWrapper:
    """Base of models that wrap another: the four predictions go through one method, `predict(kind, x, t)`.

    Subclasses implement `predict`; `eps`, `x0`, `score` and `v` call it with their kind, so a wrapper
    (evaluation counting, guidance, labels) is written once, not four times. `sde` is the inner model's.
    """

    def __init__(self, model: Model):
        self.model = model
        self.sde = model.sde

    def predict(self, kind: str, x: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        return self.predict("eps", x, t)

    def x0(self, x: Tensor, t: Tensor) -> Tensor:
        return self.predict("x0", x, t)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        return self.predict("score", x, t)

    def v(self, x: Tensor, t: Tensor) -> Tensor:
        return self.predict("v", x, t)


class CountedModel(PredictionWrapper):
    """Wraps a Model and counts its evaluations (one per call of eps / x0 / score / v, or `count`)."""

    def __init__(self, model: Model):
        super().__init__(model)
        self.nfe = 0

    def predict(self, kind: str, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return getattr(self.model, kind)(x, t)

    def call(self, method: str, *args):
        """Call another method of the inner model (e.g. `eps_and_variance`) as one evaluation."""
        self.nfe += 1
        return getattr(self.model, method)(*args)
