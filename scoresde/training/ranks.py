"""The processes, devices and random streams of a training run: joining torchrun's process group, this process's
rank, the device a config names, the per-step seeds of every rank's random streams, and the hybrid loss's history
gathered across ranks."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from ..losses import LossHistory

__all__ = ["cpu_seed", "rank_world", "record_losses", "resolve_device", "seed_generator", "setup_distributed", "step_seed"]


def setup_distributed() -> tuple[int, int]:
    """Join the process group described by torchrun's environment; returns (rank, world_size).

    Without torchrun (no WORLD_SIZE, or 1) nothing happens and (0, 1) comes back. Backend: NCCL
    with one device per process (LOCAL_RANK) when CUDA is available, else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or (dist.is_available() and dist.is_initialized()):
        return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def step_seed(seed: int, rank: int, step: int, stream: int) -> int:
    """Seed of random stream `stream` (0: loss and augmentation, 1: dropout; 2 at rank 0 and step 0: the noise of loss
    "reflow"'s pairs) of one step on one rank.

    Distinct for every (seed < 2^12 = config.MAX_SEED + 1, rank < 2^10, stream < 4, step < 2^40): the
    fields fill all 64 bits that torch seeds take (seeds below 2^11 give the values they gave when the
    top bit was masked off, so their runs are unchanged).
    """
    return ((((seed * 1024 + rank) * 4 + stream) << 40) + step) & ((1 << 64) - 1)


def cpu_seed(value: int) -> int:
    """The seed for a CPU generator that stands for the 64-bit `step_seed` value.

    torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, which `step_seed` fills with
    the step alone: seed, rank and stream would not reach it. This mixes all 64 bits into the low 32
    (the splitmix64 finalizer); accelerator generators (Philox) take the 64-bit value as it is.
    """
    z = value & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0xFFFFFFFF


def seed_generator(gen: torch.Generator, value: int) -> torch.Generator:
    """gen seeded with the `step_seed` value (mixed into 32 bits on the CPU, `cpu_seed`)."""
    return gen.manual_seed(cpu_seed(value) if gen.device.type == "cpu" else value)


def record_losses(history: LossHistory, steps: Tensor, vlb: Tensor, world: int) -> None:
    """Record every rank's (timestep, L_vlb) pairs in rank order, so that all ranks keep the same history."""
    if world > 1:
        all_steps, all_vlb = [torch.empty_like(steps) for _ in range(world)], [torch.empty_like(vlb) for _ in range(world)]
        dist.all_gather(all_steps, steps.contiguous())
        dist.all_gather(all_vlb, vlb.contiguous())
        steps, vlb = torch.cat(all_steps), torch.cat(all_vlb)
    history.record(steps, vlb)


def resolve_device(config) -> torch.device:
    """The device of config.device: "auto" is the current CUDA device when there is one, else the CPU; a bare "cuda"
    gets the current CUDA device's index."""
    if config.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device
