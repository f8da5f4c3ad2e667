"""The small training loop the distillation methods share (progressive distillation, reflow).

Adam with a learning rate decayed linearly to 0 over the run (as Salimans & Ho 2022 do each round),
on a loss function that draws its own batch from one generator. Returns loss statistics and CPU time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from solvers.validate import check_int, check_number

__all__ = ["FitStats", "fit"]


@dataclass(frozen=True)
class FitStats:
    """Mean loss over the first and the last tenth of the iterations, and CPU seconds (time.process_time)."""

    loss_first: float
    loss_last: float
    cpu_seconds: float


def fit(params: Iterable[Tensor], batch_loss: Callable[[], Tensor], *, iterations: int, lr: float) -> FitStats:
    """Minimize batch_loss() (a scalar, a fresh batch each call) over `params` for `iterations` Adam steps."""
    check_int("iterations", iterations, 1)
    check_number("lr", lr, 0, low_open=True)
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - k / iterations)
    losses, start = [], time.process_time()
    for _ in range(iterations):
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
    seconds = time.process_time() - start
    tenth = max(1, iterations // 10)
    first, last = (float(torch.stack(losses[part]).mean()) for part in (slice(0, tenth), slice(-tenth, None)))
    return FitStats(first, last, seconds)
