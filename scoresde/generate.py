"""Sample generation for large evaluations (e.g. 50,000 images for FID), sharded over torchrun ranks.

Sample i of a run (0 <= i < total) is drawn with its own generator seeded by

    seed_i = (base_seed * 2654435761 + i) mod 2**32,

so each image depends only on (model, solver settings, base_seed, i): not on the world size, the
rank that drew it or the batch it was drawn in (up to floating-point differences between batch
shapes on some backends). The seeds are 32-bit because torch's CPU generator keeps only the low
32 bits of a seed. Within a run they are distinct; Knuth's multiplicative constant (about
2**32 / golden ratio) spreads the runs of different base seeds around the 32-bit circle, so that
runs of 50,000 samples with base seeds 0..9,999 share no seed (checked in the tests).

Rank r of W draws the contiguous block of indices [r * total // W, (r + 1) * total // W) in
batches, through `scoresde.sample(..., seed=[seed_i, ...])`, and writes one shard
`shard-{r:05d}-of-{W:05d}.npz` atomically (a temporary file, then os.replace), holding

    x (n_r, *shape)  the samples, in the sampling dtype;
    index (n_r,)     int64 sample indices i;
    seed (n_r,)      uint64 per-sample seeds;
    settings ()      a JSON string: the request (solver, options, steps, grid, total, base_seed,
                     shape, dtype, sde) and under "resolved" the solver settings `sample` used
                     (null for an empty shard); no rank, world size, batch or device.

A shard already on disk from the same request is kept, not redrawn (a restarted job resumes);
one from another request is an error. `load_shards` reassembles a run in index order, whatever
the world size that wrote it.

torchrun (one process per GPU, or per CPU core with gloo):

    torchrun --nproc_per_node 8 -m scoresde.generate --model ckpt.safetensors --solver dpm_solver++ \\
        --steps 20 --total 50000 --seed 0 --out samples/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .cli import USER_ERRORS, _one_line, _Parser, _positive_int, _steps, parse_option
from .files import atomic_write

__all__ = ["Generated", "generate_shard", "load_shards", "sample_seeds", "shard_indices", "shard_path"]

SEED_MULTIPLIER = 2654435761  # Knuth's multiplicative hash, odd: about 2**32 / golden ratio
SEED_MODULUS = 2**32
SHARD_GLOB = "shard-*-of-*.npz"


def sample_seeds(base_seed: int, indices: Sequence[int] | range) -> list[int]:
    """Per-sample seeds (base_seed * 2654435761 + i) mod 2**32 of sample indices i; 0 <= base_seed, i < 2**32."""
    if isinstance(base_seed, bool) or not isinstance(base_seed, int) or not 0 <= base_seed < SEED_MODULUS:
        raise ValueError(f"base_seed must be an integer in [0, 2**32), got {base_seed!r}")
    offset = base_seed * SEED_MULTIPLIER
    seeds = []
    for i in indices:
        if not 0 <= i < SEED_MODULUS:
            raise ValueError(f"sample index must be in [0, 2**32), got {i!r}")
        seeds.append((offset + int(i)) % SEED_MODULUS)
    return seeds


def shard_indices(total: int, rank: int, world_size: int) -> range:
    """The contiguous block of sample indices rank `rank` of `world_size` draws: sizes differ by at most 1."""
    if isinstance(total, bool) or not isinstance(total, int) or not 1 <= total <= SEED_MODULUS:
        raise ValueError(f"total must be an integer in [1, 2**32], got {total!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
    return range(rank * total // world_size, (rank + 1) * total // world_size)


def shard_path(out_dir: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Path of the shard of `rank` of `world_size` in out_dir."""
    return Path(out_dir) / f"shard-{rank:05d}-of-{world_size:05d}.npz"


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if rank is not None:
        return rank, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _read_shard(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as f:
            shard = {k: f[k] for k in ("x", "index", "seed", "settings")}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a readable sample shard ({type(e).__name__}: {e})") from e
    shard["settings"] = json.loads(str(shard["settings"]))
    return shard


def generate_shard(
    model,
    out_dir: str | os.PathLike,
    *,
    total: int,
    shape: Sequence[int],
    solver: str = "dpm_solver++",
    steps: int | None = None,
    grid: str | None = None,
    base_seed: int = 0,
    batch_size: int = 500,
    rank: int | None = None,
    world_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    **solver_options,
) -> Path:
    """Draw this rank's block of a `total`-sample run of `model` and write its shard; returns the shard's path.

    shape: one sample's shape (without the batch). solver, steps, grid and solver options as in
    `scoresde.sample`. rank, world_size: taken from torch.distributed when it is initialized and
    both are None, else 0 and 1. batch_size: samples per `scoresde.sample` call (does not change
    the samples). Seeds, sharding and file format: module docstring.
    """
    from .sampling import _sde_config, sample

    rank, world_size = _rank_and_world(rank, world_size)
    indices = shard_indices(total, rank, world_size)
    seeds = sample_seeds(base_seed, indices)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    shape = tuple(int(s) for s in shape)
    request = {
        "solver": solver, "options": solver_options, "steps": steps, "grid": grid, "total": total,
        "base_seed": base_seed, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
        "sde": _sde_config(model.sde),
    }
    request = json.loads(json.dumps(request, default=str))
    path = shard_path(out_dir, rank, world_size)
    if path.exists():
        old = _read_shard(path)["settings"]
        if {k: v for k, v in old.items() if k != "resolved"} == request:
            return path
        raise ValueError(f"{path} holds a shard of another run (settings {old}); use another out_dir or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)

    xs, resolved = [], None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), desc=f"rank {rank}/{world_size}", unit="sample")
    try:
        for start in range(0, len(indices), batch_size):
            batch_seeds = seeds[start:start + batch_size]
            res = sample(
                model, solver=solver, steps=steps, grid=grid, n=len(batch_seeds), shape=shape, seed=batch_seeds,
                device=device, dtype=dtype, **solver_options,
            )
            xs.append(res.x.cpu())
            if resolved is None:
                resolved = {k: res.settings[k] for k in ("solver", "options", "steps", "grid", "t_start", "t_end")}
            if bar is not None:
                bar.update(res.x.shape[0])
    finally:
        if bar is not None:
            bar.close()
    settings = {**request, "resolved": json.loads(json.dumps(resolved, default=str))}
    x = torch.cat(xs) if xs else torch.empty((0, *shape), dtype=dtype)
    arrays = dict(
        x=x.numpy(), index=np.asarray(indices, dtype=np.int64), seed=np.asarray(seeds, dtype=np.uint64),
        settings=np.asarray(json.dumps(settings)),
    )

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez adds no ".npz" to the temporary name
            np.savez(f, **arrays)

    atomic_write(path, write)
    return path


@dataclass(frozen=True)
class Generated:
    """A run reassembled by `load_shards`: x (total, *shape) in index order, seeds (total,) uint64,
    settings (dict, as written), world_size of the run that wrote the shards."""

    x: Tensor
    seeds: np.ndarray
    settings: dict
    world_size: int


def load_shards(out_dir: str | os.PathLike) -> Generated:
    """Read every shard in out_dir and return the whole run in index order.

    Raises when the shards come from different runs or world sizes, or when samples are missing
    or duplicated, naming the files or indices at fault.
    """
    out_dir = Path(out_dir)
    paths = sorted(out_dir.glob(SHARD_GLOB))
    if not paths:
        raise FileNotFoundError(f"no shards ({SHARD_GLOB}) in {str(out_dir)!r}")
    worlds = {p.name.rsplit("-of-", 1)[1].removesuffix(".npz") for p in paths}
    if len(worlds) != 1:
        raise ValueError(f"{out_dir} holds shards of several world sizes {sorted(worlds)}; keep one run per folder")
    world_size = int(worlds.pop())
    expected = [shard_path(out_dir, r, world_size) for r in range(world_size)]
    missing = [p.name for p in expected if not p.exists()]
    if missing:
        raise ValueError(f"{out_dir}: shards missing: {missing}")
    shards = [_read_shard(p) for p in expected]
    def request(settings: dict) -> dict:
        return {k: v for k, v in settings.items() if k != "resolved"}

    settings = next((s["settings"] for s in shards if s["settings"]["resolved"] is not None), shards[0]["settings"])
    for p, s in zip(expected, shards):
        if request(s["settings"]) != request(settings) or s["settings"]["resolved"] not in (None, settings["resolved"]):
            raise ValueError(f"{p} comes from another run than the other shards in {out_dir} (settings differ)")
    index = np.concatenate([s["index"] for s in shards])
    total = settings["total"]
    if not np.array_equal(np.sort(index), np.arange(total)):
        raise ValueError(f"{out_dir}: shards hold {index.size} samples, expected indices 0..{total - 1} once each")
    order = np.argsort(index, kind="stable")
    x = torch.from_numpy(np.concatenate([s["x"] for s in shards])[order])
    seeds = np.concatenate([s["seed"] for s in shards])[order]
    return Generated(x=x, seeds=seeds, settings=settings, world_size=world_size)


# --- torchrun entry point ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from .sde_names import SDE_NAMES

    p = _Parser(
        prog="python -m scoresde.generate",
        description="Draw a large sample set, one shard per torchrun rank (module docstring of scoresde.generate).",
    )
    p.add_argument("--model", help="checkpoint (.safetensors) written by `scoresde train`; default: the shipped model")
    p.add_argument("--sde", default="vp", choices=sorted(SDE_NAMES), help="SDE of the shipped default model (default: vp)")
    p.add_argument("--solver", default="dpm_solver++", help="a name from `scoresde solvers` (default: dpm_solver++)")
    p.add_argument("--option", action="append", type=parse_option, metavar="KEY=VALUE", help="solver option, repeatable")
    p.add_argument("--steps", type=_steps, help="grid steps (default: the solver's)")
    p.add_argument("--grid", help="time grid (default: the solver's)")
    p.add_argument("--total", type=int, required=True, help="number of samples over all ranks")
    p.add_argument("--shape", type=_positive_int, nargs="+", metavar="DIM", help="sample shape without the batch (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    p.add_argument("--batch", type=_positive_int, default=500, help="samples per batch on each rank (default: 500)")
    p.add_argument("--out", required=True, help="folder of the shards")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point for `torchrun ... -m scoresde.generate`: one process group (nccl on GPUs, else gloo)."""
    import torch.distributed as dist

    args = build_parser().parse_args(argv)
    if Path(args.out).exists() and not Path(args.out).is_dir():  # before any work
        print(f"scoresde.generate: error: --out {args.out!r} is a file, not a folder; choose a folder "
              "(it is created if missing)", file=sys.stderr)
        return 2
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # set by torchrun
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        if args.model is None:
            from .training.checkpoints import default_model

            model = default_model(args.sde, device=device)
        else:
            from .training.checkpoints import load_model

            model = load_model(args.model, device=device)
        shape = args.shape if args.shape is not None else getattr(model, "image_shape", None)
        if shape is None:
            raise ValueError("this model does not record its image shape; pass --shape C H W")
        path = generate_shard(
            model, args.out, total=args.total, shape=shape, solver=args.solver, steps=args.steps, grid=args.grid,
            base_seed=args.seed, batch_size=args.batch, device=device, progress=not args.quiet,
            **dict(args.option or []),
        )
        if distributed:
            dist.barrier()
        rank = dist.get_rank() if distributed else 0
        if rank == 0:
            run = load_shards(args.out)
            print(f"wrote {run.x.shape[0]} samples {tuple(run.x.shape[1:])} in {run.world_size} shard(s) to {args.out}")
        else:
            print(f"rank {rank}: wrote {path}", file=sys.stderr)
    except USER_ERRORS as e:
        print(f"scoresde.generate: error: {_one_line(e)}", file=sys.stderr)
        return 2
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
