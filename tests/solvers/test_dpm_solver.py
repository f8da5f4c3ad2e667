"""DPM-Solver, adaptive DPM-Solver-12/23, DPM-Solver++ (1, 2M, 3M, 2S, 3S) and SDE-DPM-Solver++.

Ground truth: a 4-d Gaussian N(m, 0.5^2 I) under VP and VE (tests/solvers/gaussian.py), whose
probability-flow map (`GaussianModel.flow_map`) is exact; tests/scoresde/test_solvers_on_every_sde.py
runs the same checks (the `check_*` functions) on scoresde's sub-VP, flow-matching, cosine and
discrete DDPM processes. Convergence runs go from T to t_end = 1e-3 on uniform-lambda grids; the
order is the slope of log RMS error against log N, fitted by least squares over N in ORDER_STEPS
(more steps for the singlestep third-order methods, whose error reaches its asymptotic rate later),
and must be at least the declared order - 0.3. Measured slopes (24..192 steps): DPM-Solver 0.98 /
2.03 / 3.13; ++2M 1.97, ++3M 3.99, ++2S 1.97, ++3S 2.81 (vp).
"""

from __future__ import annotations

import math

import pytest
import torch

import solvers
from solvers import grids
from solvers.dpm_solver import LOWER_ORDER_FINAL_STEPS, dpm_solver_1_step
from solvers.dpm_solver_pp import dpm_solver_pp_1_step

from .gaussian import GaussianModel, LinearVP, MixtureModel, make_sde

T_END = 1e-3
ORDER_STEPS = (16, 32, 64)
ORDER_STEPS_SLOW_START = (64, 128, 256)  # singlestep order 3: pre-asymptotic below ~50 steps
KINDS = ("vp", "ve")  # sub-VP and flow: tests/scoresde/test_solvers_on_every_sde.py


def data_mean(d: int = 4) -> torch.Tensor:
    return 0.5 * torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def gaussian_model(sde, d: int = 4) -> GaussianModel:
    return GaussianModel(sde, data_mean(d), 0.5)


def start_states(sde, n: int = 8, d: int = 4, seed: int = 1) -> torch.Tensor:
    return sde.prior_sample((n, d), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def fitted_order(sampler, model, x_T, steps, *, t_end: float = T_END) -> tuple[float, list[float]]:
    """Least-squares slope of log RMS endpoint error against log(1/N) on uniform-lambda grids."""
    ref = model.flow_map(x_T, model.sde.T, t_end)
    errs = []
    for n in steps:
        ts = grids.uniform_lambda(model.sde, n, t_end=t_end)
        errs.append(float((sampler(model, x_T, ts).x - ref).pow(2).mean().sqrt()))
    lx = torch.log(torch.tensor(steps, dtype=torch.float64))
    ly = torch.log(torch.tensor(errs, dtype=torch.float64))
    slope = ((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()
    return -float(slope), errs


class CallCounter:
    """Independent count of model calls (any prediction kind) around a Model."""

    def __init__(self, model):
        self.model, self.sde, self.calls = model, model.sde, 0

    def _call(self, kind, x, t):
        self.calls += 1
        return getattr(self.model, kind)(x, t)

    def eps(self, x, t):
        return self._call("eps", x, t)

    def x0(self, x, t):
        return self._call("x0", x, t)

    def score(self, x, t):
        return self._call("score", x, t)

    def v(self, x, t):
        return self._call("v", x, t)


DETERMINISTIC = [
    ("dpm_solver", {"order": 1}),
    ("dpm_solver", {"order": 2}),
    ("dpm_solver", {"order": 3}),
    ("dpm_solver", {"order": 2, "r1": 0.3}),
    ("dpm_solver++", {"solver_type": "multistep", "order": 1}),
    ("dpm_solver++", {"solver_type": "multistep", "order": 2}),
    ("dpm_solver++", {"solver_type": "multistep", "order": 3}),
    ("dpm_solver++", {"solver_type": "singlestep", "order": 2}),
    ("dpm_solver++", {"solver_type": "singlestep", "order": 3}),
]


def check_converges_at_declared_order(name, options, model):
    sampler = solvers.get(name, **options)
    singlestep3 = sampler.order == 3 and sampler.nfe_per_step == 3
    steps = ORDER_STEPS_SLOW_START if singlestep3 else ORDER_STEPS
    order, errs = fitted_order(sampler, model, start_states(model.sde), steps)
    assert order >= sampler.order - 0.3, f"slope {order:.2f} for declared order {sampler.order}; errors {errs}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,options", DETERMINISTIC, ids=[f"{n}-{o}" for n, o in DETERMINISTIC])
def test_converges_at_declared_order(name, options, kind):
    check_converges_at_declared_order(name, options, gaussian_model(make_sde(kind)))


def check_dpm_solver_1_is_ddim(model):
    """DPM-Solver-1 = DPM-Solver++(1) = DDIM (eta = 0) = exponential Euler, step by step."""
    sde = model.sde
    x = start_states(sde)
    ts = grids.uniform_t(sde, 7, t_end=T_END)
    ddim = x.clone()
    for s, t in zip(ts[:-1], ts[1:]):
        s1, t1 = s.reshape(1), t.reshape(1)
        eps = model.eps(ddim, s1.expand(x.shape[0]))
        a_s, s_s, a_t, s_t = sde.alpha(s1), sde.sigma(s1), sde.alpha(t1), sde.sigma(t1)
        # DDIM (Song et al. 2021), Eq. (12) with eta = 0, written out
        ddim = a_t / a_s * ddim + (s_t - a_t * s_s / a_s) * eps
    for name, options in [
        ("dpm_solver", {"order": 1}),
        ("dpm_solver++", {"order": 1}),
        ("dpm_solver++", {"order": 1, "solver_type": "singlestep"}),
        ("unipc", {"order": 1, "corrector": False}),
    ]:
        out = solvers.get(name, **options)(model, x, ts).x
        torch.testing.assert_close(out, ddim, rtol=1e-10, atol=1e-10, msg=f"{name} {options}")
    if "ddim" in solvers.available():
        torch.testing.assert_close(solvers.get("ddim")(model, x, ts).x, ddim, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_dpm_solver_1_is_ddim(kind):
    check_dpm_solver_1_is_ddim(gaussian_model(make_sde(kind)))


def test_first_order_updates_agree_pointwise():
    """The eps-form and x0-form first-order updates are the same map (hypothesis-free spot check)."""
    gen = torch.Generator().manual_seed(3)
    x, eps = torch.randn(2, 5, 3, dtype=torch.float64, generator=gen)
    alpha_s, sigma_s = torch.tensor([0.3], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    alpha_t, sigma_t = torch.tensor([0.9], dtype=torch.float64), torch.tensor([0.4], dtype=torch.float64)
    h = torch.log(alpha_t / sigma_t) - torch.log(alpha_s / sigma_s)
    x0 = (x - sigma_s * eps) / alpha_s
    torch.testing.assert_close(
        dpm_solver_1_step(x, eps, alpha_s, alpha_t, sigma_t, h),
        dpm_solver_pp_1_step(x, x0, sigma_s, alpha_t, sigma_t, h),
    )


def expected_nfe(sampler, steps: int) -> int:
    """Evaluations on a grid of `steps` steps, from the documented rules."""
    if sampler.nfe_per_step == 1:
        return steps + (1 if getattr(sampler, "final_corrector", False) else 0) + int(sampler.denoise_final)
    total = 0
    for i in range(steps):
        p = sampler.order
        if sampler.lower_order_final and steps < LOWER_ORDER_FINAL_STEPS:
            p = min(p, steps - i)
        total += p
    return total + int(sampler.denoise_final)


NFE_CASES = DETERMINISTIC + [
    ("dpm_solver", {"order": 3, "lower_order_final": False}),
    ("dpm_solver", {"order": 3, "denoise_final": True}),
    ("dpm_solver++", {"order": 3, "solver_type": "singlestep", "lower_order_final": False}),
    ("sde_dpm_solver++", {"order": 1}),
    ("sde_dpm_solver++", {"order": 2}),
]


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 9, 10, 12])
@pytest.mark.parametrize("name,options", NFE_CASES, ids=[f"{n}-{o}" for n, o in NFE_CASES])
def test_reported_nfe_matches_independent_count(name, options, steps):
    sde = LinearVP()
    counter = CallCounter(gaussian_model(sde))
    sampler = solvers.get(name, **options)
    sol = sampler(counter, start_states(sde), grids.uniform_lambda(sde, steps), generator=torch.Generator().manual_seed(0))
    assert sol.nfe == counter.calls == expected_nfe(sampler, steps)


def test_lower_order_final_threshold_is_ten_steps():
    """Documented: lower-order final steps apply on grids of fewer than 10 steps only."""
    assert LOWER_ORDER_FINAL_STEPS == 10
    sde = LinearVP()
    model, x = gaussian_model(sde), start_states(sde)
    dpm3 = solvers.get("dpm_solver", order=3)
    assert dpm3(model, x, grids.uniform_lambda(sde, 9)).nfe == 3 * 7 + 2 + 1
    assert dpm3(model, x, grids.uniform_lambda(sde, 10)).nfe == 30


def check_finite_for_few_steps(name, options, model):
    sde = model.sde
    x = start_states(sde, n=4)
    sampler = solvers.get(name, **options)
    for grid, all_steps in (("uniform_lambda", range(1, 11)), ("uniform_t", (1, 2, 5, 10))):
        for steps in all_steps:
            out = sampler(model, x, grids.make(grid, sde, steps)).x
            assert torch.isfinite(out).all(), f"{grid} with {steps} steps on {sde!r}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,options", NFE_CASES[:9], ids=[f"{n}-{o}" for n, o in NFE_CASES[:9]])
def test_finite_for_few_steps(name, options, kind):
    check_finite_for_few_steps(name, options, gaussian_model(make_sde(kind)))


def test_mixture_and_float32():
    """A Gaussian mixture in float32: the dtype is kept and 20 steps of 3M are close to 200 steps."""
    sde = LinearVP()
    gen = torch.Generator().manual_seed(0)
    model = MixtureModel(sde, torch.tensor([0.3, 0.7]), torch.randn(2, 3, generator=gen), torch.tensor([0.2, 0.4]))
    x = sde.prior_sample((16, 3), generator=gen, dtype=torch.float32)
    pp3 = solvers.get("dpm_solver++", order=3)
    coarse = pp3(model, x, grids.uniform_lambda(sde, 20)).x
    fine = pp3(model, x, grids.uniform_lambda(sde, 200)).x
    assert coarse.dtype == torch.float32
    assert float((coarse - fine).abs().max()) < 0.05


def test_callback_sees_every_step():
    sde = LinearVP()
    model, x = gaussian_model(sde), start_states(sde)
    ts = grids.uniform_lambda(sde, 12)
    seen = []
    sol = solvers.get("dpm_solver", order=2)(model, x, ts, callback=seen.append)
    assert [s.i for s in seen] == list(range(12))
    assert [s.nfe for s in seen] == [2 * (i + 1) for i in range(12)]
    torch.testing.assert_close(seen[-1].x, sol.x)
    assert all(s.x0 is not None and s.x0.shape == x.shape for s in seen)


def check_adaptive_converges_with_tolerance(order, model):
    """Error falls with the tolerance at least like NFE^-(order - 0.3); only the grid ends matter."""
    sde = model.sde
    x = start_states(sde)
    ref = model.flow_map(x, sde.T, T_END)
    ts = grids.uniform_lambda(sde, 3, t_end=T_END)
    errs, nfes = [], []
    for tol in (1e-3, 1e-5):
        counter = CallCounter(model)
        sol = solvers.get("dpm_solver_adaptive", order=order, rtol=tol, atol=tol)(counter, x, ts)
        assert sol.nfe == counter.calls
        errs.append(float((sol.x - ref).pow(2).mean().sqrt()))
        nfes.append(sol.nfe)
    assert errs[1] < 10 * 1e-5
    slope = math.log(errs[0] / errs[1]) / math.log(nfes[1] / nfes[0])
    assert slope >= order - 0.3, (errs, nfes)
    other = torch.cat([ts[:1], ts[1:-1] * 0.9, ts[-1:]])
    again = solvers.get("dpm_solver_adaptive", order=order, rtol=1e-3, atol=1e-3)(model, x, other).x
    torch.testing.assert_close(again, solvers.get("dpm_solver_adaptive", order=order, rtol=1e-3, atol=1e-3)(model, x, ts).x)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_adaptive_converges_with_tolerance(order, kind):
    check_adaptive_converges_with_tolerance(order, gaussian_model(make_sde(kind)))


def check_adaptive_defaults_reach_the_endpoint(model):
    sde = model.sde
    x = start_states(sde)
    seen = []
    sol = solvers.get("dpm_solver_adaptive")(model, x, grids.uniform_lambda(sde, 2), callback=seen.append)
    assert torch.isfinite(sol.x).all() and sol.nfe % 3 == 0
    assert float(seen[-1].t) == pytest.approx(sde.t_eps, abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_adaptive_defaults_reach_the_endpoint(kind):
    check_adaptive_defaults_reach_the_endpoint(gaussian_model(make_sde(kind)))


def test_sde_variant_is_reproducible():
    sde = LinearVP()
    model, x = gaussian_model(sde), start_states(sde)
    ts = grids.uniform_lambda(sde, 10)
    sampler = solvers.get("sde_dpm_solver++", order=2)
    assert sampler.stochastic
    a = sampler(model, x, ts, generator=torch.Generator().manual_seed(7)).x
    b = sampler(model, x, ts, generator=torch.Generator().manual_seed(7)).x
    c = sampler(model, x, ts, generator=torch.Generator().manual_seed(8)).x
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    # one generator per sample: a sample's noise does not depend on its batch
    gens = [torch.Generator().manual_seed(100 + i) for i in range(x.shape[0])]
    full = sampler(model, x, ts, generator=gens).x
    part = sampler(model, x[:3], ts, generator=[torch.Generator().manual_seed(100 + i) for i in range(3)]).x
    torch.testing.assert_close(full[:3], part)


@pytest.mark.parametrize("order", [1, 2])
def test_sde_variant_samples_the_data_law(order):
    """8000 samples, 200 steps, VP: the per-coordinate mean and std of a Gaussian are matched.

    Standard errors: mean 0.5/sqrt(8000) = 0.0056, std 0.004; the std threshold also allows for the
    O(1/N) bias of the first-order sampler (measured: std 0.488 at 200 steps, 0.4995 for order 2).
    """
    sde = LinearVP()
    model = gaussian_model(sde)
    x = start_states(sde, n=8000, seed=5)
    out = solvers.get("sde_dpm_solver++", order=order)(
        model, x, grids.uniform_lambda(sde, 200), generator=torch.Generator().manual_seed(0)
    ).x
    assert float((out.mean(0) - model.mean).abs().max()) < 0.03
    assert float((out.std(0) - 0.5).abs().max()) < 0.035


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("dpm_solver", {"order": 4}, r"order must be one of \[1, 2, 3\]"),
        ("dpm_solver", {"order": True}, "order must be one of"),
        ("dpm_solver", {"order": 3, "r2": 0.5}, "order 3 needs r2 = 2/3"),
        ("dpm_solver", {"order": 3, "r1": 0.8}, r"r1 must lie in \(0, r2\)"),
        ("dpm_solver", {"order": 2, "r1": 0.0}, r"r1 must be a number in \(0, 1\]"),
        ("dpm_solver", {"order": 1, "r1": 0.5}, "order 1 has no intermediate points"),
        ("dpm_solver", {"lower_order_final": 1}, "lower_order_final must be True or False"),
        ("dpm_solver", {"steps": 3}, "valid options"),
        ("dpm_solver++", {"solver_type": "multi"}, r"solver_type must be one of \['multistep', 'singlestep'\]"),
        ("dpm_solver++", {"order": 4}, "order must be one of"),
        ("sde_dpm_solver++", {"order": 3}, r"order must be one of \[1, 2\]"),
        ("dpm_solver_adaptive", {"order": 1}, r"order must be one of \[2, 3\]"),
        ("dpm_solver_adaptive", {"rtol": -1.0}, "rtol must be a finite number"),
        ("dpm_solver_adaptive", {"theta": 1.5}, r"theta must be a number in \(0, 1\]"),
        ("dpm_solver_adaptive", {"max_growth": 1.0}, "max_growth must be None or a number > 1"),
    ],
)
def test_bad_options_name_the_valid_choices(name, options, match):
    with pytest.raises(ValueError, match=match):
        solvers.get(name, **options)


@pytest.mark.parametrize("name", ["dpm_solver", "dpm_solver++", "dpm_solver_adaptive", "sde_dpm_solver++"])
def test_options_round_trip_and_metadata(name):
    sampler = solvers.get(name)
    again = solvers.get(name, **sampler.options())
    assert again.options() == sampler.options()
    assert name in solvers.available() and solvers.available()[name]
    assert sampler.kinds >= frozenset({"vp", "subvp", "ve", "flow"})
    assert isinstance(sampler.order, int) and isinstance(sampler.nfe_per_step, int)
