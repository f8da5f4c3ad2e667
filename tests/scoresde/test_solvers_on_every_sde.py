"""The solvers' checks of tests/solvers on the processes only scoresde has: sub-VP, flow matching, the cosine
VP schedule and the discrete DDPM schedules (tests/solvers runs them on VP and VE, without scoresde).

Each test calls a `check_*` function of tests/solvers with the same thresholds, on scoresde's SDE and
`AnalyticModel` of the same data law. The first tests check that tests/solvers/gaussian.py (LinearVP,
ExponentialVE, GaussianModel, MixtureModel) agrees with scoresde's VPSDE, VESDE and AnalyticModel.
"""

from __future__ import annotations

import pytest
import torch

import scoresde
import solvers
from scoresde import VESDE, VPSDE, AnalyticModel, DiscreteVPSDE, FlowSDE, Gaussian, GaussianMixture, SubVPSDE
from solvers import grids

from ..solvers import test_dpm_solver as dpm
from ..solvers import test_grid_fit as grid_fit
from ..solvers import test_multistep_eps as multistep_eps
from ..solvers import test_solvers_basic as basic
from ..solvers import test_solvers_basic_contract as contract
from ..solvers import test_unipc as unipc
from ..solvers.gaussian import ExponentialVE, GaussianModel, LinearVP, MixtureModel, gaussian, mixture
from .conftest import all_sdes

F64 = torch.float64
SLOW_FLOW = pytest.param("flow", marks=pytest.mark.slow)
OTHER_SDES = [name for name in all_sdes() if name not in ("vp", "ve")]  # vp and ve: tests/solvers
KINDS = {"subvp": SubVPSDE, "flow": FlowSDE}


def analytic(model: MixtureModel, sde) -> AnalyticModel:
    """scoresde's exact model of the data law of a tests/solvers/gaussian.py model, under `sde`."""
    if isinstance(model, GaussianModel):
        return AnalyticModel(Gaussian(model.mean, model.std), sde)
    return AnalyticModel(GaussianMixture(model.log_weights.exp(), model.means, model.stds), sde)


# --- the solvers' ground truth is scoresde's ------------------------------------------------------


@pytest.mark.parametrize("local, sde", [(LinearVP(), VPSDE()), (ExponentialVE(), VESDE())], ids=["vp", "ve"])
def test_local_sdes_are_scoresde_sdes(local, sde):
    assert (local.kind, local.T, local.t_eps, local.prior_std) == (sde.kind, sde.T, sde.t_eps, sde.prior_std)
    t = torch.linspace(0.0, 1.0, 101, dtype=F64)[1:]
    for name in ("alpha", "sigma", "lambda_", "g"):
        torch.testing.assert_close(getattr(local, name)(t), getattr(sde, name)(t), rtol=1e-13, atol=0)
    torch.testing.assert_close(local.t_of_lambda(sde.lambda_(t)), t, rtol=1e-12, atol=0)
    x = sde.prior_sample((100, 3), generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(local.f(x, t), sde.f(x, t), rtol=1e-13, atol=0)
    torch.testing.assert_close(local.prior_logp(x), sde.prior_logp(x), rtol=1e-13, atol=0)
    again = local.prior_sample((100, 3), generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(again, x)


@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("make", [gaussian, mixture], ids=["gaussian", "mixture"])
def test_local_models_are_analytic_models(make, kind):
    local = make(kind)
    exact = analytic(local, {"vp": VPSDE(), "ve": VESDE()}[kind])
    t = torch.linspace(0.0, 1.0, 65, dtype=F64)[1:]
    x = exact.sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    for name in ("eps", "x0", "score", "v"):
        want = getattr(exact, name)(x, t)
        torch.testing.assert_close(getattr(local, name)(x, t), want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))
        assert getattr(local, name)(x.float(), t).dtype == torch.float32
    if make is gaussian:
        torch.testing.assert_close(local.flow_map(x, 1.0, 1e-3), exact.flow_map(x, 1.0, 1e-3), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(local.flow_map(x, t, t.flip(0)), exact.flow_map(x, t, t.flip(0)), rtol=1e-12, atol=1e-12)


# --- DPM-Solver (tests/solvers/test_dpm_solver.py) ---------------------------------------------------


def dpm_model(sde) -> AnalyticModel:
    return analytic(dpm.gaussian_model(LinearVP()), sde)


@pytest.mark.parametrize("kind", ["subvp", SLOW_FLOW])
@pytest.mark.parametrize("name,options", dpm.DETERMINISTIC, ids=[f"{n}-{o}" for n, o in dpm.DETERMINISTIC])
def test_dpm_solver_converges_at_declared_order(name, options, kind):
    dpm.check_converges_at_declared_order(name, options, dpm_model(KINDS[kind]()))


def test_dpm_solver_1_is_ddim_on_subvp():
    dpm.check_dpm_solver_1_is_ddim(dpm_model(SubVPSDE()))


@pytest.mark.parametrize("sde_name", OTHER_SDES)
@pytest.mark.parametrize("name,options", dpm.NFE_CASES[:9], ids=[f"{n}-{o}" for n, o in dpm.NFE_CASES[:9]])
def test_dpm_solver_finite_for_few_steps(name, options, sde_name):
    dpm.check_finite_for_few_steps(name, options, dpm_model(all_sdes()[sde_name]))


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_dpm_solver_converges_with_tolerance_on_subvp(order):
    dpm.check_adaptive_converges_with_tolerance(order, dpm_model(SubVPSDE()))


@pytest.mark.parametrize("sde_name", OTHER_SDES)
def test_adaptive_dpm_solver_defaults_reach_the_endpoint(sde_name):
    dpm.check_adaptive_defaults_reach_the_endpoint(dpm_model(all_sdes()[sde_name]))


# --- UniPC (tests/solvers/test_unipc.py) ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["subvp", SLOW_FLOW])
@pytest.mark.parametrize("options,required", unipc.CASES, ids=[str(o) for o, _ in unipc.CASES])
def test_unipc_converges_at_declared_order(options, required, kind):
    unipc.check_converges_at_declared_order(options, required, dpm_model(KINDS[kind]()))


@pytest.mark.parametrize("sde_name", OTHER_SDES)
@pytest.mark.parametrize("options", unipc.FEW_STEPS_CASES)
def test_unipc_finite_for_few_steps(options, sde_name):
    unipc.check_finite_for_few_steps(options, dpm_model(all_sdes()[sde_name]))


# --- noise-form multistep: DPM-Solver-2M/3M, iPNDM, DEIS (tests/solvers/test_multistep_eps.py) ----------


@pytest.mark.parametrize("kind", ["subvp", SLOW_FLOW])
@pytest.mark.parametrize("name,options,required,steps", multistep_eps.CASES, ids=multistep_eps.CASE_IDS)
def test_multistep_eps_converges_at_order(name, options, required, steps, kind):
    multistep_eps.check_converges_at_order(name, options, required, steps, dpm_model(KINDS[kind]()))


def test_multistep_eps_first_order_is_ddim_on_subvp():
    multistep_eps.check_first_order_is_ddim(dpm_model(SubVPSDE()))


@pytest.mark.parametrize("sde_name", OTHER_SDES)
@pytest.mark.parametrize("name,options", multistep_eps.FEW_STEPS_CASES, ids=[f"{n}-{o}" for n, o in multistep_eps.FEW_STEPS_CASES])
def test_multistep_eps_finite_for_few_steps(name, options, sde_name):
    multistep_eps.check_finite_for_few_steps(name, options, dpm_model(all_sdes()[sde_name]))


# --- DDIM, Heun, the ODE solver and the update rules (tests/solvers/test_solvers_basic.py) --------------


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name,options,steps", basic.DETERMINISTIC, ids=basic.DETERMINISTIC_IDS)
def test_basic_convergence_order(name, options, steps, kind):
    basic.check_convergence_order(name, options, steps, analytic(gaussian(), KINDS[kind]()))


@pytest.mark.parametrize("kind", list(KINDS))
def test_adaptive_ode_matches_flow_map(kind):
    basic.check_adaptive_ode_matches_flow_map(analytic(gaussian(), KINDS[kind]()))


@pytest.mark.parametrize("kind", list(KINDS))
def test_reverse_diffusion_coefficients(kind):
    basic.check_reverse_diffusion_coefficients(KINDS[kind]())


@pytest.mark.parametrize("kind", list(KINDS))
def test_ddim_eta1_equals_ancestral(kind):
    basic.check_ddim_eta1_equals_ancestral(analytic(mixture(), KINDS[kind]()))


@pytest.mark.parametrize("kind", list(KINDS))
def test_ddim_eta0_equals_exponential_euler_loop(kind):
    basic.check_ddim_eta0_equals_exponential_euler_loop(analytic(gaussian(), KINDS[kind]()))


@pytest.mark.parametrize("kind", list(KINDS))
def test_heun_one_step_is_trapezoid_in_noise_level(kind):
    basic.check_heun_one_step_is_trapezoid_in_noise_level(analytic(gaussian(), KINDS[kind]()))


# --- the basic solvers' contract (tests/solvers/test_solvers_basic_contract.py) -----------------------


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name,options", contract.SPECS, ids=contract.IDS)
def test_finite_and_nfe_for_1_to_10_steps(name, options, kind):
    contract.check_finite_and_nfe_for_1_to_10_steps(name, options, analytic(mixture(), KINDS[kind]()))


# --- fitted grids (tests/solvers/test_grid_fit.py) --------------------------------------------------


def test_discrete_schedule_grid_target_mean_rms_and_scoresde_sample():
    model = analytic(grid_fit.problem(), DiscreteVPSDE())
    states, exact, rms, T_END = grid_fit.states, grid_fit.exact, grid_fit.rms, grid_fit.T_END
    sampler = solvers.get("unipc", order=2)
    x_cal = states(model, 32, seed=1)
    init = grids.karras(model.sde, 5, t_end=T_END)
    ts = solvers.fit_grid(sampler, model, x_cal, exact(model)(x_cal), 5, init=init, iters=10, loss="mean_rms")
    assert bool(torch.all(ts[1:] < ts[:-1])) and torch.equal(ts[[0, -1]], init[[0, -1]])
    ref = model.flow_map(x_cal, model.sde.T, T_END)
    assert rms(sampler(model, x_cal, ts).x, ref) < rms(sampler(model, x_cal, init).x, ref)
    # the fitted grid goes wherever a grid is taken, scoresde.sample included
    x_T = states(model, 4, seed=2)
    out = scoresde.sample(model, solver=sampler, grid=ts, x_T=x_T)
    torch.testing.assert_close(out.x, sampler(model, x_T, ts).x)
    assert out.settings["grid"] == "custom" and out.settings["steps"] == 5 and out.settings["ts"] == ts.tolist()
    with pytest.raises(ValueError, match="fixes steps"):
        scoresde.sample(model, solver=sampler, grid=ts, x_T=x_T, steps=5)
