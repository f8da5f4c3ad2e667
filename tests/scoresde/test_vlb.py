"""The variational bound: decoder, bound property on an analytic Gaussian, learned variances."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from scoresde import AnalyticModel, DiscreteVPSDE, Gaussian, VPSDE
from scoresde.vlb import discretized_gaussian_log_prob, vlb_bits_per_dim

F64 = torch.float64
K = 256
MEAN = torch.tensor([0.1, -0.3, 0.5, 0.0], dtype=F64)
STD = torch.tensor([0.3, 0.2, 0.4, 0.25], dtype=F64)


def quantized(n, levels=K, seed=0):
    x = Gaussian(MEAN, STD).sample(n, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)
    return torch.round((x + 1) * (levels - 1) / 2) * 2 / (levels - 1) - 1


def exact_bits_per_dim(x, levels=K):
    """-log2 P(bin of x) per dim under the data Gaussian, from scipy's normal CDF."""
    h = 1.0 / (levels - 1)
    xs = x.numpy()
    lo = np.where(xs < -1 + h, -np.inf, xs - h)
    hi = np.where(xs > 1 - h, np.inf, xs + h)
    p = scipy.stats.norm.cdf(hi, MEAN.numpy(), STD.numpy()) - scipy.stats.norm.cdf(lo, MEAN.numpy(), STD.numpy())
    return torch.from_numpy(-np.log2(p).sum(1) / xs.shape[1])


def test_decoder_matches_scipy_and_normalizes():
    levels = 17
    grid = torch.linspace(-1, 1, levels, dtype=F64)
    mean, std = torch.tensor(0.37, dtype=F64), torch.tensor(0.2, dtype=F64)
    logp = discretized_gaussian_log_prob(grid, mean, std, levels)
    edges = np.concatenate([[-np.inf], (grid[:-1] + 1 / (levels - 1)).numpy(), [np.inf]])
    expected = np.log(np.diff(scipy.stats.norm.cdf(edges, 0.37, 0.2)))
    torch.testing.assert_close(logp, torch.from_numpy(expected), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.logsumexp(logp, 0), torch.tensor(0.0, dtype=F64), rtol=0, atol=1e-12)
    # far tails stay finite (no log(0))
    far = discretized_gaussian_log_prob(grid, torch.tensor(-0.9, dtype=F64), torch.tensor(0.01, dtype=F64), levels)
    assert bool(torch.isfinite(far).all()) and float(far[-2]) < -1000


@pytest.mark.parametrize("sde", [DiscreteVPSDE(), VPSDE()], ids=["ddpm", "vp"])
def test_bound_holds_and_tightens_with_steps(sde):
    """1,024 points: the bound minus the exact discrete code length is > -3 standard errors at every
    step count, and the mean gap falls from 10 to 100 to 999 steps (about 0.6, 0.11, 0.075 bits)."""
    x = quantized(1024)
    exact = exact_bits_per_dim(x)
    model = AnalyticModel(Gaussian(MEAN, STD), sde)
    gaps = []
    for steps in (10, 100, 999):
        res = vlb_bits_per_dim(model, x, levels=K, steps=steps, variance="large", generator=torch.Generator().manual_seed(1))
        gap = res.bpd - exact
        se = gap.std() / math.sqrt(len(gap))
        assert float(gap.mean()) > -3 * float(se), (steps, float(gap.mean()), float(se))
        torch.testing.assert_close(res.bpd, res.decoder + res.kl.sum(1) + res.prior)
        assert res.kl.shape == (1024, steps) and res.nfe == steps + 1
        gaps.append(float(gap.mean()))
    assert gaps[0] > gaps[1] + 0.2 and gaps[1] > gaps[2] and gaps[2] < 0.15, gaps


def test_ddpm_knots_give_ho_et_al_terms():
    """With every knot of the DDPM schedule, 'large' uses beta_n and 'small' beta_tilde_n."""
    sde = DiscreteVPSDE()
    x = quantized(8)
    model = AnalyticModel(Gaussian(MEAN, STD), sde)
    res = vlb_bits_per_dim(model, x, levels=K, generator=torch.Generator().manual_seed(0))
    assert res.kl.shape == (8, 999) and float(res.ts[0]) == 1e-3 and float(res.ts[-1]) == 1.0
    # prior term: KL(N(alpha_T x, sigma_T^2) || N(0, 1)) for the linear schedule is tiny
    assert float(res.prior.max()) < 1e-4


def test_optimal_learned_variance_beats_fixed_ones():
    """The analytic reverse-kernel variance beta_tilde + c^2 Var[x0 | x_t], given to the learned head
    through v = log(Sigma / beta_tilde) / log(beta / beta_tilde), gives the lowest bound at 20 steps."""
    sde = VPSDE()
    data = Gaussian(MEAN, STD)
    model = AnalyticModel(data, sde)
    x = quantized(2048)
    steps = 20
    ts = torch.linspace(sde.t_eps, sde.T, steps + 1, dtype=F64)
    prev = {float(t): float(s) for t, s in zip(ts[1:], ts[:-1])}

    def head(x_t, t):
        t_cur = float(t[0])
        tt = torch.tensor([prev[t_cur], t_cur], dtype=F64)
        (a_s, a_t), (s_s, s_t) = sde.alpha(tt), sde.sigma(tt)
        a_ts = a_t / a_s
        beta = s_t**2 - a_ts**2 * s_s**2
        beta_tilde = beta * s_s**2 / s_t**2
        c_x0 = a_s * beta / s_t**2
        var_x0 = STD**2 * s_t**2 / (a_t**2 * STD**2 + s_t**2)
        sigma_opt = beta_tilde + c_x0**2 * var_x0
        return (torch.log(sigma_opt / beta_tilde) / torch.log(beta / beta_tilde)).expand_as(x_t)

    results = {
        var: vlb_bits_per_dim(
            model, x, levels=K, steps=steps, variance=var, variance_head=head if var == "learned" else None,
            generator=torch.Generator().manual_seed(2),
        ).bpd.mean().item()
        for var in ("small", "large", "learned")
    }
    assert results["learned"] < results["large"] < results["small"], results


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(variance="medium"), r"unknown variance 'medium'; choose one of \['small', 'large', 'learned'\]"),
        (dict(variance="learned"), "variance='learned' needs variance_head"),
        (dict(levels=1), "levels must be an integer >= 2"),
        (dict(steps=0), r"steps must be an integer in \[1, 1000000\]"),
        (dict(steps=5000), "steps must be at most N - 1 = 999"),
    ],
)
def test_bad_arguments(kwargs, match):
    model = AnalyticModel(Gaussian(MEAN, STD), DiscreteVPSDE())
    with pytest.raises(ValueError, match=match):
        vlb_bits_per_dim(model, quantized(2), **kwargs)


def test_data_must_be_quantized():
    model = AnalyticModel(Gaussian(MEAN, STD), VPSDE())
    with pytest.raises(ValueError, match="x must lie on the 256-level grid"):
        vlb_bits_per_dim(model, torch.full((1, 4), 0.001, dtype=F64), steps=3)
    with pytest.raises(ValueError, match="steps is required for a continuous-time SDE"):
        vlb_bits_per_dim(model, quantized(2))
