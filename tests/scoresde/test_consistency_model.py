"""The consistency-model parameterization (scoresde.fewstep.consistency) on every process."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scoresde import VESDE, AnalyticModel, Gaussian
from scoresde.fewstep.consistency import ConsistencyModel, FlowMapConsistency, boundary_coefficients, noise_level

from .conftest import all_sdes

F64 = torch.float64
SDES = all_sdes()


def _net(x, c):
    """A fixed nonlinear 'network' F(x, c_noise) of x's shape."""
    return torch.tanh(x) * (1 + c.reshape(-1, *([1] * (x.ndim - 1)))) - 0.3


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(SDES)), seed=st.integers(0, 2**16), dtype=st.sampled_from([F64, torch.float32]),
       scale_input=st.booleans())
def test_boundary_condition_is_exact(name, seed, dtype, scale_input):
    """f(x, t_eps) = x bit for bit, c_skip(t_eps) = 1 and c_out(t_eps) = 0 exactly, in float64 and float32."""
    sde = SDES[name]
    model = ConsistencyModel(_net, sde, sigma_data=0.5, scale_input=scale_input)
    x = 10 * torch.randn(5, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    t = torch.full((5,), sde.t_eps, dtype=dtype)
    c_skip, c_out, _ = model.coefficients(t)
    assert torch.equal(c_skip, torch.ones_like(c_skip)) and torch.equal(c_out, torch.zeros_like(c_out))
    assert torch.equal(model.consistency(x, t), x)
    assert torch.equal(model.x0(x, t), x)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(sorted(SDES)), u=st.floats(0.0, 1.0), sigma_data=st.floats(0.05, 5.0),
       t_eps_frac=st.floats(0.0, 0.5))
def test_coefficients_are_the_ve_ones_in_the_noise_level(name, u, sigma_data, t_eps_frac):
    """On any process, (alpha / a_eps) c_skip and c_out / a_eps are Song et al.'s VE coefficients at the noise
    level nu = sigma / alpha with sigma_min = nu(t_eps); c_in sqrt(sigma^2 + s_d^2 alpha^2) = 1."""
    sde = SDES[name]
    t_eps = t_eps_frac * sde.T
    t = torch.tensor([t_eps + u * (sde.T - t_eps)], dtype=F64)
    c_skip, c_out, c_in = boundary_coefficients(sde, t, t_eps, sigma_data)
    te = torch.tensor([t_eps], dtype=F64)
    a, a_eps = sde.alpha(t), sde.alpha(te)
    nu, nu_min = noise_level(sde, t), noise_level(sde, te)
    sd2 = sigma_data**2
    torch.testing.assert_close(a / a_eps * c_skip, sd2 / ((nu - nu_min) ** 2 + sd2), rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(c_out / a_eps, sigma_data * (nu - nu_min) / torch.sqrt(sd2 + nu**2), rtol=1e-12,
                               atol=1e-15)
    torch.testing.assert_close(c_in * torch.sqrt(sde.sigma(t) ** 2 + sd2 * a**2), torch.ones_like(t), rtol=1e-12, atol=0)
    assert 0 < float(a / a_eps * c_skip) <= 1 + 1e-12 and 0 <= float(c_out) < float(a_eps) * sigma_data


def test_ve_coefficients_are_song_et_al_2023():
    """On VE: c_skip = s_d^2 / ((sigma - sigma_min)^2 + s_d^2), c_out = s_d (sigma - sigma_min) / sqrt(s_d^2 +
    sigma^2) with the EDM numbers (sigma_min = 0.002, s_d = 0.5) at sigma = 80 and sigma = 1."""
    sde = VESDE(sigma_min=0.002, sigma_max=80.0)
    t = sde.t_of_lambda(-torch.log(torch.tensor([80.0, 1.0], dtype=F64)))
    c_skip, c_out, _ = boundary_coefficients(sde, t, 0.0, 0.5)
    sigma = torch.tensor([80.0, 1.0], dtype=F64)
    torch.testing.assert_close(c_skip, 0.25 / ((sigma - 0.002) ** 2 + 0.25), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_out, 0.5 * (sigma - 0.002) / torch.sqrt(0.25 + sigma**2), rtol=1e-12, atol=0)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(SDES)), u=st.floats(0.05, 1.0), kind=st.sampled_from(["eps", "score", "v"]))
def test_predictions_are_converted_from_f(name, u, kind):
    """x0 is f; eps, score and v are f converted by the shared conversions (x = alpha x0 + sigma eps)."""
    sde = SDES[name]
    model = ConsistencyModel(_net, sde, scale_input=True, c_noise="log_noise")
    x = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.full((4,), sde.t_eps + u * (sde.T - sde.t_eps), dtype=F64)
    f = model.x0(x, t)
    a, s = sde.alpha(t)[:, None, None], sde.sigma(t)[:, None, None]
    eps = (x - a * f) / s
    want = {"eps": eps, "score": -eps / s, "v": a * eps - s * f}[kind]
    torch.testing.assert_close(getattr(model, kind)(x, t), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(SDES))
def test_flow_map_consistency_is_exact_on_every_process(name):
    """The flow-map consistency function is x itself at t_eps and maps p_t's trajectory points to the same
    point at t_eps from every t (self-consistency: f(x_t, t) = f(x_s, s) for x_s = flow_map(x_t, t, s))."""
    sde = SDES[name]
    model = FlowMapConsistency(AnalyticModel(Gaussian(torch.tensor([0.5, -1.0], dtype=F64), 0.7), sde))
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    t, s = torch.full((6,), 0.9 * sde.T, dtype=F64), torch.full((6,), 0.3 * sde.T, dtype=F64)
    x_s = model.model.flow_map(x, t, s)
    torch.testing.assert_close(model.consistency(x, t), model.consistency(x_s, s), rtol=1e-12, atol=1e-12)
    assert torch.equal(model.consistency(x, torch.full((6,), sde.t_eps, dtype=F64)), x)


def test_bad_options_are_refused():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="sigma_data"):
        ConsistencyModel(_net, sde, sigma_data=0.0)
    with pytest.raises(ValueError, match="t_eps"):
        ConsistencyModel(_net, sde, t_eps=1.0)
    with pytest.raises(ValueError, match="scale_input"):
        ConsistencyModel(_net, sde, scale_input="yes")
    with pytest.raises(ValueError, match="flow_map"):
        FlowMapConsistency(object())


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(SDES)), seed=st.integers(0, 2**16), dtype=st.sampled_from([F64, torch.float32]),
       kind=st.sampled_from(["eps", "x0", "v", "score"]), width=st.floats(1e-3, 1.0))
def test_denoiser_form_keeps_the_boundary_condition_exact(name, seed, dtype, kind, width):
    """net_prediction: f(x, t_eps) = x bit for bit whatever the network predicts, in float64 and float32."""
    sde = SDES[name]
    model = ConsistencyModel(_net, sde, net_prediction=kind, boundary_width=width)
    x = 10 * torch.randn(5, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    assert torch.equal(model.consistency(x, torch.full((5,), sde.t_eps, dtype=dtype)), x)


@pytest.mark.parametrize("name", ["vp", "ve", "flow"])
def test_denoiser_form_is_the_networks_denoiser_away_from_the_boundary(name):
    """f = c_skip x + c_den D with c_skip -> 0, c_den -> 1: at noise levels far above boundary_width the model
    is the network's data prediction D (here the exact Gaussian denoiser through its eps) within w^2 / nu^2."""
    sde = SDES[name]
    exact = AnalyticModel(Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.3, 1.4], dtype=F64)), sde)
    model = ConsistencyModel(lambda x, c: exact.eps(x, t), sde, net_prediction="eps", boundary_width=0.01)
    t = torch.full((4,), 0.6 * sde.T, dtype=F64)
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    nu = float(noise_level(sde, t[:1]))
    torch.testing.assert_close(model.x0(x, t), exact.x0(x, t), rtol=0, atol=10 * (0.01 / nu) ** 2 * float(x.abs().max() + 1))


def test_denoiser_form_refuses_options_it_does_not_use():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="boundary_width is for net_prediction"):
        ConsistencyModel(_net, sde, boundary_width=0.1)
    with pytest.raises(ValueError, match="scale_input must be False with net_prediction"):
        ConsistencyModel(_net, sde, net_prediction="eps", scale_input=True)
    with pytest.raises(ValueError, match="prediction"):
        ConsistencyModel(_net, sde, net_prediction="noise")
    with pytest.raises(ValueError, match="boundary_width"):
        ConsistencyModel(_net, sde, net_prediction="eps", boundary_width=0.0)
