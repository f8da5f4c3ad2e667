"""solver="auto": scoresde.sample resolves it through solvers.recommend for every SDE scoresde ships, runs the
concrete choice and records it."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scoresde
import solvers
from scoresde import AnalyticModel, GaussianMixture, VPSDE
from scoresde.sampling_args import AUTO_STEPS
from scoresde.sde_names import SDE_NAMES, make_sde

F64 = torch.float64


def model(sde=None):
    gen = torch.Generator().manual_seed(0)
    data = GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64), torch.randn(2, 3, dtype=F64, generator=gen),
                           torch.tensor([0.2, 0.5], dtype=F64))
    return AnalyticModel(data, sde or VPSDE())


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(SDE_NAMES), nfe=st.integers(1, 1000))
def test_recommend_is_valid_for_every_shipped_sde_and_budget(name, nfe):
    sde = make_sde(name)
    rec = solvers.recommend(sde, nfe)
    solver = solvers.get(rec.solver, **rec.options)
    solver.check_supported(sde)
    ts = solvers.grids.make(rec.grid, sde, nfe)
    assert ts.shape == (nfe + 1,) and solver.nfe_per_step == 1 and not solver.stochastic


@pytest.mark.parametrize("name", SDE_NAMES)
def test_sample_auto_runs_the_recommended_configuration_and_records_it(name):
    m = model(make_sde(name))
    s = scoresde.sample(m, solver="auto", steps=10, n=4, shape=(3,), seed=3, dtype=F64)
    rec = solvers.recommend(m.sde, 10)
    assert s.nfe == 10 and torch.isfinite(s.x).all()
    assert s.settings["auto"] is True and s.settings["solver"] == rec.solver and s.settings["grid"] == rec.grid
    assert all(s.settings["options"][k] == v for k, v in rec.options.items()) and s.settings["steps"] == 10
    same = scoresde.sample(m, solver=rec.solver, steps=10, grid=rec.grid, n=4, shape=(3,), seed=3, dtype=F64,
                           **rec.options)
    assert torch.equal(s.x, same.x) and "auto" not in same.settings


def test_auto_default_steps_and_chunks():
    m = model()
    s = scoresde.sample(m, solver="auto", n=5, shape=(3,), seed=0, dtype=F64, batch_size=2)
    assert s.settings["steps"] == AUTO_STEPS and s.nfe == 3 * AUTO_STEPS and s.settings["auto"] is True
    assert s.settings["solver"] == solvers.recommend(m.sde, AUTO_STEPS).solver


def test_auto_refuses_options_and_grid():
    m = model()
    with pytest.raises(ValueError, match="chooses the solver's options itself"):
        scoresde.sample(m, solver="auto", order=2, n=2, shape=(3,))
    with pytest.raises(ValueError, match="chooses the grid itself"):
        scoresde.sample(m, solver="auto", grid="uniform_t", n=2, shape=(3,))
    with pytest.raises(ValueError, match="chooses the grid itself"):
        scoresde.sample(m, solver="auto", grid=torch.tensor([1.0, 0.5, 0.001], dtype=F64), n=2, shape=(3,))
    with pytest.raises(ValueError, match="steps must be an integer"):
        scoresde.sample(m, solver="auto", steps=0, n=2, shape=(3,))
