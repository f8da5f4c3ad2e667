"""Guidance: classifier-free guidance and classifier guidance as Model wrappers.

Both wrappers implement the solvers' Model protocol (eps / x0 / score / v at x (B, *D), t (B,)),
so every solver samples with guidance unchanged; a multistep solver stores the guided prediction.

Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598), one convention, in eps:

    eps_w(x, t) = eps(x, t, null) + w (eps(x, t, y) - eps(x, t, null)),

(Ho & Salimans write (1 + w') eps_c - w' eps_u: their w' is our w - 1). w = 1 is plain
conditional sampling, w = 0 unconditional, w > 1 stronger guidance. Since score = -eps / sigma,
x0 = (x - sigma eps) / alpha and v are affine in eps at fixed (x, t), and
the weights (1 - w, w) sum to one, the same combination of the model's x0, score or v predictions
equals the conversion of eps_w: every kind the wrapper returns comes from the one guided eps. The
guided score is grad log of p_t(x | y)^w p_t(x)^(1 - w); at t -> 0 this is the tilted density
p(x | y)^w p(x)^(1 - w), but the law a sampler draws with the guided score is not that density
(the tilted family is not closed under the forward diffusion). See docs/guidance.md.

Classifier guidance (Dhariwal & Nichol 2021, arXiv:2105.05233; Song et al. 2021, App. I):

    score_s(x, t) = score(x, t) + s grad_x log p(y | x_t, t),

with the gradient of a noise-conditional classifier's log-softmax taken by autograd (gradient mode
enabled locally, so it works under the API's torch.no_grad()). Scale s = 1 with the exact noisy
classifier gives the exact conditional score.

Learned variances (Improved DDPM, solver "ddpm_learned"): when the wrapped model offers
eps_and_variance(x, t[, y]) -> (eps, v), so does the wrapper, from the same evaluation. CFG guides
eps as above and takes the variance weight v from the conditional branch (the unconditional one
at w = 0, which is unconditional sampling); classifier guidance returns eps - s sigma g, i.e. it
shifts the reverse mean, and keeps the model's v (see `eps_and_variance` of each wrapper).

NFE: one call of eps / x0 / score / v on a wrapper is one model evaluation in the solver's NFE.
For CFG it costs one batched network call on 2B inputs (conditional and unconditional rows
concatenated), or one call on B inputs when w is 1 or 0; for classifier guidance, one model call
plus one classifier forward and backward. The wrappers count these in `net_calls` (and CFG the
network rows in `net_rows`) so that the cost can be reported next to the NFE.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from solvers.protocol import PREDICTIONS, PredictionWrapper, coef
from solvers.validate import check_number

from .param import check_c_noise, noise_input
from .vlb import has_learned_variance

__all__ = ["CFGModel", "ClassifierGuidedModel", "check_labels", "check_scale"]


def check_scale(name: str, scale) -> float:
    """A finite guidance scale >= 0 as a float; raise ValueError otherwise."""
    return check_number(name, scale, 0)


def check_labels(y, batch: int | None = None, *, classes: int | None = None) -> Tensor:
    """Labels as a 1-D integer tensor: an int becomes shape (1,) (it broadcasts over the batch).

    classes: the model's class count K where known; labels must then lie in 0..K (K: no class, the
    null label of a U-Net with K classes). Negative labels are always refused. Values are read only
    for CPU labels (no device sync).
    """
    if isinstance(y, bool):
        raise ValueError(f"y must be an int or a 1-D integer tensor of labels, got {y!r}")
    if isinstance(y, int):
        if not 0 <= y < 2**63:  # torch.tensor would overflow past int64
            raise ValueError(f"y: labels must be >= 0 and < 2**63; got {y}")
        y = torch.tensor([y], dtype=torch.long)
    if not isinstance(y, Tensor) or y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        got = f"{y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, Tensor) else repr(y)
        raise ValueError(f"y must be an int or a 1-D integer tensor of labels, got {got}")
    if batch is not None:
        _check_label_count(y, batch)
    if y.device.type == "cpu" and y.numel() > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or (classes is not None and hi > classes):
            valid = "labels must be >= 0" if classes is None else (
                f"labels must lie in 0..{classes - 1} (the model's {classes} classes), or be {classes} for no class")
            raise ValueError(f"y: {valid}; got {lo if lo < 0 else hi}")
    return y


def _check_label_count(y: Tensor, batch: int) -> None:
    if y.shape[0] not in (1, batch):
        raise ValueError(f"y has {y.shape[0]} labels for a batch of {batch}; give one per sample or one int")


def _labels_for(y: Tensor, x: Tensor) -> Tensor:
    """y (1,) or (B,) as (B,) on x's device."""
    _check_label_count(y, x.shape[0])
    return y.to(x.device).expand(x.shape[0])


def _takes_labels(method) -> bool:
    """Whether a prediction method accepts the keyword y (or any keyword)."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # no signature (e.g. some builtins): let the call decide
        return True
    return any(p.name == "y" or p.kind is p.VAR_KEYWORD for p in params)


def _check_predictions(model) -> None:
    for kind in PREDICTIONS:
        if not callable(getattr(model, kind, None)):
            raise ValueError(f"model must have methods {list(PREDICTIONS)}; {type(model).__name__} lacks {kind!r}")


class _Guided(PredictionWrapper):
    """What both guidance wrappers share: eps / x0 / score / v go through `predict(kind, x, t)`
    (`PredictionWrapper`), and `learned_variance` is the wrapped model's."""

    @property
    def learned_variance(self) -> bool:
        """Whether the wrapped model (hence this wrapper) offers eps_and_variance."""
        return has_learned_variance(self.model)

    def _check_learned_variance(self) -> None:
        if not self.learned_variance:
            raise ValueError(f"eps_and_variance needs a wrapped model with a learned variance, e.g. ScoreModel(..., "
                             f"learned_variance=True); {type(self.model).__name__} has none")


class CFGModel(_Guided):
    """Classifier-free guidance around a conditional model: a Model for the guided law.

    model: has eps / x0 / score / v(x, t, y=None) and `sde` (e.g. `ScoreModel` around a
    class-conditional net, `ConditionalAnalyticModel`). y: an int or integer labels (B,) (or (1,)),
    the classes to sample. scale: w >= 0 (1: no guidance). null_label: the label the model reads as
    "no class" (a class-conditional U-Net with K classes uses K), so that the conditional and
    unconditional predictions come from one batched call on 2B rows, [y; null]; None calls the
    model twice, with y and with y=None.

    Guided prediction of every kind (eps / x0 / score / v, (B, *D)): u + w (c - u) with c, u the
    conditional and unconditional predictions of that kind, which equals the conversion of the
    guided eps_w = eps_u + w (eps_c - eps_u) (module docstring): x0 = (x - sigma eps_w) / alpha,
    score = -eps_w / sigma = grad log p_t(x | y)^w p_t(x)^(1 - w), v = alpha eps_w - sigma x0_w.
    `net_calls` counts network calls (one per evaluation, two when null_label is None and
    0 < w != 1) and `net_rows` the rows passed through the network.
    """

    def __init__(self, model, y: int | Tensor, scale: float, *, null_label: int | None = None):
        _check_predictions(model)
        if not hasattr(model, "sde"):
            raise ValueError(f"model must have an `sde`; {type(model).__name__} has none")
        if not _takes_labels(model.eps):
            raise ValueError(f"{type(model).__name__}.eps takes no labels y: classifier-free guidance needs a "
                             "class-conditional model, eps(x, t, y=None) (e.g. ScoreModel, ConditionalAnalyticModel)")
        self.scale = check_scale("guidance scale", scale)
        if null_label is not None and (isinstance(null_label, bool) or not isinstance(null_label, int)):
            raise ValueError(f"null_label must be None or an int, got {null_label!r}")
        # the class count K where known: the null label (K for the U-Net), else the model's num_classes
        classes = null_label if null_label is not None else getattr(model, "num_classes", None)
        self.y = check_labels(y, classes=classes if isinstance(classes, int) and not isinstance(classes, bool) else None)
        super().__init__(model)
        self.null_label = null_label
        self.net_calls = 0
        self.net_rows = 0

    def _call(self, kind: str, x: Tensor, t: Tensor, y: Tensor | None):
        self.net_calls += 1
        self.net_rows += x.shape[0]
        return getattr(self.model, kind)(x, t, y=y)

    def _branches(self, kind: str, x: Tensor, t: Tensor):
        """(cond, uncond) predictions of `kind`; one of them None when w is 1 or 0 (not computed)."""
        y = _labels_for(self.y, x)
        w = self.scale
        if w == 1.0:  # conditional only: no unconditional row needed
            return self._call(kind, x, t, y), None
        null = None if self.null_label is None else torch.full_like(y, self.null_label)
        if w == 0.0:  # unconditional only
            return None, self._call(kind, x, t, null)
        if null is None:
            return self._call(kind, x, t, y), self._call(kind, x, t, None)
        # one batched forward on 2B rows: [x; x] with labels [y; null]
        both = self._call(kind, torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        if isinstance(both, tuple):  # eps_and_variance: (eps, v) of 2B rows each
            return tuple(a.chunk(2)[0] for a in both), tuple(a.chunk(2)[1] for a in both)
        return both.chunk(2)

    def _combine(self, cond: Tensor | None, uncond: Tensor | None) -> Tensor:
        if cond is None:
            return uncond
        if uncond is None:
            return cond
        # Ho & Salimans 2022, Eq. (6): (1 + w') eps_c - w' eps_u with their w' = our w - 1
        return uncond + self.scale * (cond - uncond)

    def predict(self, kind: str, x: Tensor, t: Tensor) -> Tensor:
        """Guided prediction of `kind` ("eps", "x0", "score" or "v"), (B, *D): u + w (c - u)."""
        return self._combine(*self._branches(kind, x, t))

    def eps_and_variance(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Guided eps (B, *D) and the variance weight v (B, *D) of a learned-variance model, one evaluation.

        eps is guided as in `eps`; v is the conditional branch's (the unconditional one's at w = 0).
        Choice: the learned variance estimates the spread of the reverse step of the law being
        sampled; CFG has no variance of its own, the conditional one is that of the class asked for.
        GLIDE's guided sampling (Nichol et al. 2022, the glide-text2im notebooks) does the same: it
        guides eps only, and the conditional rows it keeps carry the conditional variance output.
        """
        self._check_learned_variance()
        cond, uncond = self._branches("eps_and_variance", x, t)
        eps = self._combine(None if cond is None else cond[0], None if uncond is None else uncond[0])
        return eps, (uncond if cond is None else cond)[1]


class ClassifierGuidedModel(_Guided):
    """Classifier guidance: a Model whose score is score + scale * grad_x log p(y | x_t, t).

    model: any Model (its unconditional predictions are used). classifier(x, c) -> logits (B, K)
    (normalized or not: log-softmax is applied), where c is the classifier's noise input, mapped
    from t by `c_noise` as in `ScoreModel` ("t", "999t", "log_noise", "sigma", "timestep", or a
    callable t -> (B,)). y: int or integer labels (B,). scale: s >= 0.

    With g = grad_x log p(y | x_t) and the affine relations among the kinds, the guided
    predictions (B, *D) are score + s g, eps - s sigma g, x0 + s (sigma^2 / alpha) g and
    v - s sigma (alpha^2 + sigma^2) / alpha g (all the same guided law). `net_calls` counts model
    calls and `classifier_calls` classifier forward-backward passes (one each per evaluation).
    """

    def __init__(self, model, classifier: Callable[[Tensor, Tensor], Tensor], y: int | Tensor, scale: float,
                 *, c_noise: str | Callable[[Tensor], Tensor] = "t"):
        _check_predictions(model)
        if not callable(classifier):
            raise ValueError(f"classifier must be callable as classifier(x, c_noise) -> logits, got {type(classifier).__name__}")
        check_c_noise(c_noise)
        super().__init__(model)
        self.classifier = classifier
        self.y = check_labels(y)
        self.scale = check_scale("classifier guidance scale", scale)
        self.c_noise = c_noise
        self.net_calls = 0
        self.classifier_calls = 0

    def noise_input(self, t: Tensor) -> Tensor:
        """The classifier's noise input for continuous times t (B,)."""
        return noise_input(self.c_noise, self.sde, t)

    def log_prob_grad(self, x: Tensor, t: Tensor) -> Tensor:
        """grad_x log p(y | x_t, t) by autograd, (B, *D); x is not modified."""
        y = _labels_for(self.y, x)
        self.classifier_calls += 1
        with torch.enable_grad():  # the API samples under no_grad; this gradient is the method
            x_in = x.detach().requires_grad_(True)
            logits = self.classifier(x_in, self.noise_input(t))
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"classifier must return logits of shape ({x.shape[0]}, K), got {tuple(logits.shape)}")
            if y.device.type == "cpu" and bool(((y < 0) | (y >= logits.shape[1])).any()):
                raise ValueError(f"labels y must lie in 0..{logits.shape[1] - 1} for a classifier of {logits.shape[1]} classes")
            selected = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(selected, x_in)
        return grad.to(x.dtype)

    def predict(self, kind: str, x: Tensor, t: Tensor) -> Tensor:
        """Guided prediction of `kind` ("eps", "x0", "score" or "v"), (B, *D): see the class docstring."""
        self.net_calls += 1
        out = getattr(self.model, kind)(x, t)
        if self.scale == 0.0:
            return out
        g = self.scale * self.log_prob_grad(x, t)
        alpha, sigma = coef(self.sde.alpha(t), x), coef(self.sde.sigma(t), x)
        # Dhariwal & Nichol 2021, Eq. (14)-(15) / Song et al. 2021, Eq. (14): score + s grad log p(y | x_t)
        if kind == "score":
            return out + g
        if kind == "eps":
            return out - sigma * g
        if kind == "x0":
            return out + sigma**2 / alpha * g
        return out - sigma * (alpha**2 + sigma**2) / alpha * g

    def eps_and_variance(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Guided eps - s sigma g (B, *D) and the model's variance weight v (B, *D), one evaluation.

        The guided eps shifts the mean of a reverse step from s to t by (alpha_t / alpha_s) beta s g
        (beta = sigma_s^2 (1 - e^{-2h}), solvers.learned_variance), where Dhariwal & Nichol's
        Algorithm 1 shifts it by Sigma s g with the step's learned variance Sigma in
        [beta_tilde, beta] = [(sigma_t / sigma_s)^2 beta, beta]; the two agree up to a factor
        1 + O(h). A wrapper does not know the next grid time t, so the score form is used.
        """
        self._check_learned_variance()
        self.net_calls += 1
        eps, v = self.model.eps_and_variance(x, t)
        if self.scale == 0.0:
            return eps, v
        g = self.scale * self.log_prob_grad(x, t)
        # Dhariwal & Nichol 2021, Algorithm 2 / Eq. (14): eps - sigma s grad log p(y | x_t)
        return eps - coef(self.sde.sigma(t), x) * g, v
