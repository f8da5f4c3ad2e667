"""The analytic ground truth is itself checked: autograd, scipy, sampling, the exact flow map."""

import math

import pytest
import scipy.stats
import torch

from scoresde import AnalyticModel, Gaussian, GaussianMixture

from .conftest import all_sdes

F64 = torch.float64


def mixture(dim=4, diagonal=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(3, dim, dtype=F64, generator=gen)
    stds = 0.1 + torch.rand((3, dim) if diagonal else (3,), dtype=F64, generator=gen)
    return GaussianMixture(torch.tensor([0.2, 0.5, 0.3], dtype=F64), means, stds)


def _points(model, t_value, n=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = model.sample(n, t_value, generator=gen)
    return x, torch.full((n,), t_value, dtype=F64)


@pytest.mark.parametrize("diagonal", [True, False])
def test_score_is_gradient_of_log_prob(sde, diagonal):
    model = AnalyticModel(mixture(diagonal=diagonal), sde)
    for u in (0.05, 0.5, 0.95):
        x, t = _points(model, u * sde.T)
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(model.log_prob(x, t).sum(), x)
        torch.testing.assert_close(model.score(x.detach(), t), grad, rtol=1e-10, atol=1e-10)


def test_divergence_matches_autograd(sde):
    model = AnalyticModel(mixture(dim=3), sde)
    x, t = _points(model, 0.4 * sde.T)
    x.requires_grad_(True)
    drift = sde.pf_drift(x, t, model.score(x, t))
    div = sum(torch.autograd.grad(drift[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(3))
    torch.testing.assert_close(model.pf_divergence(x.detach(), t), div, rtol=1e-10, atol=1e-10)


def test_predictions_agree(sde):
    model = AnalyticModel(mixture(), sde)
    x, t = _points(model, 0.3 * sde.T)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    torch.testing.assert_close(a * model.x0(x, t) + s * model.eps(x, t), x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.v(x, t), a * model.eps(x, t) - s * model.x0(x, t))


def test_data_log_prob_matches_scipy():
    data = mixture(dim=3)
    x = data.sample(7, generator=torch.Generator().manual_seed(2))
    w = data.weights.numpy()
    dens = sum(
        w[k] * scipy.stats.multivariate_normal(data.means[k].numpy(), torch.diag(data.stds[k] ** 2).numpy()).pdf(x.numpy())
        for k in range(3)
    )
    torch.testing.assert_close(data.log_prob(x), torch.from_numpy(math.log(1) + torch.log(torch.from_numpy(dens)).numpy()))


def test_marginal_is_the_noised_mixture(sde):
    """log p_t equals the data density convolved with the kernel: check against scipy at one t."""
    data = mixture(dim=2, seed=3)
    model = AnalyticModel(data, sde)
    t = torch.full((4,), 0.6 * sde.T, dtype=F64)
    a, s = float(sde.alpha(t[:1])), float(sde.sigma(t[:1]))
    x, _ = _points(model, 0.6 * sde.T, n=4, seed=5)
    w = data.weights.numpy()
    dens = sum(
        w[k] * scipy.stats.multivariate_normal(a * data.means[k].numpy(), torch.diag(a**2 * data.stds[k] ** 2 + s**2).numpy()).pdf(x.numpy())
        for k in range(3)
    )
    torch.testing.assert_close(model.log_prob(x, t), torch.log(torch.from_numpy(dens)), rtol=1e-9, atol=1e-9)


def test_exact_samples_have_the_marginal_moments():
    """20,000 samples of p_t for a Gaussian: mean and std within 4 standard errors."""
    sde = all_sdes()["vp"]
    data = Gaussian(torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 0.1], dtype=F64))
    model = AnalyticModel(data, sde)
    n, t = 20000, 0.3
    x = model.sample(n, t, generator=torch.Generator().manual_seed(0))
    tt = torch.tensor([t], dtype=F64)
    a, s = sde.alpha(tt), sde.sigma(tt)
    std = torch.sqrt(a**2 * data.std**2 + s**2)
    assert bool(torch.all((x.mean(0) - a * data.mean).abs() < 4 * std / math.sqrt(n)))
    assert bool(torch.all((x.std(0) - std).abs() < 4 * std / math.sqrt(2 * n)))


def test_flow_map_solves_the_probability_flow_ode(sde):
    """d/ds flow_map(x, t, s) = pf_drift at the mapped point (central differences), and it composes."""
    data = Gaussian(torch.tensor([0.5, -1.0, 2.0], dtype=F64), torch.tensor([0.3, 1.0, 0.05], dtype=F64))
    model = AnalyticModel(data, sde)
    x, _ = _points(model, sde.T, n=4)
    t, s, h = sde.T, 0.4005 * sde.T, 1e-7  # s inside a segment of the discrete schedules
    xs = model.flow_map(x, t, s)
    deriv = (model.flow_map(x, t, s + h) - model.flow_map(x, t, s - h)) / (2 * h)
    ss = torch.full((4,), s, dtype=F64)
    torch.testing.assert_close(deriv, sde.pf_drift(xs, ss, model.score(xs, ss)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.flow_map(xs, s, 0.1 * sde.T), model.flow_map(x, t, 0.1 * sde.T))


def test_flow_map_only_for_one_gaussian():
    with pytest.raises(ValueError, match="flow_map is exact only for a single Gaussian"):
        AnalyticModel(mixture(), all_sdes()["vp"]).flow_map(torch.zeros(1, 4, dtype=F64), 1.0, 0.5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: GaussianMixture(torch.ones(2), torch.zeros(3, 2), torch.ones(3)), r"weights must have shape \(3,\)"),
        (lambda: GaussianMixture(torch.ones(3), torch.zeros(3, 2), torch.ones(2)), r"stds must have shape \(3,\) or \(3, 2\)"),
        (lambda: GaussianMixture(torch.ones(3), torch.zeros(3, 2), -torch.ones(3)), "weights and stds must be > 0"),
        (lambda: GaussianMixture(torch.ones(1), torch.zeros(3), torch.ones(1)), r"means must have shape \(K, \*D\)"),
        (lambda: Gaussian(torch.zeros(3), torch.ones(2)), "std must be a float or have the shape of mean"),
        (lambda: AnalyticModel("gaussian", all_sdes()["vp"]), "data must be a Gaussian or GaussianMixture"),
    ],
)
def test_bad_analytic_inputs(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_model_checks_shapes():
    model = AnalyticModel(mixture(dim=4), all_sdes()["vp"])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4\), got \(2, 3\)"):
        model.eps(torch.zeros(2, 3, dtype=F64), torch.full((2,), 0.5, dtype=F64))
