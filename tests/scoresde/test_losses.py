"""Denoising score matching: the eps / score identity, likelihood importance sampling, L_simple."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from scoresde import DiscreteVPSDE, ScoreModel, VESDE, VPSDE, SubVPSDE
from scoresde.losses import drop_labels, dsm_loss, likelihood_weight, sample_t


class Affine(torch.nn.Module):
    """A small non-trivial network net(x, c) = tanh(w x + b c) so that the loss is not constant."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, x, c, y=None):
        out = torch.tanh(self.w * x + self.b * c.reshape(-1, *[1] * (x.ndim - 1)))
        return out if y is None else out + 0.1 * y.reshape(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_eps_loss_equals_sigma2_weighted_score_matching(sde, prediction):
    # sigma^2 || s_theta + eps / sigma ||^2 = || eps_theta - eps ||^2 (Song et al. 2021, Eq. 7, lambda = sigma^2)
    model = ScoreModel(Affine(), sde, prediction, c_noise="t")
    x0 = torch.randn(16, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = dsm_loss(model, x0, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)  # replay the same draws: t first, then the noise
    t, _ = sample_t(sde, 16, generator=gen, dtype=torch.float64)
    x_t, eps = sde.perturb(x0, t, generator=gen)
    sigma = sde.sigma(t).reshape(-1, 1, 1)
    true_score = -(x_t - sde.alpha(t).reshape(-1, 1, 1) * x0) / sigma**2  # grad log p(x_t | x0)
    sm = (sigma**2 * (model.score(x_t, t) - true_score) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(loss, sm)
    assert loss.shape == (16,)


def test_uniform_times_range_and_reproducibility(sde):
    t, w = sample_t(sde, 1000, t_eps=1e-5, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and float(t.min()) >= 1e-5 and float(t.max()) <= sde.T
    assert torch.equal(w, torch.ones(1000))
    t2, _ = sample_t(sde, 1000, t_eps=1e-5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, t2)


def _numeric_cdf(sde, t_eps):
    # the CDF of p(t) ∝ g^2 / sigma^2 by trapezoid on a fine geometric grid (w ~ 1/t near 0 for VP)
    grid = torch.from_numpy(np.geomspace(t_eps, sde.T, 200_001))
    w = likelihood_weight(sde, grid)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(w, grid)])
    return grid.numpy(), (cdf / cdf[-1]).numpy(), float(cdf[-1])


def test_likelihood_importance_sampling_matches_the_weight(sde):
    # KS test, n = 4000, seed 0: the sampled t follow p(t) ∝ g^2 / sigma^2 computed numerically
    t_eps = max(1e-5, sde.t_eps_likelihood) if isinstance(sde, DiscreteVPSDE) else 1e-5
    t, w = sample_t(sde, 4000, time_sampling="likelihood", t_eps=t_eps, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    grid, cdf, Z = _numeric_cdf(sde, t_eps)
    p = stats.kstest(t.numpy(), lambda s: np.interp(s, grid, cdf)).pvalue
    assert p > 1e-3
    # each sample carries Z / (T - t_eps) with Z = int g^2 / sigma^2 dt
    # (rtol 1e-2: the trapezoid rule across the kinks of the discrete cosine schedule is off by 0.3 %)
    torch.testing.assert_close(w, torch.full_like(w, Z / (sde.T - t_eps)), rtol=1e-2, atol=0)


def test_likelihood_estimator_is_unbiased():
    # E_p[weight * h(t)] = E_{U(t_eps, T)}[g^2 / sigma^2 * h(t)] for h(t) = t (quadrature), n = 200000
    sde = VPSDE()
    t, w = sample_t(sde, 200_000, time_sampling="likelihood", generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    est = float((w * t).mean())
    grid = torch.linspace(1e-5, 1.0, 1_000_001, dtype=torch.float64)
    exact = float(torch.trapezoid(likelihood_weight(sde, grid) * grid, grid)) / (1.0 - 1e-5)
    assert abs(est - exact) / exact < 0.01


def test_discrete_L_simple_uses_integer_timesteps():
    sde = DiscreteVPSDE()
    seen = []

    def net(x, c):
        seen.append(c)
        return torch.zeros_like(x)

    model = ScoreModel(net, sde, "eps", c_noise="timestep")
    x0 = torch.randn(512, 1, 2, 2)
    loss = dsm_loss(model, x0, time_sampling="discrete", generator=torch.Generator().manual_seed(0))
    n = seen[0]
    torch.testing.assert_close(n, n.round(), atol=1e-3, rtol=0)  # the net sees n in 0..N-1
    assert 0 <= float(n.min()) and float(n.max()) <= 999 and len(set(n.round().tolist())) > 300
    # with eps_theta = 0 L_simple is E||eps||^2 / D = 1
    assert abs(float(loss.mean()) - 1.0) < 0.05
    t, _ = sample_t(sde, 64, time_sampling="discrete", generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = torch.round(t * sde.N - 1).long()
    torch.testing.assert_close(sde.alpha(t) ** 2, sde.alphas_cumprod[steps])  # alpha^2 = abar_n at the knots


def test_discrete_needs_a_discrete_schedule():
    with pytest.raises(ValueError, match="needs a DiscreteVPSDE"):
        sample_t(VPSDE(), 4, time_sampling="discrete")
    with pytest.raises(ValueError, match="choose one of"):
        sample_t(VPSDE(), 4, time_sampling="log_normal")
    with pytest.raises(ValueError, match="t_eps"):
        sample_t(VPSDE(), 4, t_eps=0.0)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_exact_model_reaches_the_dsm_minimum(sde):
    # the exact eps of Gaussian data gives a smaller loss than a perturbed one: DSM is minimized by E[eps | x_t]
    from scoresde import AnalyticModel, Gaussian

    data = Gaussian(torch.zeros(4, dtype=torch.float64), 0.5)
    exact = AnalyticModel(data, sde)

    class Off:
        def __init__(self):
            self.sde = sde

        def eps(self, x, t):
            return exact.eps(x, t) + 0.1

    x0 = data.sample(4000, generator=torch.Generator().manual_seed(0))
    l_exact = dsm_loss(exact, x0, generator=torch.Generator().manual_seed(1)).mean()
    l_off = dsm_loss(Off(), x0, generator=torch.Generator().manual_seed(1)).mean()
    torch.testing.assert_close(l_off - l_exact, torch.tensor(0.01, dtype=torch.float64), rtol=0.2, atol=0)


def test_label_dropout_rate_and_conditional_loss():
    # n = 20000, seed 0: the dropped fraction is within 4 standard deviations of p = 0.1
    y = torch.zeros(20_000, dtype=torch.long)
    dropped = drop_labels(y, 0.1, 10, generator=torch.Generator().manual_seed(0)) == 10
    assert abs(float(dropped.float().mean()) - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 20_000)
    model = ScoreModel(Affine(), VPSDE(), "eps")
    x0 = torch.randn(8, 3, dtype=torch.float64)
    yl = torch.arange(8)
    a = dsm_loss(model, x0, y=yl, null_label=10, generator=torch.Generator().manual_seed(0))
    b = dsm_loss(model, x0, y=yl, null_label=10, generator=torch.Generator().manual_seed(0))
    c = dsm_loss(model, x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="null_label"):
        dsm_loss(model, x0, y=yl)
    with pytest.raises(ValueError, match="p_uncond"):
        dsm_loss(model, x0, y=yl, null_label=10, p_uncond=1.5)


def test_loss_gradient_flows_and_dtype():
    net = Affine().float()
    model = ScoreModel(net, VPSDE(), "eps")
    loss = dsm_loss(model, torch.randn(4, 3), time_sampling="likelihood", generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32
    loss.mean().backward()
    assert net.w.grad is not None
