"""Deterministic samplers of the basic families (DDIM, EDM Heun, probability-flow ODE) and the exact
identities of the stochastic update rules, checked against the analytic Gaussian in float64 under VP and
VE (tests/solvers/gaussian.py); the `check_*` functions also run on scoresde's sub-VP and flow-matching
processes in tests/scoresde/test_solvers_on_every_sde.py.

Convergence: the exact probability-flow endpoint is GaussianModel(sde, ...).flow_map; the error
is the max abs difference over 16 prior samples in 2-D, regressed (log error on log step size) over
the four step counts in DETERMINISTIC on the uniform-lambda grid; slope >= order - 0.3 is required.
Measured slopes (vp / subvp / ve / flow): DDIM 0.97 / 0.96 / 0.97 / 0.96; Heun 2.14 / 2.21 / 2.12 /
2.19; ode euler 1.07 / 1.11 / 0.92 / 0.98; midpoint 2.09 / 2.14 / 2.21 / 2.97; heun2 1.97 / 1.89 /
2.08 / 1.99; heun3 3.01 / 3.13 / 3.16 / 2.99; rk4 4.23 / 4.00 / 4.16 / 3.89.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import solvers
from solvers import grids
from solvers.ddim import ddim_update
from solvers.protocol import bcast
from solvers.reverse_diffusion import ancestral_update, reverse_diffusion_update

from .gaussian import LinearVP, gaussian, make_sde, mixture

F64 = torch.float64
KINDS = ("vp", "ve")  # sub-VP and flow: tests/scoresde/test_solvers_on_every_sde.py


def slope(steps, errors):
    """Least-squares slope of log error against log step size 1/N."""
    lh = -torch.log(torch.tensor(steps, dtype=F64))
    le = torch.log(torch.tensor(errors, dtype=F64))
    return float(((lh - lh.mean()) * (le - le.mean())).sum() / ((lh - lh.mean()) ** 2).sum())


# (name, options, step counts): counts sit in the asymptotic range and above round-off for every kind
DETERMINISTIC = [
    ("ddim", {}, [16, 32, 64, 128]),
    ("heun", {}, [8, 16, 32, 64]),
    ("ode", {"method": "euler"}, [32, 64, 128, 256]),
    ("ode", {"method": "midpoint"}, [16, 32, 64, 128]),
    ("ode", {"method": "heun2"}, [32, 64, 128, 256]),
    ("ode", {"method": "heun3"}, [16, 32, 64, 128]),
    ("ode", {"method": "rk4"}, [16, 32, 64, 128]),
]


DETERMINISTIC_IDS = [f"{n}-{o.get('method', '')}" for n, o, _ in DETERMINISTIC]


def check_convergence_order(name, options, steps, model):
    x_T = model.sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    sampler = solvers.get(name, **options)
    errors = []
    for n in steps:
        ts = grids.uniform_lambda(model.sde, n)
        exact = model.flow_map(x_T, ts[0], ts[-1])
        errors.append(float((sampler(model, x_T, ts).x - exact).abs().max()))
    assert errors[-1] < 0.1
    assert slope(steps, errors) >= sampler.order - 0.3, errors


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,options,steps", DETERMINISTIC, ids=DETERMINISTIC_IDS)
def test_convergence_order(name, options, steps, kind):
    check_convergence_order(name, options, steps, gaussian(kind))


def check_adaptive_ode_matches_flow_map(model):
    x_T = model.sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = grids.uniform_t(model.sde, 10)
    exact = model.flow_map(x_T, ts[0], ts[-1])
    loose = solvers.get("ode", method="dopri5", rtol=1e-4, atol=1e-4)(model, x_T, ts)
    tight = solvers.get("ode", method="dopri5", rtol=1e-8, atol=1e-8)(model, x_T, ts)
    err_loose = float((loose.x - exact).abs().max())
    err_tight = float((tight.x - exact).abs().max())
    assert err_tight < 1e-5
    assert err_tight < err_loose
    assert tight.nfe > loose.nfe > 0


@pytest.mark.parametrize("kind", KINDS)
def test_adaptive_ode_matches_flow_map(kind):
    check_adaptive_ode_matches_flow_map(gaussian(kind))


# --- exact identities of the update rules ---------------------------------------------------------


@given(
    lam_s=st.floats(-6.0, 6.0),
    h=st.floats(1e-3, 4.0),
    log_alpha_s=st.floats(-4.0, 0.0),
    log_alpha_t=st.floats(-4.0, 0.0),
)
def test_ddim_eta0_is_exponential_euler(lam_s, h, log_alpha_s, log_alpha_t):
    # any affine process: alpha free, sigma = alpha exp(-lambda); includes VE (alpha = 1)
    alpha_s, alpha_t = torch.tensor([math.exp(log_alpha_s)], dtype=F64), torch.tensor([math.exp(log_alpha_t)], dtype=F64)
    sigma_s = alpha_s * math.exp(-lam_s)
    sigma_t = alpha_t * math.exp(-(lam_s + h))
    gen = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 2, 2, dtype=F64, generator=gen)
    hh = torch.tensor([h], dtype=F64)
    x_t, _ = ddim_update(x, eps, alpha_s, sigma_s, alpha_t, sigma_t, hh, 0.0, None)
    # DPM-Solver-1 (Lu et al. 2022, Eq. 3.7 with k = 1): x_t = alpha_t/alpha_s x_s - sigma_t (e^h - 1) eps
    expected = bcast(alpha_t / alpha_s, x) * x - bcast(sigma_t * math.expm1(h), x) * eps
    torch.testing.assert_close(x_t, expected, rtol=1e-10, atol=1e-10)


@given(sigma_t=st.floats(1e-2, 10.0), ratio=st.floats(1.01, 20.0))
def test_ancestral_ve_is_smld(sigma_t, ratio):
    sigma_s = sigma_t * ratio
    one = torch.ones(1, dtype=F64)
    gen = torch.Generator().manual_seed(1)
    x, x0, z = torch.randn(3, 4, 3, dtype=F64, generator=gen)
    score = (x0 - x) / sigma_s**2  # Tweedie for alpha = 1: x0 = x + sigma_s^2 score
    h = torch.tensor([math.log(ratio)], dtype=F64)
    out = ancestral_update(x, x0, one, one, sigma_t * one, h, z)
    # SMLD ancestral step: x + (sigma_s^2 - sigma_t^2) score + sqrt(sigma_t^2 (sigma_s^2 - sigma_t^2) / sigma_s^2) z
    d2 = sigma_s**2 - sigma_t**2
    expected = x + d2 * score + math.sqrt(sigma_t**2 * d2 / sigma_s**2) * z
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@given(t_next=st.floats(1e-3, 0.9), dt=st.floats(1e-3, 0.1))
def test_ancestral_vp_is_ddpm_with_posterior_variance(t_next, dt):
    sde = LinearVP()
    ts = torch.tensor([min(t_next + dt, 1.0), t_next], dtype=F64)
    alpha, sigma, lam = sde.alpha(ts), sde.sigma(ts), sde.lambda_(ts)
    beta = 1 - (alpha[0] / alpha[1]) ** 2  # DDPM's beta_i between the two grid times
    gen = torch.Generator().manual_seed(2)
    x, x0, z = torch.randn(3, 5, 2, dtype=F64, generator=gen)
    score = -(x - alpha[0] * x0) / sigma[0] ** 2
    out = ancestral_update(x, x0, alpha[:1], alpha[1:], sigma[1:], (lam[1] - lam[0]).reshape(1), z)
    # Ho et al. 2020: mean (x + beta score) / sqrt(1 - beta) (Eq. 11), variance beta-tilde (Eq. 7)
    beta_tilde = sigma[1] ** 2 / sigma[0] ** 2 * beta
    expected = (x + beta * score) / torch.sqrt(1 - beta) + beta_tilde.sqrt() * z
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def check_reverse_diffusion_coefficients(sde):
    """The discrete forward step x_s = a x_t + G z: a = sqrt(1 - beta_i), G^2 = beta_i for VP; a = 1, G^2 = sigma_s^2 - sigma_t^2 for VE."""

    class ZeroScore:  # a model whose score is 0 isolates the drift and noise coefficients
        def __init__(self):
            self.sde = sde

        def score(self, x, t):
            return torch.zeros_like(x)

    ts = torch.tensor([0.5, 0.45], dtype=F64)
    x = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    out = solvers.get("reverse_diffusion")(ZeroScore(), x, ts, generator=torch.Generator().manual_seed(4)).x
    z = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(4))
    alpha, sigma = sde.alpha(ts), sde.sigma(ts)
    a = alpha[0] / alpha[1]
    G2 = sigma[0] ** 2 - a**2 * sigma[1] ** 2
    if sde.kind == "vp":
        torch.testing.assert_close(G2, 1 - a**2, rtol=1e-12, atol=0)  # DDPM: G_i^2 = beta_i, a = sqrt(1 - beta_i)
    if sde.kind == "ve":
        torch.testing.assert_close(G2, sigma[0] ** 2 - sigma[1] ** 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(out, (2 - a) * x + G2.sqrt() * z, rtol=1e-12, atol=1e-12)
    # the pure rule with a score: Song et al. 2021, App. E
    s = torch.ones_like(x)
    one = torch.ones(1, dtype=F64)
    torch.testing.assert_close(reverse_diffusion_update(x, s, 2 * one, 3 * one, 0 * x), torch.full_like(x, 9.0), rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_reverse_diffusion_coefficients(kind):
    check_reverse_diffusion_coefficients(make_sde(kind))


def check_ddim_eta1_equals_ancestral(model):
    """On the two-component mixture of tests/solvers/gaussian.py."""
    ts = grids.uniform_t(model.sde, 12)
    x_T = model.sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(5), dtype=F64)
    a = solvers.get("ancestral")(model, x_T, ts, generator=torch.Generator().manual_seed(6))
    d = solvers.get("ddim", eta=1.0)(model, x_T, ts, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(d.x, a.x, rtol=1e-9, atol=1e-9)
    assert a.nfe == d.nfe == 12


@pytest.mark.parametrize("kind", KINDS)
def test_ddim_eta1_equals_ancestral(kind):
    check_ddim_eta1_equals_ancestral(mixture(kind))


def check_ddim_eta0_equals_exponential_euler_loop(model):
    x = model.sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(7), dtype=F64)
    ts = grids.uniform_lambda(model.sde, 5)
    out = solvers.get("ddim")(model, x, ts).x
    for i in range(5):
        s, t = ts[i : i + 1], ts[i + 1 : i + 2]
        h = model.sde.lambda_(t) - model.sde.lambda_(s)
        eps = model.eps(x, s.expand(8))
        x = bcast(model.sde.alpha(t) / model.sde.alpha(s), x) * x - bcast(model.sde.sigma(t) * torch.expm1(h), x) * eps
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_ddim_eta0_equals_exponential_euler_loop(kind):
    check_ddim_eta0_equals_exponential_euler_loop(gaussian(kind))


def check_heun_one_step_is_trapezoid_in_noise_level(model):
    """One Heun step in y = x / alpha, n = sigma / alpha, written out by hand."""
    sde = model.sde
    x = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(8), dtype=F64)
    ts = torch.tensor([0.8, 0.3], dtype=F64)
    a, n = sde.alpha(ts), sde.sigma(ts) / sde.alpha(ts)
    y = x / a[0]
    d = model.eps(x, ts[:1].expand(4))
    y_e = y + (n[1] - n[0]) * d
    d2 = model.eps(a[1] * y_e, ts[1:].expand(4))
    expected = a[1] * (y + (n[1] - n[0]) * (d + d2) / 2)
    torch.testing.assert_close(solvers.get("heun")(model, x, ts).x, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_heun_one_step_is_trapezoid_in_noise_level(kind):
    check_heun_one_step_is_trapezoid_in_noise_level(gaussian(kind))
