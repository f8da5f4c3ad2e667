"""Divergence of the probability-flow drift F(x, t) = f(x, t) - g(t)^2 score(x, t) / 2, with the score.

"hutchinson" (Hutchinson 1989; Skilling 1989: v^T J v with probes v, one vector-Jacobian product per
probe), "exact" (trace of the autograd Jacobian, one backward pass per dimension: for small
dimensions) or "analytic" (the model's own closed form `pf_divergence(x, t)`). Grad is enabled only
here, around the divergence.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from solvers.protocol import GeneratorArg, Model, randn

__all__ = [
    "DIVERGENCES", "PROBES", "draw_probes", "exact_divergence", "hutchinson_divergence", "score_and_divergence",
]

DIVERGENCES = ("hutchinson", "exact", "analytic")
PROBES = ("rademacher", "gaussian")

Divergence = Literal["hutchinson", "exact", "analytic"]
Probe = Literal["rademacher", "gaussian"]


def _score(model: Model, x: Tensor, t: Tensor, y) -> Tensor:
    return model.score(x, t) if y is None else model.score(x, t, y=y)


def hutchinson_divergence(out: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Hutchinson–Skilling estimates v^T (d out / d x) v, one per probe, (B, K).

    out (B, *D) computed from x (B, *D) with grad enabled; probes (B, K, *D). One vector-Jacobian
    product (backward pass) per probe; samples must not interact inside the model.
    """
    n_probes = probes.shape[1]
    est = []
    for k in range(n_probes):
        v = probes[:, k]
        # v^T J = grad_x <out, v>  (Hutchinson 1989; Skilling 1989)
        (vjp,) = torch.autograd.grad(out, x, grad_outputs=v, retain_graph=k < n_probes - 1)
        est.append((vjp * v).flatten(1).sum(1))
    return torch.stack(est, 1)


def exact_divergence(out: Tensor, x: Tensor) -> Tensor:
    """Trace of d out / d x by one backward pass per dimension, (B,). For small dimensions only."""
    flat = out.flatten(1)
    d = flat.shape[1]
    tr = torch.zeros(flat.shape[0], dtype=out.dtype, device=out.device)
    for i in range(d):
        (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < d - 1)
        tr = tr + row.flatten(1)[:, i]
    return tr


def score_and_divergence(
    model: Model, x: Tensor, t: Tensor, *, y=None, divergence: Divergence, probes: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One model evaluation: the score (B, *D) and the divergence of the probability-flow drift (B, K).

    div F = d a(t) - g(t)^2 div(score) / 2 for F = a(t) x - g^2 score / 2; K = n_probes for
    "hutchinson" (the linear part is exact, only div(score) is estimated), K = 1 otherwise. Grad is
    enabled only here, around the divergence.
    """
    sde = model.sde
    if divergence == "analytic":
        score = _score(model, x, t, y)
        div = model.pf_divergence(x, t) if y is None else model.pf_divergence(x, t, y=y)
        return score, div[:, None]
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        score = _score(model, x_in, t, y)
        if not score.requires_grad:
            raise ValueError(
                f"divergence={divergence!r} differentiates model.score in x, but it returned a tensor without "
                "grad (called under torch.inference_mode, or detached inside the model); use "
                "torch.no_grad instead of inference_mode, or divergence='analytic'"
            )
        if divergence == "exact":
            div_score = exact_divergence(score, x_in)[:, None]
        else:
            div_score = hutchinson_divergence(score, x_in, probes)
    d = x[0].numel()
    div = d * sde.dlog_alpha_dt(t)[:, None] - 0.5 * sde.g2(t)[:, None] * div_score
    return score.detach(), div.detach()


def draw_probes(x: Tensor, n_probes: int, probe: Probe, generator: GeneratorArg = None) -> Tensor:
    """Hutchinson probes (B, n_probes, *D) with E[v v^T] = I: Rademacher (+-1) or standard Gaussian.

    Drawn from `generator` (one, or one per sample, so a sample's probes do not depend on its batch).
    """
    n = randn((x.shape[0], n_probes, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
    if probe == "gaussian":
        return n
    # the sign of a standard normal is a Rademacher variable
    return torch.where(n >= 0, 1.0, -1.0).to(x.dtype)
