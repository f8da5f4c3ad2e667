"""Multistep consistency sampling (solvers/consistency.py) with consistency models (scoresde.fewstep.consistency)."""

import math

import pytest
import torch

import scoresde
import solvers
from scoresde import AnalyticModel, FlowSDE, Gaussian, VESDE, VPSDE, DiscreteVPSDE
from scoresde.fewstep.consistency import ConsistencyModel, FlowMapConsistency
from solvers.consistency import renoise_update, times_grid

F64 = torch.float64


class Net(torch.nn.Module):
    """A small fixed network F(x, c_noise) for (B, 2) data."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        torch.manual_seed(0)
        torch.nn.init.normal_(self.lin.weight)

    def forward(self, x, c):
        return torch.tanh(self.lin(torch.cat([x, c[:, None]], dim=1)))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_steps_are_evaluations_and_one_step_is_f_of_the_prior_draw(steps):
    """steps = N is N evaluations (NFE counted); steps = 1 returns f(x_T, T) for the same prior draw."""
    model = ConsistencyModel(Net().double(), VPSDE())
    x_T = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    res = scoresde.sample(model, solver="consistency", steps=steps, x_T=x_T, seed=3)
    assert res.nfe == steps and res.x.shape == (5, 2) and torch.isfinite(res.x).all()
    assert res.ts[0] == model.sde.T and res.ts[-1] == model.sde.t_eps
    if steps == 1:
        assert torch.equal(res.x, model.consistency(x_T, torch.full((5,), model.sde.T, dtype=F64)))


def test_deterministic_given_the_seed_and_the_boundary_condition_holds_at_t_end():
    model = ConsistencyModel(Net(), VESDE())
    a = scoresde.sample(model, solver="consistency", steps=4, n=6, shape=(2,), seed=7)
    b = scoresde.sample(model, solver="consistency", steps=4, n=6, shape=(2,), seed=7)
    c = scoresde.sample(model, solver="consistency", steps=4, n=6, shape=(2,), seed=8)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    # the last grid time is the boundary: f there is the identity, in float32 too
    x = torch.randn(6, 2)
    assert torch.equal(model.x0(x, torch.full((6,), float(a.ts[-1]))), x)


def test_a_list_of_intermediate_times():
    sde = VPSDE()
    ts = times_grid(sde, [0.8, 0.3])
    assert ts.tolist() == [1.0, 0.8, 0.3, 1e-3]
    res = scoresde.sample(ConsistencyModel(Net(), sde), solver="consistency", grid=ts, n=3, shape=(2,), seed=0)
    assert res.nfe == 3 and res.settings["ts"] == ts.tolist()
    for bad, match in (([0.3, 0.8], "decreasing"), ([1.5], r"times\[0\]"), ([1e-3], r"times\[0\]"), ("0.5", "sequence")):
        with pytest.raises(ValueError, match=match):
            times_grid(sde, bad)


def test_renoise_is_the_exact_forward_transition_from_t_end():
    """x_t = (alpha_t / alpha_e) x_e + std z has the law of x_t given x_e: the variances add up to sigma_t^2."""
    sde = VPSDE()
    te = torch.tensor([1e-3, 0.5], dtype=F64)
    a, s = sde.alpha(te), sde.sigma(te)
    x0, z = torch.zeros(1, 1, dtype=F64), torch.ones(1, 1, dtype=F64)
    std = renoise_update(x0, z, a[:1], s[:1], a[1:], s[1:])
    torch.testing.assert_close(std[0, 0] ** 2 + (a[1] / a[0] * s[0]) ** 2, s[1] ** 2, rtol=1e-12, atol=0)


SDES = {"vp": VPSDE(), "ve": VESDE(), "flow": FlowSDE(), "ddpm_cosine": DiscreteVPSDE(schedule="cosine")}


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_exact_consistency_function_gives_exact_samples(name, steps):
    """With the exact flow map as the consistency function and an exact draw of p_T, 1, 2 and 4 steps give
    exact samples of p_{t_eps} = N(alpha m, alpha^2 s^2 + sigma^2): mean and variance within 4.5 standard errors
    (float64, n = 20,000)."""
    sde, n = SDES[name], 20_000
    mean, std = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 1.5], dtype=F64)
    analytic = AnalyticModel(Gaussian(mean, std), sde)
    x_T = analytic.sample(n, sde.T, generator=torch.Generator().manual_seed(steps))
    res = scoresde.sample(FlowMapConsistency(analytic), solver="consistency", steps=steps, x_T=x_T, seed=11)
    assert res.nfe == steps
    te = torch.tensor([sde.t_eps], dtype=F64)
    m_e, sd_e = sde.alpha(te) * mean, torch.sqrt(sde.alpha(te) ** 2 * std**2 + sde.sigma(te) ** 2)
    z_mean = (res.x.mean(0) - m_e) / (sd_e / math.sqrt(n))
    z_var = (res.x.var(0) / sd_e**2 - 1) / math.sqrt(2 / n)
    assert z_mean.abs().max() < 4.5 and z_var.abs().max() < 4.5, (z_mean, z_var)


def test_registered_with_its_description():
    s = solvers.get("consistency")
    assert "consistency" in solvers.available() and s.nfe_per_step == 1 and s.default_steps == 1


def test_cli_samples_with_the_consistency_solver(tmp_path, capsys):
    """`scoresde sample --solver consistency --steps 1` runs one evaluation (here on the shipped score model,
    whose x0 is its denoiser: the solver's loop, grid and NFE, not a consistency model's quality)."""
    from scoresde.cli import main

    out = tmp_path / "s.png"
    assert main(["sample", "--solver", "consistency", "--steps", "1", "--n", "2", "--out", str(out), "--quiet"]) == 0
    assert out.exists() and "NFE 1," in capsys.readouterr().out


def test_the_grid_must_end_at_the_consistency_models_boundary_time():
    """f maps to the model's t_eps and the re-noising starts from ts[-1]: a grid ending elsewhere is refused
    (naming both), one ending at t_eps samples, and a plain diffusion model (no consistency t_eps) takes any t_end."""
    sde = VPSDE()
    model = ConsistencyModel(Net().double(), sde, t_eps=0.3)
    with pytest.raises(ValueError, match=r"t_end=0\.001.*t_eps=0\.3"):
        scoresde.sample(model, solver="consistency", steps=2, n=3, shape=(2,), seed=0, dtype=F64)
    with pytest.raises(ValueError, match=r"t_eps=0\.3"):
        scoresde.sample(FlowMapConsistency(_gaussian(sde), t_eps=0.3), solver="consistency", steps=2, n=3,
                        shape=(2,), seed=0, dtype=F64)
    res = scoresde.sample(model, solver="consistency", steps=2, n=3, shape=(2,), seed=0, t_end=0.3, dtype=F64)
    assert res.ts[-1] == 0.3 and res.nfe == 2
    res = scoresde.sample(_gaussian(sde), solver="consistency", steps=2, n=3, shape=(2,), seed=0, t_end=0.3)
    assert res.nfe == 2 and bool(torch.isfinite(res.x).all())


def _gaussian(sde):
    return AnalyticModel(Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.3, 1.4], dtype=F64)), sde)
