"""Noise-form multistep solvers: DPM-Solver-1/2M/3M (`dpm_solver_multistep`), iPNDM (`ipndm`) and DEIS tAB (`deis`).

Ground truth and conventions as in tests/solvers/test_dpm_solver.py: a 4-d Gaussian under VP and VE,
8 start states, T -> 1e-3 on uniform-lambda grids, least-squares slope of log RMS error against
log N, required >= order - 0.3 (sub-VP and flow: tests/scoresde/test_solvers_on_every_sde.py).
Measured slopes on the step counts of CASES (vp / ve / sub-VP / flow):
dpm_solver_multistep 1: 0.96 / 0.96 / 0.94 / 0.94, 2: 1.95 / 1.96 / 1.91 / 1.92, 3: 3.75 / 3.76 / 3.58 / 3.59;
ipndm 1, 2: as dpm_solver_multistep 1, 2 (the same method on uniform-lambda grids),
3: 1.93 / 1.94 / 1.85 / 1.86, 4: 2.05 / 2.04 / 2.07 / 2.07;
deis 1: 0.96 / 0.96 / 0.94 / 0.94, 2: 1.90 / 1.97 / 1.88 / 1.89, 3: 2.82 / 3.79 / 2.84 / 2.95.

iPNDM's fixed Adams–Bashforth weights assume equal steps in the noise level sigma / alpha, the
variable of its DDIM transfer: on other grids orders 3 and 4 converge at order 2 (solvers/ipndm.py),
which is what is asserted here. On grids uniform in sigma / alpha (karras, rho = 1) they approach
their order only at many steps (vp, 512 -> 1024 steps: 3.17 for order 3, 3.71 for order 4).
"""

from __future__ import annotations

import pytest
import torch

import solvers
from solvers import grids
from solvers.coefficients import phis
from solvers.deis import deis_coefficients, deis_grid_coefficients

from .gaussian import ExponentialVE, LinearVP, make_sde
from .test_dpm_solver import KINDS, ORDER_STEPS, CallCounter, fitted_order, gaussian_model, start_states

F64 = torch.float64
NAMES = ("dpm_solver_multistep", "ipndm", "deis")
LATER_STEPS = (32, 64, 128)

# (name, options, required slope, step counts)
CASES = [
    ("dpm_solver_multistep", {"order": 1}, 1, ORDER_STEPS),
    ("dpm_solver_multistep", {"order": 2}, 2, ORDER_STEPS),
    ("dpm_solver_multistep", {"order": 3}, 3, ORDER_STEPS),
    ("ipndm", {"order": 1}, 1, ORDER_STEPS),
    ("ipndm", {"order": 2}, 2, ORDER_STEPS),
    # fixed weights on a grid not uniform in sigma / alpha: order 2, reached beyond ~30 steps on sub-VP and flow
    ("ipndm", {"order": 3}, 2, LATER_STEPS),
    ("ipndm", {"order": 4}, 2, LATER_STEPS),
    ("deis", {"order": 1}, 1, ORDER_STEPS),
    ("deis", {"order": 2}, 2, LATER_STEPS),  # a polynomial in t: pre-asymptotic below ~30 steps except on ve
    ("deis", {"order": 3}, 3, LATER_STEPS),
]
CASE_IDS = [f"{n}-{o}" for n, o, _, _ in CASES]


def check_converges_at_order(name, options, required, steps, model):
    sampler = solvers.get(name, **options)
    assert required <= sampler.order
    order, errs = fitted_order(sampler, model, start_states(model.sde), steps)
    assert order >= required - 0.3, f"slope {order:.2f}, required {required}; errors {errs}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,options,required,steps", CASES, ids=CASE_IDS)
def test_converges_at_order(name, options, required, steps, kind):
    check_converges_at_order(name, options, required, steps, gaussian_model(make_sde(kind)))


def check_first_order_is_ddim(model):
    """Order 1 of each is DDIM (eta = 0): dpm_solver_multistep and ipndm through the same update functions
    (bitwise), deis through its quadrature weight alpha_t (nu_t - nu_s) (to round-off)."""
    sde = model.sde
    x = start_states(sde)
    ts = grids.uniform_t(sde, 7, t_end=1e-3)
    ddim = solvers.get("ddim")(model, x, ts).x
    assert torch.equal(solvers.get("ipndm", order=1)(model, x, ts).x, ddim)
    dpm_1 = solvers.get("dpm_solver", order=1)(model, x, ts).x
    assert torch.equal(solvers.get("dpm_solver_multistep", order=1)(model, x, ts).x, dpm_1)
    for name in NAMES:
        torch.testing.assert_close(solvers.get(name, order=1)(model, x, ts).x, ddim, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_first_order_is_ddim(kind):
    check_first_order_is_ddim(gaussian_model(make_sde(kind)))


@pytest.mark.parametrize("kind", KINDS)
def test_ipndm_2_is_dpm_solver_2m_on_uniform_lambda(kind):
    """On a grid uniform in lambda (r0 = 1) DPM-Solver-2M's combination (1 + 1/(2 r0), -1/(2 r0)) is
    Adams–Bashforth's (3/2, -1/2), and both move x with the exponential Euler (DDIM) step."""
    model = gaussian_model(make_sde(kind))
    x, ts = start_states(model.sde), grids.uniform_lambda(model.sde, 12)
    torch.testing.assert_close(
        solvers.get("ipndm", order=2)(model, x, ts).x,
        solvers.get("dpm_solver_multistep", order=2)(model, x, ts).x,
        rtol=1e-10,
        atol=1e-10,
    )


def test_dpm_solver_3m_noise_form_agrees_with_the_data_form():
    """DPM-Solver-3M with eps and DPM-Solver++(3M) with x0 solve the same ODE: on 64 steps they agree to
    the size of their errors (about 1e-5)."""
    model = gaussian_model(LinearVP())
    x, ts = start_states(model.sde), grids.uniform_lambda(model.sde, 64)
    eps_form = solvers.get("dpm_solver_multistep", order=3)(model, x, ts).x
    data_form = solvers.get("dpm_solver++", order=3)(model, x, ts).x
    assert float((eps_form - data_form).abs().max()) < 1e-4


def test_deis_weights_are_the_phi_weights_where_t_is_affine_in_lambda():
    """On VE, t is affine in lambda, so tAB's Lagrange polynomial in t is one in lambda and the weights
    have the closed form of the noise-form phi expansion (Zhang & Chen 2023 vs Lu et al. 2022):
    p = 1: C = -sigma_t h phi_1;  p = 2: C_s = -sigma_t h (phi_1 + phi_2 / r0), C_p1 = sigma_t h phi_2 / r0."""
    sde = ExponentialVE()
    s, t, p1 = (torch.tensor([v], dtype=F64) for v in (0.5, 0.42, 0.61))
    lam_s, lam_t, lam_p1 = sde.lambda_(s), sde.lambda_(t), sde.lambda_(p1)
    sigma_t, h = sde.sigma(t), lam_t - lam_s
    r0 = (lam_s - lam_p1) / h
    phi_1, phi_2 = phis(h, 2)
    c1 = deis_coefficients(sde, s, t, s)
    torch.testing.assert_close(c1, -sigma_t * h * phi_1, rtol=1e-13, atol=0)
    c2 = deis_coefficients(sde, s, t, torch.cat([s, p1]))
    want = torch.cat([-sigma_t * h * (phi_1 + phi_2 / r0), sigma_t * h * phi_2 / r0])
    torch.testing.assert_close(c2, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("t_end", [1e-3, 0.0])
def test_deis_quadrature_has_converged(t_end):
    """QUADRATURE_NODES (32) Gauss–Legendre nodes give the weights of 64 nodes, down to a step to t = 0;
    the whole-grid computation of init gives the per-step weights."""
    sde = LinearVP()
    ts = grids.quadratic_t(sde, 6, t_end=t_end)
    orders = [1, 2, 3, 3, 3, 3]
    whole = deis_grid_coefficients(sde, ts, orders)
    for i, p in enumerate(orders):
        s, t, times = ts[i : i + 1], ts[i + 1 : i + 2], ts[i - p + 1 : i + 1].flip(0)
        a, b = deis_coefficients(sde, s, t, times), deis_coefficients(sde, s, t, times, nodes=64)
        assert bool(torch.isfinite(a).all()) and a.shape == (p,)
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(whole[i], a, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 9, 10, 12])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("denoise_final", [False, True])
def test_one_evaluation_per_step(name, steps, denoise_final):
    sde = LinearVP()
    counter = CallCounter(gaussian_model(sde))
    sampler = solvers.get(name, denoise_final=denoise_final)
    assert sampler.nfe_per_step == 1
    sol = sampler(counter, start_states(sde), grids.uniform_lambda(sde, steps))
    assert sol.nfe == counter.calls == steps + int(denoise_final)


FEW_STEPS_CASES = [(name, {}) for name in NAMES] + [
    ("dpm_solver_multistep", {"order": 3}),
    ("dpm_solver_multistep", {"lower_order_final": False}),
    ("ipndm", {"lower_order_final": True}),
    ("deis", {"lower_order_final": True}),
]


def check_finite_for_few_steps(name, options, model):
    sde = model.sde
    x = start_states(sde, n=4)
    sampler = solvers.get(name, **options)
    for grid, all_steps in (("uniform_lambda", range(1, 11)), ("uniform_t", (1, 2, 5, 10)), ("karras", (3, 10))):
        for steps in all_steps:
            out = sampler(model, x, grids.make(grid, sde, steps)).x
            assert torch.isfinite(out).all(), f"{name} {options}: {grid} with {steps} steps on {sde!r}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,options", FEW_STEPS_CASES, ids=[f"{n}-{o}" for n, o in FEW_STEPS_CASES])
def test_finite_for_few_steps(name, options, kind):
    check_finite_for_few_steps(name, options, gaussian_model(make_sde(kind)))


@pytest.mark.parametrize("steps", [5, 12])  # 12: the last step at full order (no lower_order_final)
@pytest.mark.parametrize("name", NAMES)
def test_vp_grid_down_to_time_zero(name, steps):
    """t_end = 0 on VP (sigma = 0, lambda = inf). dpm_solver_multistep's last step returns the documented
    limit alpha_t x0_s (= x0_s, alpha(0) = 1), as the other exponential integrators do; iPNDM's DDIM transfer
    and DEIS's weights in nu = sigma / alpha are finite there without a special case. Each ends closer to
    the exact flow map than DDIM (measured RMS, 5 / 12 steps: ddim 0.277 / 0.129, dpm_solver_multistep
    0.268 / 0.089, ipndm 0.112 / 0.0067, deis 0.145 / 0.020)."""
    model = gaussian_model(LinearVP())
    x, ts = start_states(model.sde), grids.uniform_t(model.sde, steps, t_end=0.0)
    seen = []
    sol = solvers.get(name)(model, x, ts, callback=seen.append)
    assert bool(torch.isfinite(sol.x).all())
    if name == "dpm_solver_multistep":
        torch.testing.assert_close(sol.x, seen[-1].x0, rtol=0, atol=0)
    exact = model.flow_map(x, 1.0, 0.0)
    err, ddim_err = (float((out - exact).pow(2).mean().sqrt()) for out in (sol.x, solvers.get("ddim")(model, x, ts).x))
    assert err < ddim_err, (err, ddim_err)


@pytest.mark.parametrize("name", NAMES)
def test_float32_and_callback(name):
    model = gaussian_model(make_sde("vp"))
    x = start_states(model.sde).float()
    seen = []
    sol = solvers.get(name)(model, x, grids.uniform_lambda(model.sde, 10), callback=seen.append)
    assert sol.x.dtype == torch.float32 and bool(torch.isfinite(sol.x).all())
    assert [s.i for s in seen] == list(range(10)) and [s.nfe for s in seen] == list(range(1, 11))
    assert all(s.x0 is not None and s.x0.shape == x.shape for s in seen)


def test_deis_weights_carry_the_grid_gradient():
    """solvers.fit_grid differentiates through the grid: DEIS's weights, computed from ts in init, keep it."""
    model = gaussian_model(LinearVP())
    ts = grids.uniform_lambda(model.sde, 6).requires_grad_(True)
    solvers.get("deis")(model, start_states(model.sde), ts).x.pow(2).sum().backward()
    assert bool(torch.isfinite(ts.grad).all()) and bool((ts.grad[1:-1] != 0).all())


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("dpm_solver_multistep", {"order": 4}, r"order must be one of \[1, 2, 3\], got 4"),
        ("dpm_solver_multistep", {"order": True}, "order must be one of"),
        ("dpm_solver_multistep", {"lower_order_final": 1}, "lower_order_final must be True or False"),
        ("ipndm", {"order": 5}, r"order must be one of \[1, 2, 3, 4\], got 5"),
        ("ipndm", {"order": 0}, r"order must be one of \[1, 2, 3, 4\]"),
        ("ipndm", {"lower_order_final": "yes"}, "lower_order_final must be True or False"),
        ("deis", {"order": 4}, r"order must be one of \[1, 2, 3\], got 4"),
        ("deis", {"order": 0}, r"order must be one of \[1, 2, 3\]"),
        ("deis", {"steps": 10}, "valid options"),
    ],
)
def test_bad_options_name_the_valid_choices(name, options, match):
    with pytest.raises(ValueError, match=match):
        solvers.get(name, **options)


@pytest.mark.parametrize(
    "name,order,lower_order_final,grid",
    [("dpm_solver_multistep", 3, True, "uniform_lambda"), ("ipndm", 3, False, "quadratic_t"), ("deis", 3, False, "quadratic_t")],
)
def test_defaults_options_round_trip_and_metadata(name, order, lower_order_final, grid):
    sampler = solvers.get(name)
    assert solvers.get(name, **sampler.options()) == sampler
    assert (sampler.order, sampler.lower_order_final, sampler.default_grid) == (order, lower_order_final, grid)
    assert not sampler.stochastic and sampler.default_steps == 20
    assert sampler.nfe_per_step == 1 and sampler.kinds >= frozenset({"vp", "subvp", "ve", "flow"})
    assert name in solvers.names() and solvers.available()[name]
