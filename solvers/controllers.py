"""Step-size controllers that sit beside an adaptive solver's loop.

A controller owns the rule and its options; the solver owns the model evaluations. The solver asks
for a first step, tries a step that yields a lower- and a higher-order result sharing their
evaluations, measures the error, accepts or rejects the try and asks for the next step size.
These decisions are host-side by nature (the loop must branch on them): the synchronizations in
`error_norm` / `accept` / `reaches_end` / `done` are the adaptive step control the style guide allows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .validate import check_int, check_number

__all__ = ["LogSNRController", "StepSizeOptions"]


@dataclass(frozen=True, kw_only=True)
class StepSizeOptions:
    """The options of an error-controlled step-size rule (fields shared by the controller and the
    adaptive solvers that build one): rtol, atol, h_init, theta, t_err, max_growth (see below)."""

    rtol: float = 0.05
    atol: float = 0.0078
    h_init: float = 0.05
    theta: float = 0.9
    t_err: float = 1e-5
    max_growth: float | None = 5.0

    def check_step_size_options(self) -> None:
        check_number("rtol", self.rtol, 0)
        check_number("atol", self.atol, 0)
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol cannot both be 0")
        check_number("h_init", self.h_init, 0, low_open=True)
        check_number("t_err", self.t_err, 0, low_open=True)
        check_number("theta", self.theta, 0, 1, low_open=True)
        if self.max_growth is not None:
            try:
                check_number("max_growth", self.max_growth, 1, low_open=True)
            except ValueError:
                raise ValueError(f"max_growth must be None or a number > 1, got {self.max_growth!r}") from None

    def step_size_options(self) -> dict:
        """These options by name (to build a controller from a solver that carries them)."""
        return {f.name: getattr(self, f.name) for f in fields(StepSizeOptions)}


@dataclass(frozen=True, kw_only=True)
class LogSNRController(StepSizeOptions):
    """Lu et al.'s step-size rule in log-SNR (Lu et al. 2022, arXiv:2206.00927, Sec. 3.3 and Appendix).

    Steps are measured in lambda = log(alpha / sigma). A try from s to t yields x_lower and x_higher;
    with delta = max(atol, rtol * max(|x_lower|, |x_prev|)) (x_prev: the lower-order result of the
    last accepted step), E = max over the batch of the per-sample RMS of (x_higher - x_lower) / delta.
    The try is accepted if E <= 1, and the next step is h <- min(theta h E^(-1/order), lambda_end -
    lambda_s). The loop stops within t_err (in t) of the end time.

    Options: `order` (the higher order of the pair; the exponent above), `rtol`, `atol` (for data
    in [-1, 1]), `h_init` (the first step, in lambda), `theta` (safety factor), `t_err`, and
    `max_growth` (largest factor by which h may grow per try; None: the paper's unbounded rule).
    """

    order: int

    def __post_init__(self):
        check_int("order", self.order, 1)
        self.check_step_size_options()

    def first_step(self, lam_s: Tensor) -> Tensor:
        """The first proposal h_init (in lambda), shaped like lam_s (float64 (1,))."""
        return torch.full_like(lam_s, float(self.h_init))

    def done(self, s: Tensor, t_end: Tensor) -> bool:
        """True once the accepted time s is within t_err of t_end (host sync: step control)."""
        return float((s - t_end).abs()) <= self.t_err

    def reaches_end(self, h: Tensor, lam_s: Tensor, lam_end: Tensor) -> bool:
        """True if a step of h from lam_s reaches lam_end (the try then ends exactly there; host sync)."""
        return bool(h >= lam_end - lam_s)

    def error_norm(self, x_lower: Tensor, x_higher: Tensor, x_prev: Tensor) -> Tensor:
        """E: the largest per-sample RMS of (x_higher - x_lower) / delta, a 0-d float64 tensor.

        x_lower, x_higher, x_prev (B, *D); delta = max(atol, rtol * max(|x_lower|, |x_prev|)).
        """
        delta = torch.maximum(
            torch.full_like(x_lower, float(self.atol)), self.rtol * torch.maximum(x_lower.abs(), x_prev.abs())
        )
        return ((x_higher - x_lower) / delta).flatten(1).pow(2).mean(1).sqrt().max().to(torch.float64)

    def accept(self, E: Tensor) -> bool:
        """Accept the try if E <= 1 (host sync: step control)."""
        return bool(E <= 1.0)

    def next_step(self, h: Tensor, E: Tensor, lam_s: Tensor, lam_end: Tensor) -> Tensor:
        """The next proposal from lam_s (the start of the next try), float64 like h."""
        factor = self.theta * E.clamp_min(1e-300) ** (-1.0 / self.order)
        if self.max_growth is not None:
            factor = factor.clamp_max(self.max_growth)
        # Lu et al. 2022, adaptive step size: h <- min(theta h E^(-1/order), lambda_end - lambda_s)
        return torch.minimum(h * factor, lam_end - lam_s)
