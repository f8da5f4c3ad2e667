"""Progressive distillation (scoresde.fewstep.progressive): the closed-form target, and the exact check
of issue 19: distilling an analytic Gaussian model reproduces the teacher's 2N-step DDIM endpoint at
each halving (float64, a student network that can represent the two-step teacher exactly)."""

import pytest
import torch
from hypothesis import given
from hypothesis.strategies import floats
from torch import nn

from scoresde import VESDE, VPSDE, AnalyticModel, DiscreteVPSDE, FlowSDE, Gaussian, ScoreModel, SubVPSDE
from scoresde.fewstep.progressive import (
    distill_round, distillation_loss, distillation_target, progressive_distillation,
)
from solvers import grids
from solvers.ddim import DDIM, ddim_update
from solvers.protocol import bcast

F64 = torch.float64


class PerTimeAffine(nn.Module):
    """v(x, t_i) = c_i (a_i * (x - mean_i) / std_i + b_i) with one (a_i, b_i) per grid time t_i: on Gaussian
    data the two-step DDIM map of the exact model is affine in x at each grid time, so this student can
    match it exactly. The fixed buffers only precondition: mean_i, std_i (the marginal's) standardize the
    input and c_i = sqrt(alpha_i^2 + sigma_i^2), the scale of v, keeps a_i, b_i of order 1 (as EDM's c_out
    does), which keeps the least-squares problem well conditioned for Adam on every process (VE's v
    reaches 50)."""

    def __init__(self, times, mean, std, scale):
        super().__init__()
        for name, value in dict(times=times, mean=mean, std=std, scale=scale).items():
            self.register_buffer(name, value.clone())
        self.a = nn.Parameter(torch.zeros_like(mean))
        self.b = nn.Parameter(torch.zeros_like(mean))

    def forward(self, x, c_noise):
        i = (c_noise[:, None] - self.times[None]).abs().argmin(1)
        return self.scale[i] * (self.a[i] * (x - self.mean[i]) / self.std[i] + self.b[i])


def student_from_teacher(teacher, ts):
    """A v-prediction student initialized at the teacher's exact v (affine in x) at each grid time, as
    the paper initializes the student from the teacher."""
    sde, m, s = teacher.sde, teacher.data.mean, teacher.data.std
    alpha, sigma = sde.alpha(ts)[:, None], sde.sigma(ts)[:, None]
    net = PerTimeAffine(ts, alpha * m, (alpha**2 * s**2 + sigma**2).sqrt(), (alpha**2 + sigma**2).sqrt())
    with torch.no_grad():
        for i, t in enumerate(ts):
            points = net.mean[i] + torch.cat([torch.zeros(1, len(m), dtype=F64), torch.diag(net.std[i])])
            v = teacher.v(points, t.reshape(1).expand(len(points))) / net.scale[i]
            net.b[i] = v[0]
            net.a[i] = (v[1:] - v[0]).diagonal()
    return ScoreModel(net, sde, "v")


DATA = Gaussian(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.3, 1.5], dtype=F64))


def check_halvings(sde, *, steps=8, rounds=3, iterations=300, tol=5e-6):
    teacher = AnalyticModel(DATA, sde)
    ts = grids.uniform_t(sde, steps)
    train = DATA.sample(4096, generator=torch.Generator().manual_seed(1))
    x_T = sde.prior_sample((256, 2), generator=torch.Generator().manual_seed(2), dtype=F64)  # held out
    results = progressive_distillation(teacher, student_from_teacher(teacher, ts), train, steps=steps,
                                       rounds=rounds, iterations=iterations, batch_size=64, lr=0.05, eval_x_T=x_T)
    assert [r.steps for r in results] == [steps // 2 ** (r + 1) for r in range(rounds)]
    for r in results:
        assert r.loss_last < 1e-3 * r.loss_first
        assert r.endpoint_max < tol, (r.steps, r.endpoint_max)  # student N steps == teacher 2N steps
    # and the one-step student against the analytic teacher's 2^rounds-step DDIM, errors accumulated over rounds
    x_final = DDIM()(results[-1].student, x_T, results[-1].ts).x
    x_exact = DDIM()(teacher, x_T, ts).x
    assert (x_final - x_exact).abs().max() < rounds * tol
    # a one-step DDIM of the analytic teacher is far from its 8-step result: the check can fail
    assert (DDIM()(teacher, x_T, ts[::steps]).x - x_exact).abs().max() > 1e-2


def test_two_halvings_reproduce_teacher_vp():
    check_halvings(VPSDE(), steps=4, rounds=2)


@pytest.mark.slow
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), FlowSDE(), SubVPSDE(), DiscreteVPSDE()],
                         ids=["vp", "ve", "flow", "subvp", "ddpm"])
def test_three_halvings_reproduce_teacher(sde):
    check_halvings(sde)


@given(alpha_t=floats(1e-3, 1.0), sigma_t=floats(1e-2, 80.0), shrink=floats(1e-3, 0.99), grow=floats(1.01, 1e3))
def test_target_inverts_one_ddim_step(alpha_t, sigma_t, shrink, grow):
    """A DDIM step from z_t with data prediction x lands at z''; the target recovers x from (z_t, z'')."""
    a, s = torch.tensor([alpha_t], dtype=F64), torch.tensor([sigma_t], dtype=F64)
    s2 = s * shrink  # t'' is less noisy: sigma'' < sigma and alpha'' / sigma'' > alpha / sigma
    a2 = (a / s) * grow * s2
    gen = torch.Generator().manual_seed(0)
    x, z = torch.randn(2, 3, 4, dtype=F64, generator=gen)
    eps = (z - bcast(a, z) * x) / bcast(s, z)
    h = torch.log(a2 / s2) - torch.log(a / s)
    z2, x0 = ddim_update(z, eps, a, s, a2, s2, h, 0.0, None)
    torch.testing.assert_close(x0, x)
    torch.testing.assert_close(distillation_target(z, z2, a, s, a2, s2), x, rtol=1e-7, atol=1e-7 * (1 + 1 / grow))


def test_loss_is_zero_exactly_for_the_two_step_teacher():
    """A student whose data prediction at (z_t, t) is the target built from two teacher DDIM steps on the
    grid has loss 0 (float64 round-off); the analytic teacher as its own student (one step is not two)
    does not."""
    sde = VPSDE()
    teacher = AnalyticModel(DATA, sde)
    ts = grids.uniform_t(sde, 4)

    def two_step_net(z, t):
        i = (t[:, None] - ts[None, :-1:2]).abs().argmin(1) * 2
        t1, t2 = ts[i + 1], ts[i + 2]
        eps = teacher.eps(z, t)
        z1 = ddim_update(z, eps, sde.alpha(t), sde.sigma(t), sde.alpha(t1), sde.sigma(t1),
                         sde.lambda_(t1) - sde.lambda_(t), 0.0, None)[0]
        eps1 = teacher.eps(z1, t1)
        z2 = ddim_update(z1, eps1, sde.alpha(t1), sde.sigma(t1), sde.alpha(t2), sde.sigma(t2),
                         sde.lambda_(t2) - sde.lambda_(t1), 0.0, None)[0]
        return distillation_target(z, z2, sde.alpha(t), sde.sigma(t), sde.alpha(t2), sde.sigma(t2))

    x0 = DATA.sample(64, generator=torch.Generator().manual_seed(3))
    exact = distillation_loss(teacher, ScoreModel(two_step_net, sde, "x0"), ts, x0, generator=torch.Generator().manual_seed(4))
    assert exact.shape == (64,) and float(exact.max()) < 1e-20
    one_step = distillation_loss(teacher, ScoreModel(lambda x, t: teacher.v(x, t), sde, "v"), ts, x0,
                                 generator=torch.Generator().manual_seed(4))
    assert float(one_step.mean()) > 1e-4


def test_bad_arguments_are_refused():
    sde = VPSDE()
    teacher = AnalyticModel(DATA, sde)
    ts = grids.uniform_t(sde, 8)
    student = student_from_teacher(teacher, ts)
    data = DATA.sample(16)
    with pytest.raises(ValueError, match="divisible"):
        progressive_distillation(teacher, student, data, steps=6, rounds=2)
    with pytest.raises(ValueError, match="weighting"):
        distill_round(teacher, student, ts, data, weighting="snr")
    with pytest.raises(ValueError, match="torch.nn.Module"):
        distill_round(teacher, teacher, ts, data)
    with pytest.raises(ValueError, match="one process"):
        distill_round(AnalyticModel(DATA, VESDE()), student, ts, data)
    with pytest.raises(ValueError, match=r"\(2N \+ 1,\)"):
        distill_round(teacher, student, ts[:-1], data)
    with pytest.raises(ValueError, match=r"\(M, \*D\)"):
        distill_round(teacher, student, ts, data[0])


def test_loss_weights_are_snr_plus_one_and_truncated_snr():
    """Salimans & Ho 2022, Sec. 4: alpha = 0.6, sigma = 0.8 (SNR 0.5625) and alpha = 0.8, sigma = 0.6 (SNR 16/9)."""
    from scoresde.fewstep.progressive import _weight

    alpha, sigma = torch.tensor([0.6, 0.8], dtype=F64), torch.tensor([0.8, 0.6], dtype=F64)
    torch.testing.assert_close(_weight("snr_plus_one", alpha, sigma), torch.tensor([1.5625, 25 / 9], dtype=F64))
    torch.testing.assert_close(_weight("truncated_snr", alpha, sigma), torch.tensor([1.0, 16 / 9], dtype=F64))


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), FlowSDE()], ids=["vp", "ve", "flow"])
def test_per_sample_ddim_step_is_the_solvers_ddim_step_row_by_row(sde):
    """solvers.ddim.ddim_step_per_sample (the teacher step of progressive and consistency distillation) at (B,)
    times equals the DDIM solver's own step at each sample's scalar times, and CD's teacher_step "ddim" is it."""
    from scoresde.fewstep.consistency_losses import teacher_step
    from solvers.ddim import ddim_step, ddim_step_per_sample

    model = AnalyticModel(Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.3, 1.4], dtype=F64)), sde)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    s = torch.tensor([0.9, 0.7, 0.5, 0.2], dtype=F64) * sde.T
    t = torch.tensor([0.6, 0.65, 0.1, 0.05], dtype=F64) * sde.T
    got = ddim_step_per_sample(model, x, s, t)
    for i in range(4):
        want = ddim_step(model, x[i:i + 1], s[i], t[i], eta=0.0)[0]
        torch.testing.assert_close(got[i:i + 1], want, rtol=1e-12, atol=1e-12)
    assert torch.equal(teacher_step(model, x, s, t, "ddim"), got)
