"""UniPC (Zhao et al. 2023): orders, the corrector's extra order, identities, NFE and options.

Ground truth and conventions as in tests/solvers/test_dpm_solver.py (4-d Gaussian under VP and VE,
T -> 1e-3, uniform-lambda grids of 32, 64, 128 steps (64..256 for UniPC-3), least-squares slope
>= order - 0.3); the other processes: tests/scoresde/test_solvers_on_every_sde.py. Measured slopes
(24..192 steps, vp): UniPC-1/2/3 with the corrector 2.14 / 3.09 / 3.66 (bh1), 1.96 / 2.91 / 3.66
(bh2); UniP-p alone 0.98 / 1.97 / 3.99.
"""

from __future__ import annotations

import pytest
import torch

import solvers
from solvers import grids
from solvers.unipc import unipc_coefficients, unipc_h_phis

from .gaussian import LinearVP, make_sde
from .test_dpm_solver import KINDS, CallCounter, fitted_order, gaussian_model, start_states

CASES = [
    # (options, required slope): the corrector raises the order by one (capped at 3 by the
    # first, order-1 step of the ramp-up)
    ({"order": 1, "variant": "bh1"}, 2),
    ({"order": 1, "variant": "bh2"}, 2),
    ({"order": 2, "variant": "bh1"}, 3),
    ({"order": 2, "variant": "bh2"}, 3),
    ({"order": 3, "variant": "bh1"}, 3),
    ({"order": 3, "variant": "bh2"}, 3),
    ({"order": 3, "prediction": "eps"}, 3),
    ({"order": 1, "corrector": False}, 1),
    ({"order": 2, "corrector": False}, 2),
    ({"order": 3, "corrector": False}, 3),
    ({"order": 2, "final_corrector": True}, 3),
]


def order_steps(options: dict) -> tuple[int, ...]:
    """UniPC-3 with the corrector: the ramp-up's O(h^3) error and the O(h^4) rest cancel near 32
    steps on sub-VP and flow (the error changes sign), so its slope is fitted further out."""
    if options.get("order") == 3 and options.get("corrector", True):
        return (64, 128, 256)
    return (32, 64, 128)


def check_converges_at_declared_order(options, required, model):
    sampler = solvers.get("unipc", **options)
    assert required >= sampler.order
    order, errs = fitted_order(sampler, model, start_states(model.sde), order_steps(options))
    assert order >= required - 0.3, f"slope {order:.2f}, required {required}; errors {errs}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options,required", CASES, ids=[str(o) for o, _ in CASES])
def test_converges_at_declared_order(options, required, kind):
    check_converges_at_declared_order(options, required, gaussian_model(make_sde(kind)))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_predictor_alone_is_dpm_solver_pp_multistep(order):
    """UniP-p with data prediction is DPM-Solver++(pM): both integrate the same interpolating polynomial."""
    sde = LinearVP()
    model, x = gaussian_model(sde), start_states(sde)
    ts = grids.uniform_t(sde, 12, t_end=1e-3)
    unip = solvers.get("unipc", order=order, corrector=False)(model, x, ts).x
    pp = solvers.get("dpm_solver++", order=order, solver_type="multistep")(model, x, ts).x
    torch.testing.assert_close(unip, pp, rtol=1e-9, atol=1e-9)


def test_coefficients_solve_the_order_conditions():
    """R a = g with R[k, m] = r_m^k, g_k = (k+1)! h_phi_{k+2} / B(h); B(h) cancels in B(h) a."""
    hh = torch.tensor([-0.7], dtype=torch.float64)
    rks = torch.tensor([-1.3, -0.6, 1.0], dtype=torch.float64)
    for B_h in (hh, torch.expm1(hh)):
        a = unipc_coefficients(rks, hh, B_h)
        h_phi = unipc_h_phis(hh, 4)
        for k, fact in enumerate((1, 2, 6)):
            torch.testing.assert_close((a * rks**k).sum().reshape(1), fact * h_phi[k + 1] / B_h)
    a1 = unipc_coefficients(rks, hh, hh) * hh
    a2 = unipc_coefficients(rks, hh, torch.expm1(hh)) * torch.expm1(hh)
    torch.testing.assert_close(a1, a2)
    # h_phi_k = hh phi_k(hh) with phi_1(z) = (e^z - 1)/z, phi_2(z) = (e^z - 1 - z)/z^2
    h_phi = unipc_h_phis(hh, 2)
    torch.testing.assert_close(h_phi[1], (torch.exp(hh) - 1 - hh) / hh)


@pytest.mark.parametrize("steps", [1, 2, 3, 9, 10, 11])
@pytest.mark.parametrize(
    "options,extra", [({}, 0), ({"final_corrector": True}, 1), ({"corrector": False}, 0), ({"denoise_final": True}, 1)]
)
def test_one_evaluation_per_step(options, extra, steps):
    sde = LinearVP()
    counter = CallCounter(gaussian_model(sde))
    sol = solvers.get("unipc", **options)(counter, start_states(sde), grids.uniform_lambda(sde, steps))
    assert sol.nfe == counter.calls == steps + extra


FEW_STEPS_CASES = [{}, {"order": 2, "variant": "bh1"}, {"prediction": "eps"}, {"lower_order_final": False}]


def check_finite_for_few_steps(options, model):
    sde = model.sde
    x = start_states(sde, n=4)
    sampler = solvers.get("unipc", **options)
    for grid, all_steps in (("uniform_lambda", range(1, 11)), ("uniform_t", (1, 2, 5, 10))):
        for steps in all_steps:
            out = sampler(model, x, grids.make(grid, sde, steps)).x
            assert torch.isfinite(out).all(), f"{grid} with {steps} steps on {sde!r}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", FEW_STEPS_CASES)
def test_finite_for_few_steps(options, kind):
    check_finite_for_few_steps(options, gaussian_model(make_sde(kind)))


def test_callback_and_float32():
    sde = make_sde("vp")
    model = gaussian_model(sde)
    x = start_states(sde).float()
    seen = []
    sol = solvers.get("unipc")(model, x, grids.uniform_lambda(sde, 10), callback=seen.append)
    assert sol.x.dtype == torch.float32
    assert [s.i for s in seen] == list(range(10))
    assert [s.nfe for s in seen] == [i + 2 for i in range(9)] + [10]
    torch.testing.assert_close(seen[-1].x, sol.x)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"order": 4}, r"order must be one of \[1, 2, 3\]"),
        ({"variant": "bh3"}, r"variant must be one of \['bh1', 'bh2'\]"),
        ({"prediction": "v"}, r"prediction must be one of \['x0', 'eps'\]"),
        ({"corrector": "yes"}, "corrector must be True or False"),
        ({"corrector": False, "final_corrector": True}, "final_corrector=True needs corrector=True"),
        ({"steps": 10}, "valid options"),
    ],
)
def test_bad_options_name_the_valid_choices(options, match):
    with pytest.raises(ValueError, match=match):
        solvers.get("unipc", **options)


def test_options_round_trip_and_metadata():
    sampler = solvers.get("unipc", order=2, variant="bh1")
    assert solvers.get("unipc", **sampler.options()).options() == sampler.options()
    assert sampler.nfe_per_step == 1 and not sampler.stochastic and sampler.order == 2
    assert "unipc" in solvers.available()
