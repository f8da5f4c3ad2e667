"""scoresde.likelihood against the exact densities of the analytic Gaussian models (float64, CPU).

The probability-flow ODE computes prior_logp(z) + int div F dt, which equals
log p_{t_eps}(x) - log p_T(z) + prior_logp(z) exactly; the last two terms (the prior mismatch,
about 3e-4 bits/dim here for VP) are added to the reference wherever a check is tighter than that.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis.strategies import floats
from scipy import integrate, stats

from scoresde.analytic import AnalyticModel, Gaussian, GaussianMixture
from scoresde.likelihood import (
    Likelihood, bits_per_dim, bpd_from_logp, dequantization_offset, dequantize, exponential_step, log_likelihood,
    phi_coefficients, simpson_weights,
)
from scoresde.param import ScoreModel
from scoresde.sde import VESDE, VPSDE, DiscreteVPSDE, SubVPSDE

F64 = torch.float64
LN2 = math.log(2.0)

SDES = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "cosine": lambda: VPSDE(schedule="cosine"),
    "discrete": DiscreteVPSDE,
}


def gaussian(d: int, seed: int = 0) -> Gaussian:
    gen = torch.Generator().manual_seed(seed)
    return Gaussian(0.3 * torch.randn(d, generator=gen, dtype=F64), 0.2 + 0.5 * torch.rand(d, generator=gen, dtype=F64))


def mixture(d: int, seed: int = 0) -> GaussianMixture:
    gen = torch.Generator().manual_seed(seed)
    means = 0.5 * torch.randn(3, d, generator=gen, dtype=F64)
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=F64), means, torch.tensor([0.3, 0.5, 0.4], dtype=F64))


def full(value: float, n: int) -> torch.Tensor:
    return torch.full((n,), float(value), dtype=F64)


def ode_reference(model: AnalyticModel, x: torch.Tensor, z: torch.Tensor, t_eps: float) -> torch.Tensor:
    """What the ODE computes exactly: log p_{t_eps}(x) - log p_T(z) + prior_logp(z), (B,) nats."""
    sde, n = model.sde, x.shape[0]
    return model.log_prob(x, full(t_eps, n)) - model.log_prob(z, full(sde.T, n)) + sde.prior_logp(z)


def default_bpd_error(data: GaussianMixture, n: int, gen: torch.Generator, seed: int) -> tuple[float, Likelihood]:
    """log_likelihood with its defaults on n exact samples of `data` under VP (probe generator seeded `seed`):
    the mean |bpd - exact bpd of x under p_{t_eps}| (no prior-mismatch correction) and the result."""
    sde = VPSDE()
    model = AnalyticModel(data, sde)
    x = data.sample(n, generator=gen)
    res = log_likelihood(model, x, generator=torch.Generator().manual_seed(seed))
    exact = bpd_from_logp(model.log_prob(x, full(sde.t_eps_likelihood, n)), data.dim)
    return float((res.bpd - exact).abs().mean()), res


# ------------------------------------------------------------------ exactness against closed forms


@pytest.mark.parametrize("kind", list(SDES))
@pytest.mark.parametrize("law", ["gaussian", "mixture"])
def test_analytic_divergence_matches_exact_density(kind, law):
    """d = 64, closed-form divergence, rtol = atol = 1e-7: mean |bpd error| <= 1e-4."""
    sde = SDES[kind]()
    data = gaussian(64) if law == "gaussian" else mixture(64)
    model = AnalyticModel(data, sde)
    x = data.sample(8, generator=torch.Generator().manual_seed(1))
    res = log_likelihood(model, x, divergence="analytic", rtol=1e-7, atol=1e-7)
    ref = ode_reference(model, x, res.z, sde.t_eps_likelihood)
    err = (res.bpd - bpd_from_logp(ref, 64)).abs().mean()
    assert err <= 1e-4, f"{kind}/{law}: mean bpd error {float(err):.2e}"
    if law == "gaussian":  # the latent is the exact flow map of the data point
        torch.testing.assert_close(res.z, model.flow_map(x, sde.t_eps_likelihood, sde.T), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_autograd_exact_divergence_matches_exact_density(kind):
    """The autograd trace (one backward pass per dimension) on the d = 64 mixture, rtol = atol = 1e-7."""
    sde = SDES[kind]()
    data = mixture(64)
    model = AnalyticModel(data, sde)
    x = data.sample(4, generator=torch.Generator().manual_seed(2))
    res = log_likelihood(model, x, divergence="exact", rtol=1e-7, atol=1e-7)
    ref = ode_reference(model, x, res.z, sde.t_eps_likelihood)
    assert (res.bpd - bpd_from_logp(ref, 64)).abs().mean() <= 1e-4
    assert torch.all(res.logp_se == 0)


def test_gaussian_3072_hutchinson_default_tolerances():
    """d = 3 x 32 x 32 Gaussian, Rademacher Hutchinson, default dopri5 rtol = atol = 1e-5, 64 points:
    mean |bpd - exact bpd of x under p_{t_eps}| <= 0.01 (no prior-mismatch correction here)."""
    gen = torch.Generator().manual_seed(3)
    data = Gaussian(0.5 * torch.rand(3, 32, 32, generator=gen, dtype=F64) - 0.25,
                    0.1 + 0.3 * torch.rand(3, 32, 32, generator=gen, dtype=F64))
    assert data.dim == 3072
    err, res = default_bpd_error(data, 64, gen, seed=4)
    assert err <= 0.01
    assert res.settings["rtol"] == res.settings["atol"] == 1e-5 and res.settings["method"] == "dopri5"
    assert res.settings["probe"] == "rademacher" and res.settings["t_eps"] == 1e-5


# ------------------------------------------------------------------ Hutchinson statistics


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_and_standard_error(probe):
    """64 single-probe estimates (one call, n_probes = 64): each point's mean lies within 3 reported
    standard errors of the exact-divergence answer; the reported standard error of an n_probes = 4
    call matches the spread of 16 independent such calls (pooled over 4 points, 60 degrees of
    freedom: the ratio has relative sd ≈ 0.09, so [0.7, 1.4] is a > 3 sd band).

    The fixed-budget mode walks the same trajectory whatever the probes, so its Hutchinson estimate
    differs from the exact one by probe noise alone; the adaptive mode is checked at the end."""
    data = mixture(64)
    model = AnalyticModel(data, VPSDE())
    x = data.sample(4, generator=torch.Generator().manual_seed(5))
    fixed = dict(method="dpm_solver", steps=40)
    exact = log_likelihood(model, x, divergence="analytic", **fixed).logp
    res = log_likelihood(model, x, n_probes=64, probe=probe, generator=torch.Generator().manual_seed(6), **fixed)
    assert torch.all(res.logp_se > 0)
    z = (res.logp - exact) / res.logp_se
    assert torch.all(z.abs() <= 3.0), f"z-scores {z.tolist()}"

    gen = torch.Generator().manual_seed(7)
    runs = [log_likelihood(model, x, n_probes=4, probe=probe, generator=gen, **fixed) for _ in range(16)]
    logps = torch.stack([r.logp for r in runs])  # (16, 4)
    spread = (logps - logps.mean(0)).pow(2).sum(0) / 15  # per-point variance of an n_probes = 4 estimate
    reported = torch.stack([r.logp_se for r in runs]).pow(2).mean(0)
    ratio = math.sqrt(float(spread.mean() / reported.mean()))
    assert 0.7 <= ratio <= 1.4, f"empirical / reported standard error = {ratio:.3f}"

    adaptive = log_likelihood(model, x, n_probes=64, probe=probe, generator=torch.Generator().manual_seed(8))
    exact_adaptive = log_likelihood(model, x, divergence="analytic").logp
    assert torch.all((adaptive.logp - exact_adaptive).abs() <= 3.5 * adaptive.logp_se)


def test_single_probe_has_no_standard_error():
    data = mixture(8)
    model = AnalyticModel(data, VPSDE())
    res = log_likelihood(model, data.sample(3, generator=torch.Generator().manual_seed(0)),
                         generator=torch.Generator().manual_seed(1))
    assert torch.all(torch.isnan(res.logp_se)) and torch.all(torch.isnan(res.bpd_se))


# ------------------------------------------------------------------ fixed-grid and fixed-budget modes


def test_fixed_budget_converges_at_third_order():
    """dpm_solver on the d = 64 mixture: log error against log step count has slope <= -2.5
    (third-order x-part, Simpson quadrature), and 40 steps are within 2e-3 bits/dim."""
    data = mixture(64)
    model = AnalyticModel(data, VPSDE())
    x = data.sample(8, generator=torch.Generator().manual_seed(8))
    ref = log_likelihood(model, x, divergence="analytic", rtol=1e-9, atol=1e-9)
    steps = [20, 40, 80]
    errs = []
    for n in steps:
        res = log_likelihood(model, x, method="dpm_solver", steps=n, divergence="analytic")
        assert res.nfe == n + 1
        errs.append(float((res.bpd - ref.bpd).abs().mean()))
    slope = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert slope <= -2.5, f"errors {errs}, slope {slope:.2f}"
    assert errs[1] <= 2e-3


@pytest.mark.parametrize("method", ["rk4", "euler"])
def test_torchdiffeq_fixed_grid(method):
    data = gaussian(16)
    model = AnalyticModel(data, VPSDE())
    x = data.sample(4, generator=torch.Generator().manual_seed(9))
    res = log_likelihood(model, x, method=method, steps=200, divergence="analytic")
    ref = log_likelihood(model, x, divergence="analytic", rtol=1e-8, atol=1e-8)
    assert res.nfe == {"rk4": 4, "euler": 1}[method] * 200
    tol = {"rk4": 1e-5, "euler": 0.05}[method]
    assert (res.bpd - ref.bpd).abs().max() <= tol
    assert res.settings["steps"] == 200 and res.settings["grid"] == "uniform_lambda"
    assert res.settings["rtol"] is None


def test_lambda_variable_agrees_with_t():
    data = mixture(16)
    model = AnalyticModel(data, SubVPSDE())
    x = data.sample(4, generator=torch.Generator().manual_seed(10))
    a = log_likelihood(model, x, divergence="analytic", rtol=1e-8, atol=1e-8, variable="t")
    b = log_likelihood(model, x, divergence="analytic", rtol=1e-8, atol=1e-8, variable="lambda")
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.z, b.z, rtol=0, atol=1e-5)
    assert a.settings["variable"] == "t" and b.settings["variable"] == "lambda"
    # the discrete schedule's drift jumps at its knots in t: lambda is its default
    assert log_likelihood(AnalyticModel(data, DiscreteVPSDE()), x, divergence="analytic").settings["variable"] == "lambda"


def test_simpson_weights_exact_for_quadratics():
    gen = torch.Generator().manual_seed(11)
    for n in (1, 2, 5, 6):
        nodes = sorted(torch.rand(n + 1, generator=gen, dtype=F64).mul(4).sub(2).tolist(), reverse=True)
        w = simpson_weights(nodes)
        for poly in ([1.0], [0.3, -1.0], [2.0, 0.5, -1.5]):
            if n == 1 and len(poly) == 3:
                continue  # the trapezoid rule is exact for linear functions only
            f = np.polynomial.Polynomial(poly)
            exact = f.integ()(nodes[-1]) - f.integ()(nodes[0])
            assert abs(sum(wi * f(xi) for wi, xi in zip(w, nodes)) - exact) <= 1e-12


@given(h=floats(-3.0, 3.0).filter(lambda h: abs(h) > 1e-6))
@settings(max_examples=50, deadline=None)
def test_phi_coefficients_match_quadrature(h):
    """phi_{k+1} = int_0^h e^{u - h} u^k / k! du, for both signs of h (h < 0 when noising), to round-off
    (phi_2 = h - phi_1 and phi_3 = h^2/2 - phi_2 cancel to an absolute error of order eps |h|)."""
    for k, phi in enumerate(phi_coefficients(h)):
        num = integrate.quad(lambda u: math.exp(u - h) * u**k / math.factorial(k), 0.0, h, epsabs=0, epsrel=1e-13)[0]
        assert abs(phi - num) <= 1e-13 * max(abs(num), abs(h))


def test_exponential_step_exact_for_quadratic_x0():
    """A step with a quadratic x0(lambda) and its exact derivatives reproduces the ODE solution."""
    # VE (alpha = 1, sigma = e^-lam): dx/dlam = sigma^2 score = x0(lam) - x; exact solution for
    # x0(lam) = c0 + c1 lam + c2 lam^2 by variation of constants, compared with one step
    c = [0.3, -0.2, 0.1]
    lam_s, lam_t = 1.0, 0.4
    x0 = lambda lam: c[0] + c[1] * lam + c[2] * lam**2  # noqa: E731
    x_s = torch.tensor([[0.7]], dtype=F64)
    sol = integrate.solve_ivp(lambda lam, x: x0(lam) - x, (lam_s, lam_t), [0.7], rtol=1e-12, atol=1e-12).y[0, -1]
    D0, D1, D2 = (torch.tensor([[v]], dtype=F64) for v in (x0(lam_s), c[1] + 2 * c[2] * lam_s, 2 * c[2]))
    sig = lambda lam: torch.tensor([math.exp(-lam)], dtype=F64)  # noqa: E731
    x_t = exponential_step(x_s, D0, D1, D2, sig(lam_s), sig(lam_t), torch.ones(1, dtype=F64), lam_t - lam_s)
    assert abs(float(x_t) - sol) <= 1e-9


# ------------------------------------------------------------------ bits/dim and dequantization


def test_dequantization_offset_values():
    assert dequantization_offset(256) == 7.0
    assert dequantization_offset(17) == pytest.approx(math.log2(8.5))
    assert dequantization_offset(2) == 0.0


def test_dequantize_convention():
    """Level k of the grid {-1 + 2k/(K-1)} lands uniformly in [-1 + 2k/K, -1 + 2(k+1)/K)."""
    K = 17
    k = torch.arange(K, dtype=F64).repeat(2000, 1)  # (2000, 17)
    x = -1 + 2 * k / (K - 1)
    u = dequantize(x, K, generator=torch.Generator().manual_seed(12))
    frac = (u + 1) * K / 2 - k
    assert torch.all((frac >= 0) & (frac <= 1))
    assert stats.kstest(frac.flatten().numpy(), "uniform").pvalue > 1e-3


def test_bits_per_dim_equals_expected_code_length():
    """Integer data on 17 levels, analytic Gaussian (zero mean, so the prior mismatch is < 1e-5 bits/dim):
    bits_per_dim equals E_u[-log2 p_{t_eps}(x + u)] / d + log2(17/2), the expectation over each
    bin computed independently by scipy quadrature; 32 dequantization draws, |error| <= 4 reported
    standard errors per point."""
    K, d, B = 17, 16, 4
    gen = torch.Generator().manual_seed(13)
    std = 0.2 + 0.3 * torch.rand(d, generator=gen, dtype=F64)
    data = Gaussian(torch.zeros(d, dtype=F64), std)
    sde = VPSDE()
    model = AnalyticModel(data, sde)
    k = torch.clamp(torch.round((data.sample(B, generator=gen) + 1) * (K - 1) / 2), 0, K - 1)
    x = -1 + 2 * k / (K - 1)
    res = bits_per_dim(model, x, levels=K, repeats=32, divergence="analytic", rtol=1e-6, atol=1e-6,
                       generator=torch.Generator().manual_seed(14))

    t = torch.tensor([sde.t_eps_likelihood], dtype=F64)
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    scale = np.sqrt(a**2 * std.numpy() ** 2 + s**2)
    expected = np.zeros(B)
    for b in range(B):
        for i in range(d):
            lo = -1 + 2 * float(k[b, i]) / K
            hi = lo + 2 / K
            mean_logp = integrate.quad(lambda v: stats.norm.logpdf(v, 0.0, scale[i]), lo, hi)[0] / (hi - lo)
            expected[b] += -mean_logp / LN2
    expected = expected / d + math.log2(K / 2)
    z = (res.bpd.numpy() - expected) / res.bpd_se.numpy()
    assert np.all(np.abs(z) <= 4.0), f"z-scores {z}"
    assert res.settings["levels"] == K and res.settings["repeats"] == 32 and res.settings["dequantization"] == "uniform"


def test_bits_per_dim_is_dequantized_likelihood_plus_offset():
    """No hidden constants: one round of bits_per_dim equals log_likelihood of the same dequantized
    draw plus log2(K/2) (same generator, same order of draws: dequantization, then probes)."""
    K = 256
    data = mixture(12)
    model = AnalyticModel(data, VPSDE())
    x = torch.round((torch.clamp(data.sample(3, generator=torch.Generator().manual_seed(15)), -1, 1) + 1) * 255 / 2) * 2 / 255 - 1
    res = bits_per_dim(model, x, levels=K, generator=torch.Generator().manual_seed(16))
    gen = torch.Generator().manual_seed(16)
    xq = dequantize(x, K, generator=gen)
    cont = log_likelihood(model, xq, generator=gen)
    torch.testing.assert_close(res.bpd, cont.bpd + 7.0, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.logp, cont.logp + 12 * math.log(2 / K), rtol=0, atol=1e-10)
    torch.testing.assert_close(res.bpd, bpd_from_logp(res.logp, 12), rtol=0, atol=1e-12)
    assert torch.all(torch.isnan(res.bpd_se))  # one dequantization draw cannot estimate its variance


def test_bits_per_dim_continuous_has_no_offset():
    data = mixture(8)
    model = AnalyticModel(data, VPSDE())
    x = data.sample(3, generator=torch.Generator().manual_seed(17))
    a = bits_per_dim(model, x, levels=None, divergence="analytic")
    b = log_likelihood(model, x, divergence="analytic")
    torch.testing.assert_close(a.bpd, b.bpd, rtol=0, atol=0)
    assert a.settings["levels"] is None and a.settings["dequantization"] is None


# ------------------------------------------------------------------ batches, labels, dtypes


@pytest.mark.parametrize("method,steps", [("dpm_solver", 20), ("rk4", 10), ("dopri5", None)])
def test_batch_independence_with_per_sample_generators(method, steps):
    """With one generator per sample, a sample's probes do not depend on its batch. Fixed grids give
    the same logp alone and in a batch; the adaptive solver picks one step sequence for the whole
    batch, so there the results agree to the solver tolerance."""
    data = mixture(32)
    model = AnalyticModel(data, VPSDE())
    x = data.sample(5, generator=torch.Generator().manual_seed(18))
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = log_likelihood(model, x, method=method, steps=steps, generator=gens(range(100, 105)))
    for i in (0, 3):
        alone = log_likelihood(model, x[i : i + 1], method=method, steps=steps, generator=gens([100 + i]))
        atol = 1e-10 if steps else 1e-3
        torch.testing.assert_close(alone.logp, batch.logp[i : i + 1], rtol=0, atol=atol)


class _LabelledModel:
    """A conditional model: label 0 or 1 selects one of two analytic models."""

    def __init__(self, m0, m1):
        self.m0, self.m1, self.sde = m0, m1, m0.sde

    def score(self, x, t, y=None):
        pick = (y == 1).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(pick, self.m1.score(x, t), self.m0.score(x, t))


def test_label_is_passed_to_the_model():
    sde = VPSDE()
    d0, d1 = gaussian(8, seed=0), gaussian(8, seed=1)
    m0, m1 = AnalyticModel(d0, sde), AnalyticModel(d1, sde)
    x = torch.cat([d0.sample(2, generator=torch.Generator().manual_seed(0)), d1.sample(2, generator=torch.Generator().manual_seed(1))])
    y = torch.tensor([0, 0, 1, 1])
    res = log_likelihood(_LabelledModel(m0, m1), x, y=y, divergence="exact", method="dpm_solver", steps=30)
    r0 = log_likelihood(m0, x[:2], divergence="exact", method="dpm_solver", steps=30)
    r1 = log_likelihood(m1, x[2:], divergence="exact", method="dpm_solver", steps=30)
    torch.testing.assert_close(res.logp, torch.cat([r0.logp, r1.logp]), rtol=0, atol=1e-9)


def test_score_model_float32_with_label():
    """A ScoreModel around a tiny conditional network, float32: runs in float32, finite, counts NFE."""
    torch.manual_seed(0)  # only for the network's initial weights in this test

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(12, 12)
            self.emb = torch.nn.Embedding(3, 12)

        def forward(self, x, c, y):
            h = x.flatten(1)
            return (torch.tanh(self.lin(h)) * torch.cos(c)[:, None] + self.emb(y)).reshape(x.shape)

    model = ScoreModel(Net(), VPSDE(), prediction="eps", c_noise="log_noise")
    x = torch.rand(3, 3, 2, 2) * 2 - 1
    res = log_likelihood(model, x, y=torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    assert res.logp.dtype == torch.float32 and res.z.dtype == torch.float32
    assert res.logp.shape == (3,) and res.z.shape == x.shape and torch.all(torch.isfinite(res.logp))
    assert res.nfe > 0


def test_result_is_frozen_and_documented_defaults():
    data = mixture(8)
    model = AnalyticModel(data, VESDE())
    x = data.sample(2, generator=torch.Generator().manual_seed(19))
    res = log_likelihood(model, x, generator=torch.Generator().manual_seed(0))
    assert isinstance(res, Likelihood)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.nfe = 0
    with pytest.raises(TypeError):
        res.settings["rtol"] = 1.0
    assert dict(res.settings) == {
        "method": "dopri5", "rtol": 1e-5, "atol": 1e-5, "steps": None, "grid": None, "variable": "t",
        "t_eps": 1e-5, "T": 1.0, "divergence": "hutchinson", "probe": "rademacher", "n_probes": 1,
        "levels": None, "repeats": 1, "dequantization": None,
    }
    torch.testing.assert_close(res.bpd, -res.logp / (8 * LN2))
    # bits_per_dim defaults: 256 levels, one repeat
    xq = torch.round((torch.clamp(x, -1, 1) + 1) * 255 / 2) * 2 / 255 - 1
    assert bits_per_dim(model, xq, generator=torch.Generator().manual_seed(0)).settings["levels"] == 256


# ------------------------------------------------------------------ errors


@pytest.fixture
def small():
    data = mixture(4)
    return AnalyticModel(data, VPSDE()), data.sample(2, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="rk45"), r"unknown method 'rk45'; choose one of \['dopri5'"),
        (dict(divergence="skilling"), r"unknown divergence 'skilling'; choose one of \['hutchinson', 'exact', 'analytic'\]"),
        (dict(probe="normal"), r"unknown probe 'normal'; choose one of \['rademacher', 'gaussian'\]"),
        (dict(n_probes=0), r"n_probes must be an integer in \[1, 1024\], got 0"),
        (dict(divergence="exact", n_probes=4), r"n_probes=4 applies to divergence='hutchinson' only"),
        (dict(steps=10), r"steps applies to fixed-grid methods .* 'dopri5' is adaptive"),
        (dict(method="rk4"), r"method 'rk4' needs steps, an integer in \[1, 1000000\], got None"),
        (dict(method="dpm_solver", steps=1), r"'dpm_solver' needs steps >= 2"),
        (dict(method="rk4", steps=4, grid="log"), r"unknown grid 'log'; choose one of"),
        (dict(rtol=0.0), r"rtol must be a finite number > 0, got 0.0"),
        (dict(t_eps=1.5), r"t_eps must be a number in \(0, T=1.0\), got 1.5"),
        (dict(variable="sigma"), r"unknown variable 'sigma'; choose one of \['t', 'lambda'\] or None"),
        (dict(method="dpm_solver", steps=4, variable="t"), r"variable applies to the torchdiffeq methods"),
        (dict(generator=[torch.Generator()]), r"got 1 generators for a batch of 2; pass one per sample"),
    ],
)
def test_bad_options_raise(small, kwargs, match):
    model, x = small
    with pytest.raises(ValueError, match=match):
        log_likelihood(model, x, **kwargs)


def test_bad_inputs_raise(small):
    model, x = small
    with pytest.raises(ValueError, match=r"x must be a float tensor of shape \(B, \*D\)"):
        log_likelihood(model, x[0])
    with pytest.raises(ValueError, match=r"x must be a float tensor of shape \(B, \*D\)"):
        log_likelihood(model, x.long())
    with pytest.raises(ValueError, match="x contains NaN or infinite values"):
        log_likelihood(model, x * float("nan"))
    with pytest.raises(ValueError, match=r"a label y was given but AnalyticModel.score takes no y"):
        log_likelihood(model, x, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"y must have one label per sample, shape \(2, ...\), got \(3,\)"):
        log_likelihood(model, x, y=torch.tensor([0, 1, 2]))
    with torch.inference_mode(), pytest.raises(ValueError, match=r"returned a tensor without grad .*inference_mode"):
        log_likelihood(model, x)
    net_model = ScoreModel(lambda x, c: x, VPSDE())
    with pytest.raises(ValueError, match=r"divergence='analytic' needs a model with pf_divergence.*use 'exact' or 'hutchinson'"):
        log_likelihood(net_model, x.float(), divergence="analytic")


def test_bad_bits_per_dim_inputs_raise(small):
    model, x = small
    grid_x = torch.tensor([[-1.0, 1.0, 0.0, 1 / 3]], dtype=F64)  # levels 0, 3, 1.5 (off), 2 of K = 4
    with pytest.raises(ValueError, match=r"x is not on the grid of 4 levels \{-1 \+ 2k/3 : k = 0..3\}.*levels=None"):
        bits_per_dim(model, grid_x, levels=4)
    with pytest.raises(ValueError, match=r"x is not on the grid of 256 levels"):
        bits_per_dim(model, torch.full((1, 4), 1.5, dtype=F64))
    with pytest.raises(ValueError, match=r"levels must be an integer >= 2 \(256 for 8-bit data, 17 for digits\) or None, got 1"):
        bits_per_dim(model, x, levels=1)
    with pytest.raises(ValueError, match=r"repeats must be an integer >= 1, got 0"):
        bits_per_dim(model, x, levels=None, repeats=0)


def test_mixture_3072_hutchinson_default_tolerances():
    """d = 3072 ten-component mixture, Rademacher Hutchinson, defaults, 16 points: mean |error| <= 0.01 bpd."""
    gen = torch.Generator().manual_seed(20)
    data = GaussianMixture(torch.ones(10, dtype=F64), torch.rand(10, 3, 32, 32, generator=gen, dtype=F64) * 1.6 - 0.8,
                           torch.linspace(0.05, 0.3, 10, dtype=F64))
    assert data.dim == 3072
    err, _ = default_bpd_error(data, 16, gen, seed=21)
    assert err <= 0.01
