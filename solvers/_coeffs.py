"""Marginal coefficients of one grid step, computed in float64 from the grid entries.

For a step from the noisier time s = t_cur to the less noisy time t = t_next:
alpha_s, sigma_s, alpha_t, sigma_t (0-d float64) and h = lambda_t - lambda_s > 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .protocol import Process


class StepCoefficients(NamedTuple):
    alpha_s: Tensor
    sigma_s: Tensor
    alpha_t: Tensor
    sigma_t: Tensor
    h: Tensor


def step_coefficients(process: Process, t_cur: Tensor, t_next: Tensor) -> StepCoefficients:
    """alpha, sigma at t_cur (s) and t_next (t) and h = lambda_t - lambda_s, all 0-d float64."""
    ts = torch.stack([t_cur, t_next]).to(torch.float64)
    alpha, sigma, lam = process.alpha(ts), process.sigma(ts), process.lambda_(ts)
    return StepCoefficients(alpha[0], sigma[0], alpha[1], sigma[1], lam[1] - lam[0])
