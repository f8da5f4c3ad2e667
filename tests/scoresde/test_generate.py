"""Sharded sample generation: per-sample seeds make the union of shards independent of the world size."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import scoresde
from scoresde.generate import generate_shard, load_shards, sample_seeds, shard_indices, shard_path

SHAPE = (1, 2, 3)
TOTAL = 7
RUNS = {"dpm_solver++": {}, "ancestral": {}}  # one deterministic and one stochastic solver


def gaussian_model():
    mean = torch.linspace(-0.5, 0.5, 6, dtype=torch.float64).reshape(SHAPE)
    return scoresde.AnalyticModel(scoresde.Gaussian(mean, 0.3), scoresde.VPSDE())


def run(out_dir, solver, *, batch_size, rank=None, world_size=None):
    return generate_shard(
        gaussian_model(), out_dir, total=TOTAL, shape=SHAPE, solver=solver, steps=8, base_seed=3,
        batch_size=batch_size, rank=rank, world_size=world_size, dtype=torch.float64, **RUNS[solver],
    )


def _worker(rank: int, world_size: int, init_file: str, out_root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        for solver in RUNS:  # rank and world size come from the process group
            run(f"{out_root}/{solver}/dist", solver, batch_size=2)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    # fork where available: the children inherit the imported modules (spawn imports torch again, ~20 s here)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method=method)
    for solver in RUNS:
        run(tmp_path / solver / "single", solver, batch_size=3, rank=0, world_size=1)
        single, both = load_shards(tmp_path / solver / "single"), load_shards(tmp_path / solver / "dist")
        assert both.world_size == 2 and single.world_size == 1
        assert sorted(p.name for p in (tmp_path / solver / "dist").iterdir()) == [
            "shard-00000-of-00002.npz", "shard-00001-of-00002.npz"]
        assert single.x.shape == (TOTAL, *SHAPE)
        torch.testing.assert_close(both.x, single.x, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(both.seeds, np.asarray(sample_seeds(3, range(TOTAL)), dtype=np.uint64))
        assert single.settings == both.settings and single.settings["resolved"]["solver"] == solver


def test_samples_do_not_depend_on_world_size_or_batch(tmp_path):
    ref = None
    for world_size, batch_size in ((1, 7), (3, 2), (TOTAL + 2, 1)):  # the last has empty shards
        for rank in range(world_size):
            run(tmp_path / str(world_size), "ancestral", batch_size=batch_size, rank=rank, world_size=world_size)
        x = load_shards(tmp_path / str(world_size)).x
        ref = x if ref is None else ref
        torch.testing.assert_close(x, ref, rtol=1e-12, atol=1e-12)
    # different base seeds give different samples
    generate_shard(gaussian_model(), tmp_path / "other", total=TOTAL, shape=SHAPE, solver="ancestral", steps=8,
                   base_seed=4, rank=0, world_size=1, dtype=torch.float64)
    assert not torch.allclose(load_shards(tmp_path / "other").x, ref)


def test_shard_indices_partition():
    for total, world in ((10, 3), (5, 8), (50_000, 7)):
        blocks = [shard_indices(total, r, world) for r in range(world)]
        assert [i for b in blocks for i in b] == list(range(total))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert sample_seeds(2, [0, 5]) == [(2 * 2654435761) % 2**32, (2 * 2654435761 + 5) % 2**32]
    assert sample_seeds(1, [2**32 - 1])[0] == (2654435761 + 2**32 - 1) % 2**32  # wraps around, stays 32-bit
    with pytest.raises(ValueError, match="rank must be an integer in"):
        shard_indices(10, 3, 3)
    with pytest.raises(ValueError, match="base_seed must be"):
        sample_seeds(-1, [0])


def test_runs_of_different_base_seeds_share_no_seed():
    # the seed ranges [offset_b, offset_b + 50,000) of base seeds 0..9,999 are disjoint on the 32-bit circle
    offsets = np.sort(np.asarray([sample_seeds(b, [0])[0] for b in range(10_000)], dtype=np.int64))
    gaps = np.diff(np.append(offsets, offsets[0] + 2**32))
    assert gaps.min() >= 50_000
    seeds = sample_seeds(7, range(50_000))
    assert len(set(seeds)) == 50_000 and all(0 <= s < 2**32 for s in seeds)


def test_resume_keeps_shard_and_rejects_other_runs(tmp_path):
    path = run(tmp_path, "dpm_solver++", batch_size=7, rank=0, world_size=1)
    stamp = path.stat().st_mtime_ns
    assert run(tmp_path, "dpm_solver++", batch_size=2, rank=0, world_size=1) == path  # same request: kept
    assert path.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="holds a shard of another run"):
        run(tmp_path, "ancestral", batch_size=7, rank=0, world_size=1)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_load_shards_reports_missing_and_mixed(tmp_path):
    run(tmp_path / "a", "ancestral", batch_size=7, rank=0, world_size=2)
    with pytest.raises(ValueError, match="shards missing"):
        load_shards(tmp_path / "a")
    run(tmp_path / "a", "ancestral", batch_size=7, rank=0, world_size=1)
    with pytest.raises(ValueError, match="several world sizes"):
        load_shards(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="no shards"):
        load_shards(tmp_path / "empty")
    assert shard_path(tmp_path, 1, 2).name == "shard-00001-of-00002.npz"
