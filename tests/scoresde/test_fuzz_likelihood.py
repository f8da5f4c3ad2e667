"""Fuzzing log_likelihood, bits_per_dim and vlb_bits_per_dim (the contract: fuzz_common.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoresde
import solvers
from scoresde import VPSDE

from .fuzz_common import (
    FUZZ, arg, contract, kwargs, model2, odd_count, refused, unwrap, _grid_x, valid_x, odd_x,
)


# --- likelihoods -------------------------------------------------------------------------------------

LIKELIHOOD_OPTIONS = dict(
    method=arg(st.sampled_from(["dopri5", "rk4", "euler", "dpm_solver", "dpm_solver_4m", "dpm_solver_6m", "bosh3"]),
               refuse=["nope", "DOPRI5", 3, ["euler"]]),
    rtol=arg(st.sampled_from([1e-3, 1e-2]), refuse=[-1.0, float("nan"), "x"]),
    atol=arg(st.sampled_from([1e-3, 1e-2]), refuse=[-1.0, float("nan"), "x"]),
    steps=arg(st.integers(2, 6), refuse=[0, -1, 1.5, "x"]),
    grid=arg(st.sampled_from(sorted(solvers.grids.GRIDS)), refuse=["cubic", 3]),
    variable=arg(st.sampled_from([None, "t", "lambda"]), refuse=["x", 3]),
    t_eps=arg(st.sampled_from([None, 1e-3, 0.5]), refuse=[-1.0, float("nan"), "x"]),
    divergence=arg(st.sampled_from(["hutchinson", "exact", "analytic"]), refuse=["bogus", 3]),
    probe=arg(st.sampled_from(["rademacher", "gaussian"]), refuse=["bogus", 3]),
    n_probes=arg(st.integers(1, 3), refuse=[0, -1, 1.5, "x"]),
    y=arg(st.none()),
    generator=arg(st.builds(lambda s: torch.Generator().manual_seed(s), st.integers(0, 3)), refuse=[5, "x"]),
)


def _likelihood_call(func, x, options):
    kw, names = unwrap(options)
    given_x = x.odd
    if "method" not in kw or kw["method"] in ("dopri5", "bosh3"):  # keep the adaptive solves short
        kw.setdefault("rtol", 1e-3)
        kw.setdefault("atol", 1e-3)
    refuse = refused(**options)
    return (lambda: func(model2(), x.value, **kw)), names | ({"x"} if given_x else set()), refuse


@FUZZ
@given(x=arg(valid_x, odd_x), options=kwargs(**LIKELIHOOD_OPTIONS))
def test_fuzz_log_likelihood(x, options):
    call, names, refuse = _likelihood_call(scoresde.log_likelihood, x, options)
    contract(call, names, skip=("logp_se", "bpd_se"), refuse=refuse)


@FUZZ
@given(x=arg(valid_x, odd_x), options=kwargs(levels=arg(st.sampled_from([None, 2, 17, 256]), refuse=[1, 0, "x"]),
                                             repeats=arg(st.integers(1, 2), odd_count, refuse=[0, -1, 1.5]),
                                             **LIKELIHOOD_OPTIONS))  # 2**31 repeats: valid, and endless
def test_fuzz_bits_per_dim(x, options):
    call, names, refuse = _likelihood_call(scoresde.bits_per_dim, x, options)
    contract(call, names, skip=("logp_se", "bpd_se"), refuse=refuse)


@FUZZ
@given(x=arg(valid_x, odd_x), options=kwargs(
    levels=arg(st.sampled_from([2, 17, 256]), refuse=[1, 0, "x"]), steps=arg(st.integers(1, 4), refuse=[0, -1, 1.5]),
    variance=arg(st.sampled_from(["small", "large", "learned"]), refuse=["bogus", 3]),
    variance_head=arg(st.just(lambda x, t: torch.full_like(x, 0.5)), refuse=[5, "x"]),
    generator=arg(st.builds(lambda s: torch.Generator().manual_seed(s), st.integers(0, 3)), refuse=[5, "x"]),
))
def test_fuzz_vlb_bits_per_dim(x, options):
    kw, names = unwrap(options)
    kw.setdefault("steps", 3)  # a continuous-time SDE needs steps
    names = names | {"steps"} | ({"x"} if x.odd else set())
    contract(lambda: scoresde.vlb_bits_per_dim(model2(), x.value, **kw), names, refuse=refused(**options))


# --- regressions: what the fuzz found ---------------------------------------------------------------


@pytest.mark.parametrize("generator", [True, "x", (), 5, [torch.Generator(), None]])
def test_noise_refuses_a_generator_that_is_not_one(generator):
    with pytest.raises(ValueError, match=r"generator( must be None, a torch.Generator or a list|: got 0 generators)"):
        scoresde.log_likelihood(model2(), _grid_x(1, torch.float64), method="euler", steps=2, generator=generator)
    with pytest.raises(ValueError, match="generator"):
        scoresde.vlb_bits_per_dim(model2(), _grid_x(1, torch.float64), steps=2, generator=generator)


def test_likelihood_bounds_probes_and_steps():
    x = _grid_x(1, torch.float64)
    with pytest.raises(ValueError, match=r"n_probes must be an integer in \[1, 1024\], got 2147483648"):
        scoresde.log_likelihood(model2(), x, n_probes=2**31)
    with pytest.raises(ValueError, match=r"needs steps, an integer in \[1, 1000000\], got 2147483648"):
        scoresde.log_likelihood(model2(), x, method="euler", steps=2**31)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 1000000\]"):
        solvers.grids.uniform_t(VPSDE(), 2**31)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 1000000\]"):
        scoresde.vlb_bits_per_dim(model2(), x, steps=2**31)


@pytest.mark.parametrize("kw, match", [
    (dict(grid="cubic"), r"grid applies to fixed-grid methods .*'dopri5' is adaptive .*got grid='cubic'"),
    (dict(grid="karras"), r"grid applies to fixed-grid methods .*got grid='karras'"),
    (dict(method="euler", steps=2, rtol=-1.0), r"rtol applies to the adaptive methods .*'euler' takes steps"),
    (dict(method="dpm_solver_6m", steps=4, atol=1e-3), r"atol applies to the adaptive methods .*'dpm_solver_6m'"),
])
def test_likelihood_refuses_options_its_method_does_not_use(kw, match):
    """rtol/atol with a fixed-grid method and grid with an adaptive one were silently ignored (found by review)."""
    with pytest.raises(ValueError, match=match):
        scoresde.log_likelihood(model2(), _grid_x(1, torch.float64), **kw)


def test_likelihood_refuses_x_whose_square_overflows_its_dtype():
    with pytest.raises(ValueError, match=r"x is too large for torch.float32: the sum of its squares overflows"):
        scoresde.log_likelihood(model2(), torch.full((1, 2), 1e30), rtol=1e-3, atol=1e-3)
    res = scoresde.log_likelihood(model2(), torch.full((1, 2), 1e30, dtype=torch.float64), rtol=1e-3, atol=1e-3)
    assert bool(torch.isfinite(res.logp).all())


@pytest.mark.parametrize("x, match", [
    ([[0.0, 0.0]], "x must be a float tensor"), (torch.zeros(2, 2, dtype=torch.long), "x must be a float tensor"),
    (torch.zeros(0, 2), "x must be a float tensor"), (torch.zeros(1, 2, dtype=torch.complex64), "x must be a float tensor"),
])
def test_vlb_checks_x(x, match):
    with pytest.raises(ValueError, match=match):
        scoresde.vlb_bits_per_dim(model2(), x, steps=2)
    with pytest.raises(ValueError, match="variance_head must be None or a function"):
        scoresde.vlb_bits_per_dim(model2(), _grid_x(1, torch.float64), steps=2, variance="learned", variance_head=True)
