"""Parameterization conversions and the ScoreModel wrapper."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from scoresde import VPSDE, DiscreteVPSDE, ScoreModel, VESDE, param
from scoresde.param import C_NOISE

F64 = torch.float64
KINDS = ["eps", "x0", "score", "v"]


def _sample(alpha, sigma, seed=0):
    a, s = torch.tensor([alpha], dtype=F64), torch.tensor([sigma], dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(2, 1, 3, 4, 4, dtype=F64, generator=gen)
    return a, s, x0, eps, a[:, None, None, None] * x0 + s[:, None, None, None] * eps


@given(alpha=st.floats(1e-3, 1.0), sigma=st.floats(1e-3, 80.0))
def test_eps_v_round_trip(alpha, sigma):
    a, s, x0, eps, x = _sample(alpha, sigma)
    torch.testing.assert_close(param.eps_from_v(x, param.v_from(x0, eps, a, s), a, s), eps)
    torch.testing.assert_close(param.x0_from_v(x, param.v_from(x0, eps, a, s), a, s), x0, rtol=1e-7, atol=1e-7 * sigma / alpha)


@given(alpha=st.floats(1e-2, 1.0), sigma=st.floats(1e-2, 80.0), src=st.sampled_from(KINDS), dst=st.sampled_from(KINDS))
def test_every_conversion_round_trips(alpha, sigma, src, dst):
    """Converting the true value of kind src to dst gives the true value of kind dst, and back."""
    a, s, x0, eps, x = _sample(alpha, sigma)
    truth = {"eps": eps, "x0": x0, "score": -eps / sigma, "v": param.v_from(x0, eps, a, s)}
    scale = {"eps": 1.0, "x0": 1.0 + sigma / alpha, "score": 1.0 / sigma, "v": alpha + sigma}
    out = param.convert(truth[src], src, dst, x, a, s)
    torch.testing.assert_close(out, truth[dst], rtol=1e-9, atol=1e-9 * scale[dst] * (1 + sigma / alpha))
    back = param.convert(out, dst, src, x, a, s)
    torch.testing.assert_close(back, truth[src], rtol=1e-9, atol=1e-9 * scale[src] * (1 + sigma / alpha) ** 2)


def test_convert_rejects_unknown_kind():
    x = torch.zeros(1, 2)
    one = torch.ones(1)
    with pytest.raises(ValueError, match=r"unknown prediction 'flow'; choose one of \['eps', 'x0', 'score', 'v'\]"):
        param.convert(x, "flow", "eps", x, one, one)


class Linear(torch.nn.Module):
    """net(x, c) = w x + c: a tiny stand-in network with a known output."""

    def __init__(self, dtype=F64):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5, dtype=dtype))
        self.seen = None

    def forward(self, x, c, y=None):
        self.seen = (c.clone(), None if y is None else y.clone(), x.dtype)
        return self.w * x + c.reshape(-1, *([1] * (x.ndim - 1))) + (0 if y is None else y.reshape(-1, 1))


@pytest.mark.parametrize("prediction", KINDS)
def test_score_model_converts_native_output(prediction):
    sde = VPSDE()
    net = Linear()
    model = ScoreModel(net, sde, prediction)
    x = torch.randn(3, 5, dtype=F64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    native = net(x, t)
    a, s = sde.alpha(t), sde.sigma(t)
    for dst in KINDS:
        torch.testing.assert_close(getattr(model, dst)(x, t), param.convert(native, prediction, dst, x, a, s))


@pytest.mark.parametrize("name", sorted(C_NOISE))
def test_c_noise_maps(name):
    sde = DiscreteVPSDE() if name == "timestep" else VESDE()
    net = Linear()
    t = torch.tensor([0.2, 0.7], dtype=F64)
    ScoreModel(net, sde, c_noise=name).eps(torch.zeros(2, 3, dtype=F64), t)
    expected = {
        "t": t, "999t": 999 * t, "timestep": t * 1000 - 1, "log_noise": torch.log(sde.sigma(t) / sde.alpha(t)),
        "sigma": sde.sigma(t),
    }[name]
    torch.testing.assert_close(net.seen[0], expected)


def test_callable_c_noise_and_labels_pass_through():
    net = Linear()
    model = ScoreModel(net, VPSDE(), c_noise=lambda t: 2 * t)
    y = torch.tensor([1.0, 2.0], dtype=F64)
    model.eps(torch.zeros(2, 3, dtype=F64), torch.tensor([0.1, 0.2], dtype=F64), y=y)
    torch.testing.assert_close(net.seen[0], torch.tensor([0.2, 0.4], dtype=F64))
    torch.testing.assert_close(net.seen[1], y)


def test_network_dtype_cast_and_back():
    net = Linear(dtype=torch.float32)
    model = ScoreModel(net, VPSDE())
    out = model.eps(torch.zeros(2, 3, dtype=F64), torch.tensor([0.1, 0.2], dtype=F64))
    assert net.seen[2] == torch.float32 and out.dtype == F64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prediction="velocity"), r"unknown prediction 'velocity'; choose one of \['eps', 'x0', 'score', 'v', 'flow'\]"),
        (dict(c_noise="fourier"), r"unknown c_noise 'fourier'; choose one of \['999t', 'log_noise', 'sigma', 't', 'timestep'\]"),
        (dict(c_noise="timestep"), "c_noise='timestep' needs a DiscreteVPSDE"),
        (dict(c_noise=3), "c_noise must be one of"),
    ],
)
def test_score_model_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScoreModel(Linear(), VPSDE(), **kwargs)


def test_score_model_checks_shapes():
    model = ScoreModel(lambda x, c: x[:, :1], VPSDE())
    with pytest.raises(ValueError, match=r"net returned shape \(2, 1\), expected \(2, 3\)"):
        model.eps(torch.zeros(2, 3), torch.full((2,), 0.5))
    with pytest.raises(ValueError, match=r"expected t of shape \(2,\)"):
        ScoreModel(Linear(), VPSDE()).eps(torch.zeros(2, 3, dtype=F64), torch.full((3,), 0.5, dtype=F64))


@given(u=st.floats(0.01, 0.99))
def test_flow_velocity_round_trip(u):
    """On FlowSDE u = eps - x0; the general conversions recover eps and x0 from (x, u)."""
    from scoresde import FlowSDE

    sde = FlowSDE()
    t = torch.tensor([u * sde.T], dtype=F64)
    a, s = sde.alpha(t), sde.sigma(t)
    da, ds = sde.dalpha_dt(t), sde.dsigma_dt(t)
    torch.testing.assert_close(da, torch.tensor([-1.0], dtype=F64))
    _, _, x0, eps, _ = _sample(0.5, 0.5)
    x = a[:, None, None, None] * x0 + s[:, None, None, None] * eps
    flow = param.flow_from(x0, eps, da, ds)
    torch.testing.assert_close(flow, eps - x0)
    torch.testing.assert_close(param.eps_from_flow(x, flow, a, s, da, ds), eps)
    torch.testing.assert_close(param.x0_from_flow(x, flow, a, s, da, ds), x0)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "flow"])
def test_dsigma_dt_matches_finite_differences(name):
    from .conftest import all_sdes

    sde = all_sdes()[name]
    t = torch.tensor([0.2, 0.6], dtype=F64)
    h = 1e-6
    torch.testing.assert_close(sde.dsigma_dt(t), (sde.sigma(t + h) - sde.sigma(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sde.dalpha_dt(t), (sde.alpha(t + h) - sde.alpha(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)


def test_score_model_flow_prediction():
    from scoresde import FlowSDE

    sde = FlowSDE()
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, dtype=F64, generator=gen)
    t = torch.tensor([0.1, 0.3, 0.5, 0.9], dtype=F64)
    x = sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * eps
    oracle = ScoreModel(lambda xx, c: eps - x0, sde, "flow")  # a net that knows the true velocity
    torch.testing.assert_close(oracle.eps(x, t), eps)
    torch.testing.assert_close(oracle.x0(x, t), x0)
    torch.testing.assert_close(oracle.score(x, t), -eps / sde.sigma(t)[:, None])
