"""Bits/dim draws per sample (issue 23): image i's dequantization and probes come from a generator
seeded seed + i, so its bits/dim does not depend on the batch it is computed in (fixed-grid methods)."""

import pytest
import torch

import scoresde
import scoresde.likelihood
from scoresde import data
from scoresde.cli import main
from scoresde.pretrained import default_model
from scoresde.sampling_args import MAX_SEED

# float32: a batch of 8 and one of 1 run the network's kernels in other blockings (a few ulps of 1.6)
TOL = dict(rtol=1e-6, atol=1e-6)
CHEAP = dict(levels=17, method="dpm_solver", steps=4)


@pytest.fixture(scope="module")
def digits8():
    test = data.digits("test")
    return default_model("vp"), data.to_model_input(test.images[:8], test.levels, dtype=torch.float32)


def _batched(model, x, batch_size: int, seed: int) -> torch.Tensor:
    return torch.cat([scoresde.bits_per_dim(model, x[i:i + batch_size], seed=seed + i, **CHEAP).bpd
                      for i in range(0, x.shape[0], batch_size)])


def test_api_bits_per_image_do_not_depend_on_the_batch(digits8):
    model, x = digits8
    whole = _batched(model, x, 8, seed=5)
    for batch_size in (3, 1):
        torch.testing.assert_close(_batched(model, x, batch_size, seed=5), whole, **TOL)
    # a list of per-sample seeds is the int seed spelled out; another seed draws other noise
    torch.testing.assert_close(scoresde.bits_per_dim(model, x, seed=list(range(5, 13)), **CHEAP).bpd, whole,
                               rtol=0, atol=0)
    assert float((scoresde.bits_per_dim(model, x, seed=6, **CHEAP).bpd - whole).abs().max()) > 1e-3


def test_api_seed_per_sample_with_repeats_and_log_likelihood(digits8):
    model, x = digits8
    both = scoresde.bits_per_dim(model, x[:4], seed=0, repeats=2, **CHEAP).bpd
    alone = scoresde.bits_per_dim(model, x[2:3], seed=2, repeats=2, **CHEAP).bpd
    torch.testing.assert_close(alone, both[2:3], **TOL)
    cont = dict(method="dpm_solver", steps=4)
    ll = scoresde.log_likelihood(model, x[:3], seed=[7, 8, 9], **cont).logp
    torch.testing.assert_close(scoresde.log_likelihood(model, x[1:2], seed=8, **cont).logp, ll[1:2], **TOL)


def test_generator_still_works_as_before(digits8):
    model, x = digits8
    a = scoresde.bits_per_dim(model, x[:3], generator=torch.Generator().manual_seed(0), **CHEAP).bpd
    b = scoresde.bits_per_dim(model, x[:3], generator=torch.Generator().manual_seed(0), **CHEAP).bpd
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    gens = [torch.Generator().manual_seed(s) for s in (4, 5, 6)]
    torch.testing.assert_close(scoresde.bits_per_dim(model, x[:3], generator=gens, **CHEAP).bpd,
                               scoresde.bits_per_dim(model, x[:3], seed=4, **CHEAP).bpd, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=0, generator=torch.Generator()), "give seed or generator, not both"),
    (dict(seed=[0, 1]), "one seed per sample, got 2 for 3 samples"),
    (dict(seed=MAX_SEED - 1), "past 2\\*\\*63 - 1; choose seed <= "),
    (dict(seed=-1), "seed must be an int in \\[0, 2\\*\\*63 - 1\\]"),
    (dict(seed=1.5), "seed must be an int"),
])
def test_bad_seeds_raise(digits8, kwargs, match):
    model, x = digits8
    with pytest.raises(ValueError, match=match):
        scoresde.bits_per_dim(model, x[:3], **CHEAP, **kwargs)


def test_cli_bits_per_image_do_not_depend_on_batch_size(monkeypatch, capsys):
    """`scoresde bpd --seed S --batch-size B`: every image's bits/dim, read from the calls the CLI makes."""
    calls: list[torch.Tensor] = []
    real = scoresde.likelihood.bits_per_dim

    def recording(*args, **kwargs):
        res = real(*args, **kwargs)
        calls.append(res.bpd)
        return res

    monkeypatch.setattr(scoresde.likelihood, "bits_per_dim", recording)
    per_image, printed = {}, {}
    for batch_size in (8, 3, 1):
        calls.clear()
        argv = ["bpd", "--n", "8", "--method", "dpm_solver", "--steps", "4", "--seed", "3",
                "--batch-size", str(batch_size), "--quiet"]
        assert main(argv) == 0
        per_image[batch_size] = torch.cat(calls)
        printed[batch_size] = capsys.readouterr().out.split(" ± ")[0]
    assert per_image[8].shape == (8,)
    for batch_size in (3, 1):
        torch.testing.assert_close(per_image[batch_size], per_image[8], **TOL)
    assert printed[8].startswith("bits/dim ")


def test_cli_seed_past_the_last_per_image_seed_is_a_usage_error(capsys):
    argv = ["bpd", "--n", "8", "--method", "dpm_solver", "--steps", "4", "--seed", str(MAX_SEED - 3), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "gives the 8 images the seeds" in err and f"choose --seed <= {MAX_SEED - 7}" in err
