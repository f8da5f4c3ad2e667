"""The training log, `metrics.jsonl` in a run's out_dir: one JSON object per log interval (step, loss,
lr, grad_norm, images_per_s), and the log interval a checkpoint keeps open (`LogInterval`), so that a
resumed run logs the losses of the uninterrupted one bit for bit. Used by `scoresde.training.loop`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from ..files import atomic_write
from .checkpoints import LogInterval

__all__ = ["METRICS", "MetricsLog", "truncate_metrics"]

METRICS = "metrics.jsonl"  # in out_dir


def _metrics_step(line: str) -> int | None:
    """The step of one metrics.jsonl line, None if it is not a JSON object with an integer step."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError, RecursionError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after `step` (by a run killed after its last checkpoint), and a torn last
    line (killed mid-write); any other unreadable line raises ValueError naming the file and line."""
    if not path.is_file():
        return
    lines = [(i, line) for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if line.strip()]
    keep = []
    for n, (i, line) in enumerate(lines):
        s = _metrics_step(line)
        if s is None and n < len(lines) - 1:
            raise ValueError(f"{path}: line {i} is not a JSON object with an integer 'step'")
        if s is not None and s <= step:
            keep.append(line)
    atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))


class MetricsLog:
    """The mean loss and images/s of each log interval, appended to out/metrics.jsonl (rank 0) and shown
    on the progress bar `bar` (None: none). Losses add up on `device`; reading them is one host sync
    per interval. A resumed run starts from the interval open at its checkpoint (`open_log`), so that
    it logs the uninterrupted run's losses bit for bit. batch_size: the global batch (for images/s)."""

    def __init__(self, out: Path, *, rank: int, world: int, device: torch.device, batch_size: int,
                 open_log: LogInterval, bar=None):
        self.out, self.rank, self.world, self.batch_size, self.bar = out, rank, world, batch_size, bar
        self.loss_sum = torch.zeros((), device=device)
        self.n, self.t, self.last_loss = 0, time.perf_counter(), None
        self.timed = 0  # steps since the clock last started: the images/s of a resumed interval counts only these
        self._resume(open_log)

    def _resume(self, interval: LogInterval) -> None:
        """Continue `interval`: this rank's loss sum, or the ranks' mean sum when the world size changed
        (then the logged mean over ranks is still the interval's mean, though not bit for bit)."""
        if interval.count == 0:
            return
        sums = interval.loss_sums
        value = sums[self.rank] if len(sums) == self.world else sum(sums) / len(sums)
        self.loss_sum.fill_(value)  # float32 sums went out as exact floats: this restores their bits
        self.n = interval.count

    def add(self, loss: Tensor) -> None:
        self.loss_sum += loss.detach()
        self.n += 1
        self.timed += 1

    def restart_clock(self) -> None:
        self.t, self.timed = time.perf_counter(), 0

    def open_interval(self) -> LogInterval:
        """The interval open now, for a checkpoint: step count and every rank's loss sum (rank order).

        A collective when it is open and there are several ranks: every rank calls it at each checkpoint.
        """
        if self.n == 0:
            return LogInterval(0, ())
        sums = self.loss_sum.reshape(1)
        if self.world > 1:
            parts = [torch.empty_like(sums) for _ in range(self.world)]
            dist.all_gather(parts, sums)
            sums = torch.cat(parts)
        return LogInterval(self.n, tuple(float(v) for v in sums.cpu()))  # host sync, once per checkpoint

    def write(self, step: int, lr: float, grad_norm: Tensor) -> None:
        """Close the interval at `step`: log its mean loss over steps and ranks (a collective with several ranks)."""
        if self.world > 1:
            dist.all_reduce(self.loss_sum)
            self.loss_sum /= self.world
        self.last_loss = float(self.loss_sum) / self.n  # host sync, once per log interval
        now = time.perf_counter()
        record = {"step": step, "loss": self.last_loss, "lr": lr, "grad_norm": float(grad_norm),
                  "images_per_s": self.timed * self.batch_size / max(now - self.t, 1e-9)}
        if self.rank == 0:
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{self.last_loss:.4f}", img_s=f"{record['images_per_s']:.0f}")
        self.loss_sum.zero_()
        self.n, self.t, self.timed = 0, now, 0
