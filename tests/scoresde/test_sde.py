"""Forward processes: closed-form identities, moment equations, simulation, inverses, errors."""

import math

import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scoresde import VESDE, VPSDE, DiscreteVPSDE, FlowSDE, SubVPSDE
from scoresde.sde import ddpm_betas

from .conftest import all_sdes

F64 = torch.float64
unit = st.floats(0.0, 1.0)


def _t(values, T):
    return torch.tensor([min(v, 1.0) * T for v in values], dtype=F64)


@given(st.lists(unit, min_size=1, max_size=8))
def test_vp_alpha_sigma_unit_circle(us):
    for sde in (VPSDE(), VPSDE(schedule="cosine"), DiscreteVPSDE(), DiscreteVPSDE(schedule="cosine")):
        t = _t(us, sde.T)
        torch.testing.assert_close(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-14)


@given(st.lists(unit, min_size=1, max_size=8))
def test_subvp_sigma_is_one_minus_alpha_squared(us):
    sde = SubVPSDE(beta_min=0.3, beta_max=15.0)
    t = _t(us, sde.T)
    torch.testing.assert_close(sde.sigma(t), 1 - sde.alpha(t) ** 2, rtol=0, atol=1e-14)


@given(st.lists(unit, min_size=1, max_size=8))
def test_ve_alpha_is_one(us):
    sde = VESDE(sigma_min=0.02, sigma_max=80.0)
    t = _t(us, sde.T)
    assert torch.equal(sde.alpha(t), torch.ones_like(t))
    torch.testing.assert_close(sde.sigma(t), 0.02 * (80.0 / 0.02) ** t, rtol=1e-14, atol=0)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(list(all_sdes())), u=st.floats(0.02, 0.98))
def test_moment_equations(name, u):
    """d log alpha/dt = a(t) and d sigma^2/dt = 2 a sigma^2 + g^2, by central differences."""
    sde = all_sdes()[name]
    t0 = u * sde.T
    h = 1e-6
    if isinstance(sde, DiscreteVPSDE):  # stay inside one linear segment of log alpha
        k = math.floor(t0 * sde.N)
        t0 = (k + 0.5) / sde.N
        h = 0.01 / sde.N
    t = torch.tensor([t0], dtype=F64)
    tp, tm = t + h, t - h
    dlog_alpha = (torch.log(sde.alpha(tp)) - torch.log(sde.alpha(tm))) / (2 * h)
    dvar = (sde.sigma(tp) ** 2 - sde.sigma(tm) ** 2) / (2 * h)
    a, g2, var = sde.dlog_alpha_dt(t), sde.g2(t), sde.sigma(t) ** 2
    torch.testing.assert_close(dlog_alpha, a, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(dvar, 2 * a * var + g2, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(sde.f(torch.ones(1, 3, dtype=F64), t), a[:, None].expand(1, 3))
    torch.testing.assert_close(sde.g(t) ** 2, g2)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "vp_cosine", "flow"])
def test_forward_euler_maruyama_matches_marginal(name):
    """4,000 paths of dx = f dt + g dw with 1,000 Euler steps from x0 = 1.5 to t = 0.5.

    The sample mean and std must match alpha x0 and sigma within 4 standard errors
    (plus the O(dt) bias of the scheme, about 1e-3 here).
    """
    sde = all_sdes()[name]
    n, steps, t_end, x0 = 4000, 1000, 0.5, 1.5
    gen = torch.Generator().manual_seed(0)
    x = torch.full((n, 1), x0, dtype=F64)
    dt = t_end / steps
    for i in range(steps):
        t = torch.full((n,), i * dt, dtype=F64)
        x = x + sde.f(x, t) * dt + sde.g(t)[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=F64)
    tt = torch.tensor([t_end], dtype=F64)
    mean, std = float(sde.alpha(tt)) * x0, float(sde.sigma(tt))
    se_mean, se_std = std / math.sqrt(n), std / math.sqrt(2 * n)
    assert abs(x.mean().item() - mean) < 4 * se_mean + 1e-3 * max(1.0, abs(mean))
    assert abs(x.std().item() - std) < 4 * se_std + 1e-3 * std


@pytest.mark.parametrize("name", list(all_sdes()))
def test_lambda_round_trip_over_whole_range(name):
    sde = all_sdes()[name]
    t = torch.linspace(sde.t_eps_likelihood, sde.T, 2001, dtype=F64)
    lam = sde.lambda_(t)
    assert bool(torch.all(lam[1:] < lam[:-1])), "lambda must decrease strictly"
    torch.testing.assert_close(sde.t_of_lambda(lam), t, rtol=0, atol=1e-12)
    lam_grid = torch.linspace(float(lam[-1]), float(lam[0]), 2001, dtype=F64)
    torch.testing.assert_close(sde.lambda_(sde.t_of_lambda(lam_grid)), lam_grid, rtol=1e-9, atol=1e-9)


@given(lam=st.floats(-12.0, 12.0))
def test_lambda_inverse_property(lam):
    for sde in (VPSDE(), VPSDE(schedule="cosine"), SubVPSDE(), VESDE(), DiscreteVPSDE(), FlowSDE()):
        lo, hi = (float(v) for v in sde.lambda_(torch.tensor([sde.T, 0.0 if sde.kind != "ve" else 0.0], dtype=F64)))
        if not lo < lam < hi:
            continue
        t = sde.t_of_lambda(torch.tensor([lam], dtype=F64))
        torch.testing.assert_close(sde.lambda_(t), torch.tensor([lam], dtype=F64), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_discrete_schedule_reproduces_alphas_cumprod_at_knots(schedule):
    betas = ddpm_betas(schedule, 1000)
    abar = torch.cumprod(1 - betas, 0)
    for sde in (DiscreteVPSDE(schedule=schedule), DiscreteVPSDE(betas), DiscreteVPSDE(alphas_cumprod=abar)):
        n = torch.arange(1000)
        t = sde.t_of_timestep(n)
        torch.testing.assert_close(sde.alpha(t) ** 2, abar, rtol=1e-13, atol=0)
        torch.testing.assert_close(sde.timestep(t), n.to(F64), rtol=0, atol=1e-9)
    assert DiscreteVPSDE().t_eps == 1e-3


def test_discrete_linear_betas_are_ho_et_al():
    betas = ddpm_betas("linear")
    assert betas.shape == (1000,) and betas[0] == 1e-4 and abs(betas[-1] - 0.02) < 1e-15
    cos = ddpm_betas("cosine")
    assert float(cos.max()) <= 0.999 and float(cos.min()) > 0


def test_vp_linear_matches_integral_of_beta():
    sde = VPSDE(beta_min=0.1, beta_max=20.0)
    t = torch.tensor([0.25, 0.5, 1.0], dtype=F64)
    expected = torch.exp(-0.5 * (0.1 * t + 0.5 * t**2 * 19.9))
    torch.testing.assert_close(sde.alpha(t), expected, rtol=1e-14, atol=0)


def test_cosine_end_time_keeps_log_snr_finite():
    sde = VPSDE(schedule="cosine")
    lam_T = float(sde.lambda_(torch.tensor([sde.T], dtype=F64)))
    assert sde.T == 0.9946 and math.isfinite(lam_T) and -5.0 < lam_T < -4.5


@pytest.mark.parametrize("name", list(all_sdes()))
def test_prior_logp_matches_scipy(name):
    sde = all_sdes()[name]
    gen = torch.Generator().manual_seed(1)
    z = sde.prior_sample((5, 2, 3), generator=gen, dtype=F64)
    expected = scipy.stats.norm(0, sde.prior_std).logpdf(z.flatten(1).numpy()).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), torch.from_numpy(expected), rtol=1e-12, atol=1e-10)
    assert z.shape == (5, 2, 3) and z.dtype == F64


def test_ve_prior_is_sigma_max():
    assert VESDE(sigma_min=0.01, sigma_max=50).prior_std == 50.0
    assert VPSDE().prior_std == 1.0 and SubVPSDE().prior_std == 1.0


def test_perturb_is_affine_in_eps(sde):
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 3, 4, 4, dtype=F64, generator=gen)
    t = torch.rand(6, dtype=F64, generator=gen) * sde.T
    xt, eps = sde.perturb(x0, t, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(xt, sde.alpha(t)[:, None, None, None] * x0 + sde.sigma(t)[:, None, None, None] * eps)
    xt2, _ = sde.perturb(x0, t, generator=torch.Generator().manual_seed(4))
    assert torch.equal(xt, xt2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_are_kept(sde, dtype):
    t = torch.linspace(0.1, sde.T, 5, dtype=dtype)
    for out in (sde.alpha(t), sde.sigma(t), sde.lambda_(t), sde.g(t), sde.t_of_lambda(sde.lambda_(t))):
        assert out.dtype == dtype and out.shape == (5,) and bool(torch.isfinite(out).all())


def test_reverse_and_pf_drifts():
    sde = VPSDE()
    x = torch.randn(3, 2, dtype=F64)
    t = torch.full((3,), 0.4, dtype=F64)
    score = torch.randn(3, 2, dtype=F64)
    g2 = sde.g2(t)[:, None]
    torch.testing.assert_close(sde.reverse_drift(x, t, score), sde.f(x, t) - g2 * score)
    torch.testing.assert_close(sde.pf_drift(x, t, score), sde.f(x, t) - 0.5 * g2 * score)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VPSDE(beta_min=20.0, beta_max=0.1), "need beta_min < beta_max"),
        (lambda: VPSDE(beta_min=-1.0), "beta_min must be a finite number >= 0"),
        (lambda: VPSDE(beta_max=float("nan")), "beta_max must be a finite number > 0"),
        (lambda: VPSDE(schedule="sigmoid"), r"unknown schedule 'sigmoid'; choose one of \['linear', 'cosine'\]"),
        (lambda: VPSDE(beta_min=0.1, schedule="cosine"), "apply to schedule='linear' only"),
        (lambda: VPSDE(s=0.01), "s applies to schedule='cosine' only"),
        (lambda: SubVPSDE(beta_min=5.0, beta_max=5.0), "need beta_min < beta_max"),
        (lambda: VESDE(sigma_min=0.0), "sigma_min must be a finite number > 0"),
        (lambda: VESDE(sigma_min=10.0, sigma_max=5.0), "need sigma_min < sigma_max"),
        (lambda: DiscreteVPSDE(schedule="quadratic"), "unknown schedule 'quadratic'; choose one of"),
        (lambda: DiscreteVPSDE(torch.tensor([0.1, 1.5])), r"betas must lie in \(0, 1\)"),
        (lambda: DiscreteVPSDE(alphas_cumprod=torch.tensor([0.5, 0.9])), "decrease strictly"),
        (lambda: DiscreteVPSDE(torch.tensor([0.1, 0.2]), schedule="linear"), "give one of betas, alphas_cumprod or schedule"),
        (lambda: DiscreteVPSDE(schedule="linear", num_steps=1), "num_steps must be an integer >= 2"),
    ],
)
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "t, match",
    [
        (torch.tensor([1.5], dtype=F64), r"t must lie in \[0, T=1.0\]"),
        (torch.tensor([-0.1], dtype=F64), r"t must lie in \[0, T=1.0\]"),
        (torch.tensor([float("nan")], dtype=F64), "t contains NaN"),
        (torch.tensor([[0.5]], dtype=F64), r"t must have shape \(B,\), got \(1, 1\)"),
        (torch.tensor([1]), "t must be a float tensor"),
        (0.5, "t must be a torch.Tensor"),
    ],
)
def test_bad_times_raise(sde, t, match):
    if "T=1.0" in match and sde.T != 1.0:
        match = match.replace("1.0", str(sde.T))
    with pytest.raises(ValueError, match=match):
        sde.alpha(t)


def test_timestep_needs_float_time_and_maps_to_index():
    sde = DiscreteVPSDE()
    torch.testing.assert_close(sde.timestep(torch.tensor([1e-3, 1.0], dtype=F64)), torch.tensor([0.0, 999.0], dtype=F64))
    torch.testing.assert_close(sde.t_of_timestep(torch.tensor([0, 999])), torch.tensor([1e-3, 1.0], dtype=F64))
