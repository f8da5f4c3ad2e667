"""Issue 17, scale: sample(..., batch_size=k) draws in chunks, save_samples streams them to .npy / .npz.

Samples must not depend on batch_size (an int seed s means per-sample seeds s..s+n-1), the solver must
never see more than batch_size rows, and a file appears only when complete.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import scoresde
from scoresde import VPSDE, AnalyticModel, ConditionalAnalyticModel, Gaussian, GaussianMixture
from scoresde.cli import main

F64 = torch.float64


def gaussian():
    return AnalyticModel(Gaussian(torch.tensor([0.5, -1.0], dtype=F64), 0.3), VPSDE())


class Shrink:
    """A cheap deterministic Model on VPSDE for long streams: eps(x, t) = x / 2, (B, *D) -> (B, *D).

    `largest` is the largest batch any prediction was asked for, `rows` the rows evaluated in all.
    """

    def __init__(self, fail_after_rows: int | None = None):
        self.sde, self.largest, self.rows, self.fail_after_rows = VPSDE(), 0, 0, fail_after_rows

    def eps(self, x, t):
        self.largest, self.rows = max(self.largest, x.shape[0]), self.rows + x.shape[0]
        if self.fail_after_rows is not None and self.rows > self.fail_after_rows:
            raise RuntimeError("model failed mid-way")
        return 0.5 * x

    def x0(self, x, t):
        return (x - self.sde.sigma(t)[:, None] * self.eps(x, t)) / self.sde.alpha(t)[:, None]

    def score(self, x, t):
        return -self.eps(x, t) / self.sde.sigma(t)[:, None]

    def v(self, x, t):
        raise NotImplementedError


@pytest.mark.parametrize("solver, options", [("ddim", {}), ("euler_maruyama", {})])
def test_int_seed_with_batch_size_equals_per_sample_seeds(solver, options):
    m, n, s = gaussian(), 10, 123
    kw = dict(solver=solver, steps=4, shape=(2,), dtype=F64, **options)
    ref = scoresde.sample(m, n=n, seed=list(range(s, s + n)), **kw)
    for k in (1, 3, 4, 10, 25):  # 3 and 4 do not divide 10; 25 > n
        res = scoresde.sample(m, n=n, seed=s, batch_size=k, **kw)
        assert torch.equal(res.x, ref.x), k
        chunks = -(-n // k)
        assert res.settings["nfe_per_chunk"] == [4] * chunks and res.nfe == 4 * chunks
        assert res.settings["batch_size"] == k and res.settings["batch"] == n and res.settings["seed"] == s


def test_seed_lists_generator_lists_and_x_T_are_split_across_chunks():
    m, kw = gaussian(), dict(solver="euler_maruyama", steps=3, dtype=F64)
    seeds = [5, 900, 17, 3, 2**63 - 1]
    ref = scoresde.sample(m, shape=(2,), n=5, seed=seeds, **kw)
    assert torch.equal(scoresde.sample(m, shape=(2,), n=5, seed=seeds, batch_size=2, **kw).x, ref.x)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    assert torch.equal(scoresde.sample(m, shape=(2,), n=5, generator=gens, batch_size=3, **kw).x, ref.x)
    x_T = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    whole = scoresde.sample(m, solver="ddim", steps=3, x_T=x_T)
    assert torch.equal(scoresde.sample(m, solver="ddim", steps=3, x_T=x_T, batch_size=2).x, whole.x)


def test_labels_are_split_across_chunks():
    data = GaussianMixture(torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([[-1.0], [1.0]], dtype=F64),
                           torch.tensor([0.3, 0.3], dtype=F64))
    m, y = ConditionalAnalyticModel(data, VPSDE()), torch.tensor([0, 1, 1, 0, 1])
    kw = dict(solver="ddim", steps=3, shape=(1,), dtype=F64, y=y, guidance_scale=2.0)
    ref = scoresde.sample(m, seed=list(range(7, 12)), **kw)
    res = scoresde.sample(m, seed=7, batch_size=2, **kw)
    assert torch.equal(res.x, ref.x)
    assert res.settings["guidance"]["y"] == y.tolist()
    assert res.settings["guidance"]["net_rows"] == ref.settings["guidance"]["net_rows"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(generator=torch.Generator()), "generator: one torch.Generator with batch_size"),
        (dict(seed=2**63 - 3), r"seed: with batch_size, seed 9223372036854775805 gives samples the seeds"),
        (dict(batch_size=0), r"batch_size must be an integer >= 1"),
        (dict(batch_size=2.0), r"batch_size must be an integer >= 1"),
        (dict(seed=[1, 2]), "seed: a list needs one entry per sample, got 2 for 4 samples"),
    ],
)
def test_batch_size_refusals(kwargs, match):
    kwargs = {"batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        scoresde.sample(gaussian(), solver="ddim", steps=2, n=4, shape=(2,), **kwargs)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_stream_100k_samples_with_bounded_batches(tmp_path, suffix):
    n, k, seed = 100_000, 16_384, 11  # 7 chunks, the last one short
    model, path = Shrink(), tmp_path / f"x{suffix}"
    res = scoresde.save_samples(path, n=n, batch_size=k, model=model, solver="ddim", steps=5, shape=(2,), seed=seed,
                                keep_first=3)
    assert model.largest == k and model.rows == 5 * n
    assert res.shape == (n, 2) and res.dtype == "float32" and res.nfe_per_chunk == (5,) * 7 and res.nfe == 35
    assert res.path == path and res.settings["batch_size"] == k and res.settings["batch"] == n
    x = np.load(path)["x"] if suffix == ".npz" else np.load(path, mmap_mode="r")
    assert x.shape == (n, 2) and x.dtype == np.float32
    lo = 49_150  # a slice across the chunk boundary at 49_152
    direct = scoresde.sample(Shrink(), solver="ddim", steps=5, shape=(2,), n=10, seed=list(range(seed + lo, seed + lo + 10)))
    np.testing.assert_array_equal(x[lo:lo + 10], direct.x.numpy())
    np.testing.assert_array_equal(x[:3], res.first.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_save_samples_without_batch_size_is_sample_written_out(tmp_path, capsys):
    m, path = gaussian(), tmp_path / "x.npy"
    kw = dict(solver="ddim", steps=3, shape=(2,), seed=4, dtype=F64)
    res = scoresde.save_samples(path, n=6, batch_size=None, model=m, progress=True, **kw)
    np.testing.assert_array_equal(np.load(path), scoresde.sample(m, n=6, **kw).x.numpy())
    assert res.nfe_per_chunk == (3,) and res.dtype == "float64"
    assert "6/6" in capsys.readouterr().err  # the tqdm bar counts samples


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_failure_mid_way_leaves_no_file_and_no_temporary(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    with pytest.raises(RuntimeError, match="model failed mid-way"):
        scoresde.save_samples(path, n=100, batch_size=10, model=Shrink(fail_after_rows=250), solver="ddim",
                              steps=5, shape=(2,), seed=0)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"old")  # an existing file is untouched by a failed write
    with pytest.raises(RuntimeError):
        scoresde.save_samples(path, n=100, batch_size=10, model=Shrink(fail_after_rows=250), solver="ddim",
                              steps=5, shape=(2,), seed=0)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    "path, kwargs, match",
    [
        ("x.txt", {}, r"path must be a file name ending in \.npy or \.npz, got"),
        ("x.npy", dict(x_T=torch.zeros(4, 2)), "x_T: save_samples draws the prior chunk by chunk"),
        ("x.npy", dict(dtype=torch.bfloat16), "dtype: save_samples writes torch.float16, torch.float32, torch.float64"),
        ("x.npy", dict(keep_first=-1), r"keep_first must be an integer in \[0, "),
        ("x.npz", dict(batch_size=0), "batch_size must be an integer >= 1"),
    ],
)
def test_save_samples_refusals(tmp_path, path, kwargs, match):
    kwargs = {"n": 4, "batch_size": 2, "shape": (2,), **kwargs}
    with pytest.raises(ValueError, match=match):
        scoresde.save_samples(tmp_path / path, model=gaussian(), solver="ddim", steps=2, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_save_samples_refuses_a_folder(tmp_path):
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(ValueError, match="path must be a file name ending in .npy or .npz"):
        scoresde.save_samples(tmp_path / "d.npy", n=2, batch_size=1, model=gaussian(), solver="ddim", steps=1, shape=(2,))


def test_cli_batch_size_and_streamed_save(tmp_path, capsys):
    run = ["sample", "--solver", "ddim", "--steps", "2", "--n", "70", "--seed", "3", "--quiet"]
    assert main([*run, "--batch-size", "32", "--save", str(tmp_path / "a.npz"), "--out", str(tmp_path / "a.png")]) == 0
    printed = capsys.readouterr().out
    assert "the first 64 of 70 samples" in printed and "NFE 6" in printed and '"nfe_per_chunk": [2, 2, 2]' in printed
    assert main([*run, "--batch-size", "50", "--save", str(tmp_path / "b.npy"), "--out", str(tmp_path / "b.png")]) == 0
    a, b = np.load(tmp_path / "a.npz")["x"], np.load(tmp_path / "b.npy")
    assert a.shape == (70, 1, 8, 8)
    # per-sample seeds: --batch-size changes only the U-Net's float32 round-off (its kernels depend on the batch)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    # the first 64 samples (8x8 pixels) in an 8x8 grid with 1-pixel borders, upscaled 4 times
    assert Image.open(tmp_path / "a.png").size == ((8 * 9 + 1) * 4,) * 2


def test_cli_refuses_other_save_suffixes(tmp_path, capsys):
    assert main(["sample", "--n", "2", "--steps", "2", "--save", str(tmp_path / "x.txt"), "--quiet"]) == 2
    assert "use a .npy, .npz or .pt file name" in capsys.readouterr().err


def test_image_files_and_pt_saves_go_through_atomic_write(tmp_path, monkeypatch):
    """Every per-sample PNG and the .pt file are written by files.atomic_write (a kill leaves whole files only)."""
    import scoresde.files
    from scoresde.cli import main

    written = []
    real = scoresde.files.atomic_write

    def spy(path, write, **kw):
        written.append(Path(path).name)
        return real(path, write, **kw)

    monkeypatch.setattr(scoresde.files, "atomic_write", spy)
    monkeypatch.setattr("scoresde.sampling_files.atomic_write", spy)
    argv = ["sample", "--solver", "ddim", "--steps", "2", "--n", "3", "--quiet", "--out", str(tmp_path / "g.png"),
            "--save", str(tmp_path / "x.pt"), "--image-dir", str(tmp_path / "imgs")]
    assert main(argv) == 0
    assert {"000000.png", "000001.png", "000002.png", "x.pt"} <= set(written)
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["000000.png", "000001.png", "000002.png"]


def test_a_killed_runs_temporaries_of_the_same_file_are_removed_and_others_kept(tmp_path):
    """save_samples removes what a killed earlier run of the same file left (its temporary file and the
    uint8 image spool of a .npz), and nothing else (found by review: they stayed, possibly GBs)."""
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale = [tmp_path / f".x.npz.tmp{dead}", tmp_path / f".x.npz.images.tmp{dead}"]
    kept = [tmp_path / f".other.npz.tmp{dead}", tmp_path / "x.npz.tmp", tmp_path / f".x.npz.tmp{os.getppid()}"]  # a live process
    for p in stale + kept:
        p.write_bytes(b"\0" * 100)
    model = AnalyticModel(Gaussian(torch.zeros(2)), VPSDE())
    scoresde.save_samples(tmp_path / "x.npz", n=4, batch_size=2, model=model, solver="ddim", steps=2, shape=(2,), seed=0)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert np.load(tmp_path / "x.npz")["x"].shape == (4, 2)
