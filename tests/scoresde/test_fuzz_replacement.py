"""Fuzzing inpaint and colorize (conditioning by replacement; the contract: fuzz_common.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoresde
import solvers
from scoresde import VPSDE, AnalyticModel, Gaussian

from .fuzz_common import (
    FUZZ, arg, contract, kwargs, model2, refused, unwrap, odd_x, generators,
)


# --- conditioning by replacement -------------------------------------------------------------------

SOLVER_NAMES = solvers.names()  # every registered solver, new ones included
REPLACEMENT_OPTIONS = dict(
    solver=arg(st.sampled_from(SOLVER_NAMES), refuse=["nope", "DDIM", 3]),
    steps=arg(st.integers(1, 4), refuse=[0, -1, 1.5, "x"]),
    grid=arg(st.sampled_from(sorted(solvers.grids.GRIDS)), refuse=["cubic", 3]),
    seed=arg(st.integers(0, 2**63 - 1), refuse=[-1, 2**64, 1.5, "x"]),
    generator=arg(generators, refuse=[5, "x"]),
    callback=arg(st.just(lambda step: None), refuse=[3, "f"]),
    noise=arg(st.sampled_from(["fresh", "fixed"]), refuse=["bogus", 3]),
)


def _replacement_call(func, first, drawn, model):
    kw, names = unwrap(drawn)
    if "seed" in kw and "generator" in kw:
        names |= {"seed", "generator"}
    kw.setdefault("steps", 2)
    return lambda: func(model, first, **kw), names


@FUZZ
@given(
    known=arg(st.builds(lambda b: torch.linspace(-1, 1, 2 * b, dtype=torch.float64).reshape(b, 2), st.integers(1, 3)),
              odd_x),
    mask=arg(st.sampled_from([torch.tensor([True, False]), torch.tensor([[False, True]])]), st.nothing(),
             refuse=[torch.tensor([1, 0]), torch.tensor([True, False, True]), None, [True, False]]),
    options=kwargs(x_T=arg(st.just(None), odd_x),
                   basis=arg(st.sampled_from([None, torch.eye(2)]), st.nothing(), refuse=[torch.ones(2, 2), torch.eye(3), "x"]),
                   **REPLACEMENT_OPTIONS),
)
def test_fuzz_inpaint(known, mask, options):
    call, names = _replacement_call(lambda m, k, **kw: scoresde.inpaint(m, k, mask.value, **kw), known.value, options,
                                    model2())
    names |= {n for n, a in (("known", known), ("mask", mask)) if a.odd}
    if names & {"x_T", "basis"}:  # their shapes are checked against known's
        names |= {"known"}
    if known.odd:  # a shape the model does not take: the model's own check names its input x
        names |= {"x"}
    contract(call, names, refuse=refused(mask=mask, **options))


def _model_rgb() -> AnalyticModel:
    return AnalyticModel(Gaussian(torch.zeros(3, 2, 2, dtype=torch.float64), 0.5), VPSDE())


@FUZZ
@given(
    gray=arg(st.builds(lambda b: torch.zeros(b, 1, 2, 2, dtype=torch.float64), st.integers(1, 2)), st.nothing(),
             refuse=[torch.zeros(1, 3, 2, 2), torch.zeros(1, 2), torch.zeros(2, 1, 2, 2, dtype=torch.long),
                     torch.full((1, 1, 2, 2), float("nan")), torch.zeros(1, 1, 3, 3), None, "gray", 0.5]),
    options=kwargs(basis=arg(st.nothing()), **REPLACEMENT_OPTIONS),
)
def test_fuzz_colorize(gray, options):
    call, names = _replacement_call(scoresde.colorize, gray.value, options, _model_rgb())
    contract(call, names | ({"gray", "x"} if gray.odd else set()), refuse=refused(gray=gray, **options))  # x: the model's own shape check


def test_inpaint_and_colorize_check_their_inputs():
    model, known, mask = model2(), torch.zeros(1, 2, dtype=torch.float64), torch.tensor([True, False])
    nan_known = torch.tensor([[float("nan"), 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="known contains NaN or infinite values where mask is True"):
        scoresde.inpaint(model, nan_known, mask, steps=2)
    res = scoresde.inpaint(model, nan_known, mask.flip(0), solver="ddim", steps=2, seed=0)  # NaN where unknown
    assert bool(torch.isfinite(res.x).all())
    for kw, match in [(dict(basis="x"), "basis must be a"), (dict(x_T="x"), "x_T must have the shape of known"),
                      (dict(x_T=torch.full((1, 2), float("nan"))), "x_T contains NaN"),
                      (dict(callback=True), "callback must be None or a function"),
                      (dict(seed=[1, 2]), "seed: a list needs one seed per sample")]:
        with pytest.raises(ValueError, match=match):
            scoresde.inpaint(model, known, mask, steps=2, **kw)
    with pytest.raises(ValueError, match="gray contains NaN"):
        scoresde.colorize(_model_rgb(), torch.full((1, 1, 2, 2), float("nan"), dtype=torch.float64), steps=2)


def test_analytic_model_stays_finite_where_float32_squares_overflow():
    x = torch.tensor([[1e30, 0.0]])
    t = torch.tensor([0.5])
    for f in (model2().eps, model2().x0, model2().score):
        assert bool(torch.isfinite(f(x, t)).all()) and f(x, t).dtype == torch.float32
