"""Fuzzing forward SDEs, solvers.get and the time grids (the contract: fuzz_common.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import scoresde
import solvers
from scoresde import VPSDE

from .fuzz_common import (
    FUZZ, arg, contract, finite, kwargs, model2, refused, unwrap,
)


# --- forward SDEs, solvers, grids --------------------------------------------------------------------

TIMES = torch.tensor([0.0, 1e-5, 0.3, 0.9], dtype=torch.float64)
numbers = st.sampled_from([0.0, 1e-3, 0.1, 1.0, 20.0, 50.0, 1e3])


def _coefficients(sde) -> list[Tensor]:
    """alpha, sigma, lambda at T and at interior times, and the prior's log-density at 0: finite."""
    t = torch.cat([TIMES[1:] * sde.T, torch.tensor([sde.T], dtype=torch.float64)])
    return [sde.alpha(t), sde.sigma(t), sde.lambda_(t), sde.prior_logp(torch.zeros(1, 2, dtype=torch.float64))]


@FUZZ
@given(name=arg(st.sampled_from(["vp", "vp_cosine", "subvp", "ve", "ddpm", "flow"]), st.nothing(),
                refuse=["VP", "", None, 1, ["vp"]]),
       schedule=kwargs(beta_min=arg(numbers), beta_max=arg(numbers), sigma_min=arg(numbers), sigma_max=arg(numbers)))
def test_fuzz_make_sde(name, schedule):
    from scoresde.sde import make_sde

    kw, names = unwrap(schedule)
    names |= {"sde"} | ({"beta_min", "beta_max"} if {"beta_min", "beta_max"} & names else set())
    names |= {"sigma_min", "sigma_max"} if {"sigma_min", "sigma_max"} & names else set()
    sde = contract(lambda: make_sde(name.value, **kw), names, refuse=refused(name=name))
    if sde is not None:
        assert finite(_coefficients(sde))


@FUZZ
@given(cls=st.sampled_from(["VPSDE", "SubVPSDE", "VESDE", "DiscreteVPSDE"]),
       args=kwargs(beta_min=arg(numbers), beta_max=arg(numbers), schedule=arg(st.sampled_from(["linear", "cosine"])),
                   s=arg(st.sampled_from([0.008, 0.1])), sigma_min=arg(numbers), sigma_max=arg(numbers),
                   betas=arg(st.just(torch.linspace(1e-4, 0.02, 10, dtype=torch.float64)),
                             st.sampled_from([torch.zeros(3), torch.ones(3), torch.tensor([0.5]), torch.full((3,), float("nan")), "x"])),
                   num_steps=arg(st.integers(2, 20))))
def test_fuzz_sde_constructors(cls, args):
    kw, names = unwrap(args)

    def build():
        return getattr(scoresde, cls)(**kw)

    sde = contract(build, names | {"argument", "arguments", "keyword"})
    if sde is not None:
        assert finite(_coefficients(sde))


SOLVER_OPTIONS = dict(
    order=arg(st.integers(1, 3), refuse=[0, -1, 99, "x"]), eta=arg(st.sampled_from([0.0, 0.5, 1.0]), refuse=[-1.0, float("nan"), "x"]),
    snr=arg(st.sampled_from([0.16, 0.01]), refuse=[-0.1, float("nan"), "x"]),
    n_corrector=arg(st.integers(1, 2), refuse=[-1, 1.5, "x"]), denoise_final=arg(st.booleans(), refuse=["yes", 2]),
    lower_order_final=arg(st.booleans(), refuse=["yes", 2]),
    solver_type=arg(st.sampled_from(["multistep", "singlestep"]), refuse=["bogus", 3]),
    method=arg(st.sampled_from(["euler", "rk4", "dopri5"]), refuse=["bogus", 3]),
    rtol=arg(st.sampled_from([1e-3]), refuse=[-1.0, float("nan")]), atol=arg(st.sampled_from([1e-3]), refuse=[-1.0, float("nan")]),
    S_churn=arg(st.sampled_from([0.0, 1.0]), refuse=[-1.0, float("nan")]),
    prediction=arg(st.sampled_from(["x0", "eps"]), refuse=["bogus", 3]),
    step_size=arg(st.sampled_from(["per_sample", "batch"]), refuse=["bogus", 3]),
)
# solvers that run on a plain model (ddpm_learned needs a learned variance, which the analytic model lacks)
PLAIN_SOLVERS = sorted(n for n in solvers.names() if not getattr(solvers.registry._all()[n], "needs_learned_variance", False))


@FUZZ
@given(name=arg(st.sampled_from(PLAIN_SOLVERS), st.nothing(), refuse=["DDIM", "", None, 3, ["ddim"], {"ddim": 1}, "ddim "]),
       options=kwargs(**SOLVER_OPTIONS))
def test_fuzz_solvers_get(name, options):
    """solvers.get(name, **options), and the solver it builds runs 2 steps on a 2-D Gaussian."""
    kw, names = unwrap(options)
    names |= {"solver", "option(s)"}
    solver = contract(lambda: solvers.get(name.value, **kw), names, skip="all",  # options such as S_max=inf
                      refuse=refused(name=name, **options))
    if solver is None:
        return
    model = model2()
    ts = solvers.grids.uniform_t(model.sde, 2) if not solver.grid_ends_only else torch.tensor([1.0, 1e-3], dtype=torch.float64)
    x_T = torch.randn(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sol = solver(model, x_T, ts, generator=torch.Generator().manual_seed(1))
    assert finite(sol.x)


@FUZZ
@given(name=arg(st.sampled_from(sorted(solvers.grids.GRIDS)), st.nothing(), refuse=["UNIFORM_T", "", None, 0, ["karras"]]),
       sde=st.sampled_from(["vp", "subvp", "ve", "vp_cosine", "ddpm", "flow"]),
       steps=arg(st.integers(1, 50), refuse=[0, -1, 1.5, "x", 10**7]),
       options=kwargs(t_start=arg(st.sampled_from([0.5, 0.9]), refuse=[float("nan"), -1.0, "x"]),
                      t_end=arg(st.sampled_from([0.0, 1e-3, 0.1]), refuse=[float("nan"), -1.0, "x"]),
                      rho=arg(st.sampled_from([7.0, 1.0]), refuse=[0.0, -1.0, float("nan")])))
def test_fuzz_grids_make(name, sde, steps, options):
    from scoresde.sde import make_sde

    kw, names = unwrap(options)
    names |= {"grid"} if name.odd else set()
    names |= {"steps"} if steps.odd else set()
    if "rho" in names:  # rho is karras's own: other grids refuse the keyword
        names |= {"keyword"}
    ts = contract(lambda: solvers.grids.make(name.value, make_sde(sde), steps.value, **kw), names,
                  refuse=refused(name=name, steps=steps, **options))
    if ts is not None:
        assert ts.dtype == torch.float64 and ts.shape == (steps.value + 1,) and bool((ts[1:] < ts[:-1]).all())


def test_sde_names_and_discrete_schedules_name_bad_values():
    from scoresde.sde import make_sde

    with pytest.raises(ValueError, match=r"unknown sde \['vp'\]"):
        make_sde(["vp"])
    with pytest.raises(ValueError, match=r"betas must be a tensor or sequence of numbers"):
        scoresde.DiscreteVPSDE(betas="x")
    with pytest.raises(ValueError, match=r"alphas_cumprod must be a tensor or sequence of numbers"):
        scoresde.DiscreteVPSDE(alphas_cumprod=[[0.5], "x"])


def test_karras_is_computed_in_logs_and_refuses_grids_that_round_off():
    from scoresde import SubVPSDE

    ts = solvers.grids.karras(VPSDE(), 5, rho=1e300)  # the rho -> inf limit: uniform in log noise level (was flat)
    assert bool((ts[1:] < ts[:-1]).all())
    for kw in (dict(rho=1e-300), dict(rho=7.0, t_end=0.0, steps=1000)):  # NaN before; duplicate times before
        with pytest.raises(ValueError, match=r"grid 'karras' with steps=\d+, .* is not strictly decreasing in float64"):
            solvers.grids.karras(SubVPSDE(), **{"steps": 5, **kw})


@pytest.mark.parametrize("name", [["ddim"], {"ddim": 1}, None])
def test_solvers_get_names_an_unhashable_name(name):
    with pytest.raises(ValueError, match=r"unknown solver .*; choose one of \["):
        solvers.get(name)
