"""scoresde.sample: names, seeds, batch independence, settings, errors."""

import pytest
import torch

import scoresde
import solvers
from scoresde import AnalyticModel, GaussianMixture, VPSDE

F64 = torch.float64


def model(sde=None):
    gen = torch.Generator().manual_seed(0)
    data = GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64), torch.randn(2, 3, dtype=F64, generator=gen), torch.tensor([0.2, 0.5], dtype=F64))
    return AnalyticModel(data, sde or VPSDE())


def test_same_seed_same_samples_and_settings():
    m = model()
    a = scoresde.sample(m, solver="dpm_solver++", steps=10, n=4, shape=(3,), seed=7, dtype=F64)
    b = scoresde.sample(m, solver="dpm_solver++", steps=10, n=4, shape=(3,), seed=7, dtype=F64)
    c = scoresde.sample(m, solver="dpm_solver++", steps=10, n=4, shape=(3,), seed=8, dtype=F64)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert a.x.shape == (4, 3) and a.x.dtype == F64 and a.nfe == 10
    assert a.settings["solver"] == "dpm_solver++" and a.settings["steps"] == 10 and a.settings["seed"] == 7
    assert a.settings["sde"] == {"type": "VPSDE", "beta_min": 0.1, "beta_max": 20.0, "schedule": "linear"}
    assert a.ts.shape == (11,) and a.ts[0] == 1.0 and abs(float(a.ts[-1]) - 1e-3) < 1e-15


def test_per_sample_seeds_make_samples_batch_independent():
    m = model()
    solver = next(name for name, f in solvers.registry._all().items() if f.stochastic) if any(
        f.stochastic for f in solvers.registry._all().values()) else "dpm_solver++"
    batch = scoresde.sample(m, solver=solver, steps=8, n=3, shape=(3,), seed=[11, 12, 13], dtype=F64)
    alone = scoresde.sample(m, solver=solver, steps=8, n=1, shape=(3,), seed=[12], dtype=F64)
    torch.testing.assert_close(batch.x[1:2], alone.x, rtol=0, atol=1e-12)


def test_callback_and_x_T():
    m = model()
    seen = []
    x_T = torch.randn(2, 3, dtype=F64)
    res = scoresde.sample(m, solver="dpm_solver++", steps=5, x_T=x_T, callback=lambda s: seen.append(s.i))
    assert seen == [0, 1, 2, 3, 4] and res.x.shape == (2, 3)


def test_built_sampler_and_grid():
    m = model()
    res = scoresde.sample(m, solver=solvers.get("dpm_solver++", order=2), steps=6, grid="uniform_t", n=2, shape=(3,), seed=0, dtype=F64)
    torch.testing.assert_close(res.ts, torch.linspace(1.0, 1e-3, 7, dtype=F64))
    assert res.settings["grid"] == "uniform_t"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(solver="nope"), r"unknown solver 'nope'; choose one of \["),
        (dict(solver="dpm_solver++", bogus=1), r"unknown option\(s\) \['bogus'\] for solver 'dpm_solver\+\+'"),
        (dict(solver="dpm_solver++", grid="cubic"), r"unknown grid 'cubic'; choose one of"),
        (dict(solver="dpm_solver++", steps=0), "steps must be an integer >= 1"),
        (dict(solver="dpm_solver++", sde="ve"), "differs from the model's"),
        (dict(solver="dpm_solver++", sde="vq"), r"unknown sde 'vq'; choose one of \['ddpm', 'flow', 'subvp', 've', 'vp', 'vp_cosine'\]"),
        (dict(solver="dpm_solver++", seed=1, generator=torch.Generator()), "give seed or generator, not both"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        scoresde.sample(model(), n=2, shape=(3,), **kwargs)


def test_shape_arguments_required():
    with pytest.raises(ValueError, match="give x_T, or shape"):
        scoresde.sample(model(), solver="dpm_solver++", n=2)
    with pytest.raises(ValueError, match="give x_T or"):
        scoresde.sample(model(), solver="dpm_solver++", n=2, shape=(3,), x_T=torch.zeros(2, 3))


def test_without_a_solver_a_plain_model_is_sampled_with_pc():
    """model_sampler: a model that is neither a consistency model nor a distilled student's file takes "pc" on its
    default grid (the pd, reflow and consistency defaults are tested with their files in test_pd_trainer.py,
    test_reflow_trainer.py and test_consistency_trainer.py)."""
    from scoresde.sampling import model_sampler

    m = model()
    assert model_sampler(m) == ("pc", None, None)
    own = scoresde.sample(m, steps=6, n=2, shape=(3,), seed=3, dtype=F64)
    pc = scoresde.sample(m, solver="pc", steps=6, n=2, shape=(3,), seed=3, dtype=F64)
    assert own.settings["solver"] == "pc" and own.nfe == pc.nfe and torch.equal(own.x, pc.x)
