"""Rectified-flow reflow (scoresde.fewstep.reflow): the straightness of the exact 1-rectified flow of a
Gaussian against its closed form, the exact 2-rectified flow of exact pairs (straight, one Euler step
lands on the pair), and a learned flow on a 2-D mixture that gets straighter after reflow."""

import pytest
import torch
from torch import nn

from scoresde import VPSDE, AnalyticModel, FlowSDE, Gaussian, GaussianMixture, ScoreModel
from scoresde.fewstep.reflow import one_step, rectify, reflow_loss, reflow_pairs, reflow_round, straightness

F64 = torch.float64
SDE = FlowSDE()
MEAN, STD = torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64)
GAUSS = AnalyticModel(Gaussian(MEAN, STD), SDE)


def straightness_closed_form(std, z, a, b):
    """S of the exact flow of N(m, diag(std^2)) data on FlowSDE over t in [a, b], for trajectories with
    standardized positions z (B, D): sum_d K(std_d) mean_B z_d^2 with
    K = (b - a) int_a^b r'^2 dt - (r_b - r_a)^2, r(t) = sqrt((1 - t)^2 s^2 + t^2), and
    int_a^b r'^2 dt = (1 + s^2)(b - a) - s [atan(((1 + s^2) t - s^2) / s)]_a^b (so K = s (2 - pi/2) on [0, 1])."""
    c = 1 + std**2

    def r(t):
        return torch.sqrt((1 - t) ** 2 * std**2 + t**2)

    integral = c * (b - a) - std * (torch.atan((c * b - std**2) / std) - torch.atan((c * a - std**2) / std))
    K = (b - a) * integral - (r(b) - r(a)) ** 2
    return float((K * z.square().mean(0)).sum())


def test_one_rectified_flow_straightness_matches_closed_form():
    x_T = SDE.prior_sample((2000, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    a, b = torch.tensor(SDE.t_eps, dtype=F64), torch.tensor(SDE.T, dtype=F64)
    z = (x_T - (1 - b) * MEAN) / torch.sqrt((1 - b) ** 2 * STD**2 + b**2)  # constant along each trajectory
    exact = straightness_closed_form(STD, z, a, b)
    errors = [abs(straightness(GAUSS, x_T, steps=n).value / exact - 1) for n in (100, 200)]
    assert errors[1] < 2e-3 and errors[0] / errors[1] > 3, errors  # Heun + trapezoid: second order
    assert exact > 0.5  # a Gaussian's 1-rectified flow is far from straight


class AffineCouplingFlow(nn.Module):
    """The exact rectified flow of the deterministic coupling x = A z + b (per coordinate) on FlowSDE:
    on x_t = (1 - t) x + t z = ((1 - t) A + t) z + (1 - t) b the pair is a function of x_t, so
    u(x_t, t) = z - x = (1 - A) z - b with z = (x_t - (1 - t) b) / ((1 - t) A + t)."""

    def __init__(self, A, b):
        super().__init__()
        self.A, self.b = A, b

    def forward(self, x, t):
        t = t[:, None]
        z = (x - (1 - t) * self.b) / ((1 - t) * self.A + t)
        return (1 - self.A) * z - self.b


def test_two_rectified_flow_of_exact_pairs_is_straight():
    noise = SDE.prior_sample((512, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    z, x = reflow_pairs(GAUSS, noise, solver="heun", steps=50)
    assert z is noise
    # every solver step of the Gaussian's exact (affine) model is affine, so x = A z + b exactly
    A = ((x - x.mean(0)) * (z - z.mean(0))).mean(0) / (z - z.mean(0)).square().mean(0)
    b = x.mean(0) - A * z.mean(0)
    torch.testing.assert_close(A * z + b, x, rtol=0, atol=1e-12)
    rectified = ScoreModel(AffineCouplingFlow(A, b), SDE, "flow")
    gen = torch.Generator().manual_seed(2)
    # the coupling is deterministic, so its rectified flow fits the pairs with zero loss; the 1-rectified does not
    assert float(reflow_loss(rectified, x, z, generator=gen).max()) < 1e-20
    assert float(reflow_loss(ScoreModel(GAUSS.v, SDE, "v"), x, z, generator=gen).mean()) > 1e-2
    held_out = SDE.prior_sample((256, 2), generator=torch.Generator().manual_seed(3), dtype=F64)
    assert straightness(rectified, held_out, steps=20).value < 1e-20
    # one Euler step from the straight path's point at T lands on its point at t_eps
    T, t_eps = SDE.T, SDE.t_eps
    start, end = (1 - T) * x + T * z, (1 - t_eps) * x + t_eps * z
    torch.testing.assert_close(one_step(rectified, start), end, rtol=0, atol=1e-12)
    # from the noise itself the step misses the pair's sample by O(1 - T) only (the path starts at T < 1)
    assert float((one_step(rectified, z) - x).abs().max()) < 10 * (1 - T + t_eps)
    # while the 1-rectified flow's one step is far off
    assert float((one_step(GAUSS, z) - x).abs().max()) > 0.1


def test_one_step_is_one_euler_step_of_the_flow_ode():
    """On FlowSDE one DDIM step equals x_T + (t_eps - T) u(x_T, T) with u = eps_hat - x0_hat (one evaluation)."""
    x_T = SDE.prior_sample((64, 2), generator=torch.Generator().manual_seed(5), dtype=F64)
    T = torch.full((64,), SDE.T, dtype=F64)
    u = GAUSS.eps(x_T, T) - GAUSS.x0(x_T, T)
    torch.testing.assert_close(one_step(GAUSS, x_T), x_T + (SDE.t_eps - SDE.T) * u, rtol=1e-12, atol=1e-12)


class TinyFlowNet(nn.Module):
    """u(x, t): an MLP on (x, t) for 2-D data."""

    def __init__(self, width=64, seed=0):
        super().__init__()
        with torch.random.fork_rng():  # seeded initialization that leaves the global generator as it was
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], 1))


MIXTURE = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.5, 0.0], [1.5, 0.5]]), torch.tensor([0.3, 0.3]))


def test_learned_flow_gets_straighter_after_reflow():
    """The exact 1-rectified flow of a 2-D mixture (an AnalyticModel), reflowed into a small MLP: the MLP's
    straightness and its one-step error against the teacher's ODE endpoints both drop (measured)."""
    teacher = AnalyticModel(MIXTURE, SDE)
    gen = torch.Generator().manual_seed(4)
    noise, eval_noise = SDE.prior_sample((2048, 2), generator=gen), SDE.prior_sample((512, 2), generator=gen)
    s_teacher = straightness(teacher, eval_noise, steps=40).value
    student = ScoreModel(TinyFlowNet(), SDE, "flow")
    [result] = rectify(teacher, student, noise, rounds=1, eval_x_T=eval_noise, eval_steps=40, pair_steps=20,
                       iterations=300, batch_size=256, lr=3e-3)
    reference = straightness(teacher, eval_noise, steps=40).x
    err_teacher = float((one_step(teacher, eval_noise) - reference).square().mean().sqrt())
    assert result.loss_last < 0.5 * result.loss_first
    assert result.straightness < 0.1 * s_teacher, (result.straightness, s_teacher)
    assert result.one_step_rms < 0.5 * err_teacher, (result.one_step_rms, err_teacher)


def test_bad_arguments_are_refused():
    vp = AnalyticModel(Gaussian(MEAN, STD), VPSDE())
    x_T = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="FlowSDE"):
        reflow_pairs(vp, x_T)
    with pytest.raises(ValueError, match="FlowSDE"):
        straightness(vp, x_T)
    with pytest.raises(ValueError, match="deterministic solver"):
        reflow_pairs(GAUSS, x_T, solver="euler_maruyama")
    with pytest.raises(ValueError, match="share a shape"):
        reflow_loss(ScoreModel(GAUSS.v, SDE, "v"), x_T, x_T[:2])
    with pytest.raises(ValueError, match="ScoreModel"):
        reflow_round(GAUSS, GAUSS, x_T)
    with pytest.raises(ValueError, match="rounds"):
        rectify(GAUSS, ScoreModel(TinyFlowNet(), SDE, "flow"), x_T, rounds=0)
