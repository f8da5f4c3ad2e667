"""The flow-matching process x_t = (1 - t) x0 + t eps: closed forms, its probability-flow ODE as the
flow-matching ODE, solver orders and the exact likelihood on analytic models, the flow-matching loss
and a short training run."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import solvers
from scoresde import AnalyticModel, FlowSDE, Gaussian, GaussianMixture, ScoreModel
from scoresde.losses import dsm_loss, flow_matching_loss, flow_matching_weight, sample_t
from scoresde.train import TrainConfig, train
from solvers import grids

from .helpers import logged_losses

F64 = torch.float64


# ----------------------------------------------------------------------------------- closed forms


@given(st.lists(st.floats(0.0, 0.999), min_size=1, max_size=8))
def test_coefficients_are_the_straight_path(us):
    sde = FlowSDE()
    t = torch.tensor(us, dtype=F64)
    torch.testing.assert_close(sde.alpha(t), 1 - t, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(sde.sigma(t), t)
    torch.testing.assert_close(sde.dalpha_dt(t), -torch.ones_like(t))
    torch.testing.assert_close(sde.dsigma_dt(t), torch.ones_like(t))
    torch.testing.assert_close(sde.dlog_alpha_dt(t), -1 / (1 - t))
    torch.testing.assert_close(sde.g2(t), 2 * t / (1 - t))


@given(st.floats(-6.9, 12.0))
def test_log_snr_inverse_is_a_sigmoid(lam):
    sde = FlowSDE()
    lam_t = torch.tensor([lam], dtype=F64)
    t = sde.t_of_lambda(lam_t)
    torch.testing.assert_close(t, torch.sigmoid(-lam_t))
    torch.testing.assert_close(sde.lambda_(t), lam_t, rtol=1e-9, atol=1e-9)


def test_end_time_keeps_the_log_snr_finite():
    sde = FlowSDE()
    lam_T = float(sde.lambda_(torch.tensor([sde.T], dtype=F64)))
    assert sde.T == 0.999 and abs(lam_T - math.log(0.001 / 0.999)) < 1e-12 and sde.prior_std == 1.0


def test_probability_flow_is_the_flow_matching_ode():
    """f - g^2 score / 2 = E[eps - x0 | x_t] = the flow velocity of the exact model (d = 3, mixture)."""
    sde = FlowSDE()
    data = GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[0.5, -0.2, 0.1], [-0.4, 0.3, 0.6]], dtype=F64),
                           torch.tensor([0.2, 0.4], dtype=F64))
    exact = AnalyticModel(data, sde)
    t = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.99], dtype=F64)
    x = exact.sample(5, 0.5, generator=torch.Generator().manual_seed(0))
    velocity = exact.eps(x, t) - exact.x0(x, t)
    torch.testing.assert_close(sde.pf_drift(x, t, exact.score(x, t)), velocity)
    # a network predicting that velocity converts back to the exact eps, x0 and score
    model = ScoreModel(lambda xx, c: exact.eps(xx, c) - exact.x0(xx, c), sde, "flow")
    torch.testing.assert_close(model.eps(x, t), exact.eps(x, t))
    torch.testing.assert_close(model.score(x, t), exact.score(x, t))
    torch.testing.assert_close(ScoreModel(lambda xx, c: exact.eps(xx, c), sde, "eps").flow(x, t), velocity)


# -------------------------------------------------------------------------------- solver orders


def _slope(steps, errors):
    lx = torch.log(torch.tensor(steps, dtype=F64))
    ly = torch.log(torch.tensor(errors, dtype=F64))
    return -float(((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum())


ORDERS = [
    ("ddim", {}, (16, 32, 64, 128)),
    ("ode", {"method": "euler"}, (32, 64, 128, 256)),
    ("heun", {}, (8, 16, 32, 64)),
    ("dpm_solver++", {"solver_type": "multistep", "order": 2}, (32, 64, 128)),
    ("dpm_solver++", {"solver_type": "multistep", "order": 3}, (16, 32, 64)),
]


@pytest.mark.parametrize("name,options,steps", ORDERS, ids=[f"{n}-{o}" for n, o, _ in ORDERS])
def test_deterministic_solvers_converge_at_their_order(name, options, steps):
    """4-d Gaussian, 8 prior samples, uniform-lambda grids from T to 1e-3; reference: the exact
    flow map. Measured slopes of log max error against log N: ddim 0.96, euler 0.98, heun 2.18,
    dpm_solver++ 2M 1.95, 3M 3.84; asserted >= order - 0.3, with the last error below 0.1."""
    data = Gaussian(torch.tensor([0.4, -0.6, 0.1, 0.9], dtype=F64), torch.tensor([0.3, 0.5, 0.2, 0.6], dtype=F64))
    model = AnalyticModel(data, FlowSDE())
    x_T = model.sde.prior_sample((8, 4), generator=torch.Generator().manual_seed(1), dtype=F64)
    sampler = solvers.get(name, **options)
    errors = []
    for n in steps:
        ts = grids.uniform_lambda(model.sde, n, t_end=1e-3)
        exact = model.flow_map(x_T, ts[0], ts[-1])
        errors.append(float((sampler(model, x_T, ts).x - exact).abs().max()))
    assert errors[-1] < 0.1 and _slope(steps, errors) >= sampler.order - 0.3, errors


# --------------------------------------------------------------------------------- likelihood


@pytest.mark.parametrize("law", ["gaussian", "mixture"])
def test_likelihood_matches_the_exact_density(law):
    """d = 16, closed-form divergence, rtol = atol = 1e-7, 8 points: the ODE's log-likelihood equals
    log p_{t_eps}(x) - log p_T(z) + prior_logp(z) (measured mean |error| 3e-8 bits/dim for the Gaussian,
    68 evaluations, and 2e-7 for the mixture, 110; asserted <= 1e-4), and the latent of a Gaussian is
    its exact flow map. (The prior mismatch log p_T(z) - prior_logp(z) is about 5e-4 bits/dim here.)"""
    from scoresde.likelihood import bpd_from_logp, log_likelihood

    sde = FlowSDE()
    gen = torch.Generator().manual_seed(0)
    if law == "gaussian":
        data = Gaussian(0.3 * torch.randn(16, generator=gen, dtype=F64), 0.2 + 0.5 * torch.rand(16, generator=gen, dtype=F64))
    else:
        data = GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=F64), 0.5 * torch.randn(3, 16, generator=gen, dtype=F64),
                               torch.tensor([0.3, 0.5, 0.4], dtype=F64))
    model = AnalyticModel(data, sde)
    x = data.sample(8, generator=torch.Generator().manual_seed(1))
    res = log_likelihood(model, x, divergence="analytic", rtol=1e-7, atol=1e-7)
    t_eps = sde.t_eps_likelihood
    full = lambda v: torch.full((8,), float(v), dtype=F64)  # noqa: E731
    ref = model.log_prob(x, full(t_eps)) - model.log_prob(res.z, full(sde.T)) + sde.prior_logp(res.z)
    err = float((res.bpd - bpd_from_logp(ref, 16)).abs().mean())
    assert err <= 1e-4, err
    if law == "gaussian":
        torch.testing.assert_close(res.z, model.flow_map(x, t_eps, sde.T), rtol=1e-4, atol=1e-4)


# -------------------------------------------------------------------------------- the loss


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))
        self.b = torch.nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, x, c):
        return torch.tanh(self.w * x + self.b * c.reshape(-1, *[1] * (x.ndim - 1)))


def test_flow_matching_loss_is_the_eps_loss_weighted_by_one_over_one_minus_t_squared():
    """u - u_hat = (eps - eps_hat) / (1 - t) on FlowSDE: with the same draws, the flow-matching loss is
    dsm_loss / (1 - t)^2, for a network predicting the velocity natively."""
    sde = FlowSDE()
    model = ScoreModel(Affine(), sde, "flow", c_noise="t")
    x0 = torch.randn(32, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    fm = flow_matching_loss(model, x0, t_eps=1e-3, generator=torch.Generator().manual_seed(0))
    eps_loss = dsm_loss(model, x0, t_eps=1e-3, generator=torch.Generator().manual_seed(0))
    t, _ = sample_t(sde, 32, t_eps=1e-3, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(fm, eps_loss / (1 - t) ** 2)
    torch.testing.assert_close(flow_matching_weight(sde, t), 1 / (1 - t) ** 2)
    # and the target is u = eps - x0: the exact velocity regressor's loss is E|u - E[u | x_t]|^2 < E|u|^2
    gen = torch.Generator().manual_seed(0)
    t2, _ = sample_t(sde, 32, t_eps=1e-3, generator=gen, dtype=F64)
    x_t, eps = sde.perturb(x0, t2, generator=gen)
    torch.testing.assert_close(fm, (model.flow(x_t, t2) - (eps - x0)).square().flatten(1).mean(1))


def test_flow_matching_weight_is_sigma2_dlambda2_on_every_process(sde):
    """The same identity on any affine process: weight = (sigma' - alpha' sigma / alpha)^2 = sigma^2 lambda'^2
    (lambda' by central differences), and flow_matching_loss = weight * dsm_loss for an eps network."""
    t = torch.tensor([0.2005, 0.4505, 0.7005], dtype=F64) * sde.T  # inside DDPM segments: no kink within h
    h = 1e-7
    dlam = (sde.lambda_(t + h) - sde.lambda_(t - h)) / (2 * h)
    torch.testing.assert_close(flow_matching_weight(sde, t), sde.sigma(t) ** 2 * dlam**2, rtol=1e-5, atol=1e-8)
    model = ScoreModel(Affine(), sde, "eps", c_noise="t")
    x0 = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    fm = flow_matching_loss(model, x0, t_eps=1e-2, generator=torch.Generator().manual_seed(0))
    eps_loss = dsm_loss(model, x0, t_eps=1e-2, generator=torch.Generator().manual_seed(0))
    t, _ = sample_t(sde, 8, t_eps=1e-2, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(fm, flow_matching_weight(sde, t) * eps_loss, rtol=1e-9, atol=1e-12)


# -------------------------------------------------------------------------------- training


@pytest.mark.parametrize("kw,match", [
    (dict(loss="flow_matching"), "loss 'flow_matching' needs sde 'flow'"),
    (dict(loss="flow_matching", sde="flow", time_sampling="likelihood"), "needs time_sampling 'uniform'"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


@pytest.mark.slow  # 12 s; the loss itself is checked exactly above, and the trainer's loop by test_train.py
def test_smoke_flow_matching_training_on_digits(tmp_path):
    """60 steps of a 16-channel digits U-Net predicting the velocity, batch 64: the loss starts near
    E|eps - x0|^2 (measured 1.68 over the first 5 steps) and the last 10 steps average at most 0.6 of
    it (measured 0.71, i.e. 0.42)."""
    cfg = TrainConfig(net_options={"ch": 16, "num_res_blocks": 1}, batch_size=64, steps=60, lr=2e-3, warmup_steps=10,
                      ema_decay=0.99, out_dir=str(tmp_path), log_every=1, ckpt_every=1000, progress=False, device="cpu",
                      sde="flow", prediction="flow", loss="flow_matching")
    res = train(cfg)
    L = logged_losses(tmp_path)
    first, last = sum(L[:5]) / 5, sum(L[-10:]) / 10
    assert len(L) == 60 and 1.3 < first < 2.0 and last < 0.6 * first, (first, last)
    assert isinstance(res.model.sde, FlowSDE) and res.model.prediction == "flow"
    x = solvers.get("dpm_solver++")(res.model, torch.randn(4, 1, 8, 8), grids.uniform_lambda(res.model.sde, 10)).x
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
