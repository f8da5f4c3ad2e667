"""Rectified-flow reflow in the trainer (TrainConfig.loss "reflow"; scoresde.fewstep.reflow, docs/distillation.md).

One run is one reflow round of Liu et al. 2022 (arXiv:2209.03003): the teacher, a flow model file (FlowSDE), makes
P = `reflow_pairs` (noise, sample) pairs once, at the start: P noises x_T drawn on the CPU from one generator seeded
from TrainConfig.seed, each integrated by `fewstep.reflow.reflow_pairs` (the deterministic `reflow_solver` in
`reflow_steps` steps on the uniform_t grid), `batch_size` at a time so that memory stays bounded. Training then draws
batches of pairs where other runs draw images (the data only give the image shape) and minimizes
`fewstep.reflow.reflow_loss`, flow matching on the straight path between each noise and its sample, with what a
diffusion run has: EMA (sampling and export use it), checkpoints, exact resume, DDP, metrics.

- The pairs file, out_dir/reflow_pairs.safetensors (PAIRS): written atomically by rank 0, with metadata naming what
  made it (the teacher file's SHA-256, solver, steps, grid, P, seed, round, image shape, chunk). Every later start
  of the run (a resumption, or a restart before the first checkpoint) reads it and checks that metadata against the
  run instead of recomputing, so a resumed run trains on the same pairs bit for bit.
- DDP: every rank makes the pairs (the same noise, the same chunks), then rank 0's are broadcast, so every rank holds
  the bits the file holds; no rank waits in a collective while another makes them.
- The teacher passes `check_reflow_teacher` (a flow model, sde.kind "flow", of the run's data: not latent, the same
  image shape; reflow_round = its round + 1, where a "reflow" run's file records its round and any other flow model
  is round 0), then `training.consistency.check_teacher` (no consistency model; the same process; unless `init_from`
  is set, the network, prediction and noise input whose weights start the student).
- `scoresde sample --model FILE` of the run's files samples with DDIM, which on FlowSDE is exactly Euler
  (fewstep/reflow.py, "One step"), in REFLOW_SAMPLE_STEPS = 1 step on uniform_t by default (`reflow_sampling`), as
  do the run's progress grids: one Euler step is what a rectified flow is for (`fewstep.reflow.one_step`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from ..fewstep.reflow import reflow_loss, reflow_pairs
from ..files import file_sha256, read_safetensors, write_safetensors
from ..param import ScoreModel
from .config import PAIR_GRID, REFLOW_SAMPLE_STEPS, TrainConfig, recorded_config
from .consistency import check_image_teacher

__all__ = [
    "PAIRS", "PAIRS_FORMAT", "PAIR_GRID", "REFLOW_SAMPLE_STEPS", "check_reflow_teacher", "reflow_batch_loss",
    "reflow_sampling", "teacher_round", "training_pairs",
]

PAIRS = "reflow_pairs.safetensors"  # the file name in a run's out_dir
PAIRS_FORMAT = "scoresde.reflow_pairs/1"


def reflow_sampling(model) -> tuple[int, str] | None:
    """(steps, grid name) to sample a loaded model file of a "reflow" run with DDIM (= Euler on FlowSDE):
    (REFLOW_SAMPLE_STEPS, "uniform_t"); None for any other model."""
    recorded = recorded_config(model, "reflow")
    return None if recorded is None else recorded.ddim_sampling()


def teacher_round(teacher) -> int:
    """The reflow round of a loaded model file: its run's reflow_round for a "reflow" run's file, else 0."""
    config = recorded_config(teacher, "reflow")
    return 0 if config is None else config.reflow_options()[2]


def check_reflow_teacher(config: TrainConfig, teacher: ScoreModel, net_config) -> None:
    """Refuse a teacher (a loaded model file) of a "reflow" run that is not a flow model of the run's data (a latent
    model, one of another image shape, or of a process other than FlowSDE), or whose round is not reflow_round - 1;
    the errors name the values and the fix."""
    path, round_ = config.teacher, config.reflow_options()[2]
    check_image_teacher(config, teacher, net_config)
    kind = getattr(teacher.sde, "kind", None)
    if kind != "flow":
        raise ValueError(f"teacher {path}: it is a model of sde.kind {kind!r}; loss 'reflow' straightens a flow model's "
                         "ODE: give a model file of sde 'flow' (e.g. a flow_matching run's)")
    t_round = teacher_round(teacher)
    if round_ != t_round + 1:
        what = f"the student of reflow round {t_round}" if t_round else "a flow model of no reflow round (round 0)"
        raise ValueError(f"teacher {path} is {what}; this run's reflow_round {round_} must be the teacher's round plus "
                         f"one: set reflow_round {t_round + 1}")


def _pairs_meta(config: TrainConfig, shape: tuple[int, ...]) -> dict:
    """What makes a run's pairs: the run's reflow settings and the teacher file's contents (its SHA-256)."""
    solver, steps, round_ = config.reflow_options()
    return {"teacher_sha256": file_sha256(config.teacher), "solver": solver, "steps": steps, "grid": PAIR_GRID,
            "pairs": config.reflow_pairs, "seed": config.seed, "round": round_, "shape": list(shape),
            "chunk": config.batch_size}


def _make_pairs(config: TrainConfig, teacher: ScoreModel, shape: tuple[int, ...], device: torch.device,
                generator: torch.Generator, progress: bool) -> tuple[Tensor, Tensor]:
    """(noise, samples), both (P, *shape) float32 on `device`: P noises from `generator` (CPU), integrated by the
    teacher's ODE `batch_size` at a time (fewstep.reflow.reflow_pairs)."""
    solver, steps, _ = config.reflow_options()
    noise = teacher.sde.prior_sample((config.reflow_pairs, *shape), generator=generator, dtype=torch.float32)
    chunks = noise.split(config.batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="reflow pairs", unit="batch", dynamic_ncols=True)
    x = torch.cat([reflow_pairs(teacher, chunk.to(device), solver=solver, steps=steps)[1] for chunk in chunks])
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"teacher {config.teacher}: its {solver} solution ({steps} steps) is not finite for some of "
                         "the pairs; the teacher diverges (try more reflow_steps or another reflow_solver)")
    return noise.to(device), x


def _read_pairs(path: Path, expected: dict, device: torch.device) -> tuple[Tensor, Tensor]:
    """The pairs of `path`, checked: its recorded settings must be `expected` (the run's), its tensors (P, *shape)."""
    tensors, meta = read_safetensors(path, fmt=PAIRS_FORMAT, what="reflow pairs file")
    try:
        recorded = json.loads(meta.get("reflow", "null"))
    except json.JSONDecodeError:
        recorded = None
    if not isinstance(recorded, dict):
        raise ValueError(f"{path}: metadata 'reflow' must be a JSON object of the settings that made the pairs")
    diffs = [f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in expected.items() if recorded.get(k) != v]
    if diffs:
        raise ValueError(f"{path} holds pairs made otherwise than this run would make them (file -> run): "
                         f"{'; '.join(diffs)}; delete it to make them afresh, or use another out_dir")
    want = (expected["pairs"], *expected["shape"])
    if sorted(tensors) != ["noise", "x"] or any(tuple(t.shape) != want or t.dtype != torch.float32
                                                for t in tensors.values()):
        raise ValueError(f"{path}: expected float32 tensors 'noise' and 'x' of shape {want}, got "
                         f"{ {k: (tuple(t.shape), str(t.dtype)) for k, t in tensors.items()} }")
    return tensors["noise"].to(device), tensors["x"].to(device)


def training_pairs(config: TrainConfig, teacher: ScoreModel, shape: tuple[int, ...], out: Path, device: torch.device,
                   generator: torch.Generator, *, rank: int = 0, world: int = 1) -> tuple[Tensor, Tensor]:
    """The run's (noise, samples) pairs, each (P, *shape) on `device`: read from out/PAIRS (checked against the run)
    when it exists, else made with the teacher (noise from `generator`, a CPU generator), broadcast from rank 0 and
    written there by rank 0 (module docstring)."""
    path, expected = out / PAIRS, _pairs_meta(config, shape)
    if path.is_file():
        return _read_pairs(path, expected, device)
    noise, x = _make_pairs(config, teacher, shape, device, generator, progress=config.progress and rank == 0)
    if world > 1:  # every rank made the same pairs up to rounding: all take rank 0's bits, the file's
        dist.broadcast(noise, 0)
        dist.broadcast(x, 0)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        meta = {"format": PAIRS_FORMAT, "reflow": json.dumps(expected), "teacher": str(config.teacher)}
        write_safetensors(path, {"noise": noise.cpu().contiguous(), "x": x.cpu().contiguous()}, meta)
    return noise, x


def reflow_batch_loss(config: TrainConfig, student: ScoreModel, pairs: tuple[Tensor, Tensor], idx: Tensor,
                      generator: torch.Generator) -> Tensor:
    """The batch's scalar loss of loss "reflow": the mean of `fewstep.reflow.reflow_loss` on the pairs idx (B,) of
    `pairs` (noise, samples), t ~ U(config.t_eps, T) drawn from `generator`."""
    noise, x = (p[idx] for p in pairs)
    if config.channels_last:
        noise, x = (p.contiguous(memory_format=torch.channels_last) for p in (noise, x))
    # Liu et al. 2022, Eq. (1): flow matching on the straight path between each noise and its sample
    return reflow_loss(student, x, noise, t_eps=config.t_eps, generator=generator).mean()
