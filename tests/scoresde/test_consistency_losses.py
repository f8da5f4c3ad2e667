"""Consistency objectives (scoresde.fewstep.consistency_losses): the exact checks of issue 19 on the analytic
Gaussian, float64. The exact consistency function is the flow map to t_eps (FlowMapConsistency)."""

import math

import pytest
import torch

from scoresde import AnalyticModel, FlowSDE, Gaussian, VESDE, VPSDE
from scoresde.fewstep.consistency import ConsistencyModel, FlowMapConsistency
from scoresde.fewstep.consistency_losses import (
    _lognormal_intervals, cd_fixed_point, cd_loss, cd_pair_loss, ct_loss, distance, ect_loss, ect_stage,
    ict_discretization, karras_times,
)
from solvers.grids import karras

F64 = torch.float64
SDES = {"vp": VPSDE(), "ve": VESDE(), "flow": FlowSDE()}
ORDER = {"ddim": 1, "heun": 2, "dpm_solver_2": 2}


def _analytic(sde):
    """A diagonal Gaussian with unequal stds (DDIM is not exact on it)."""
    return AnalyticModel(Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.3, 1.4], dtype=F64)), sde)


def _slope(hs, errors):
    """log-log slope of the last two points."""
    return math.log(errors[-1] / errors[-2]) / math.log(hs[-1] / hs[-2])


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("method", sorted(ORDER))
def test_cd_fixed_point_converges_to_the_flow_map_at_the_teacher_order(name, method):
    """The consistency function CD converges to at N Karras intervals (the teacher's steps chained from T to
    t_eps) approaches the exact flow map with slope ~ p in 1/N (measured from N = 32 to 64: 0.96-0.98 for DDIM,
    2.03-2.07 for Heun and DPM-Solver-2 on VP, VE and flow)."""
    sde = SDES[name]
    model = _analytic(sde)
    x = model.sample(100, sde.T, generator=torch.Generator().manual_seed(0))
    exact = model.flow_map(x, sde.T, sde.t_eps)
    Ns = [16, 32, 64]
    errors = [float((cd_fixed_point(model, x, karras_times(sde, N + 1).flip(0), method) - exact).abs().max())
              for N in Ns]
    assert errors[-1] < errors[0]
    assert abs(_slope([1 / N for N in Ns], errors) - ORDER[method]) < 0.2, errors


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("method", sorted(ORDER))
def test_cd_loss_of_the_exact_consistency_function_scales_like_h_to_2p_plus_2(name, method):
    """With the flow map as student and target, the CD loss (l2) at one interval of width h is the teacher's
    squared local error: ~ h^(2(p+1)), i.e. slope ~4 for DDIM and ~6 for Heun / DPM-Solver-2."""
    sde = SDES[name]
    model = _analytic(sde)
    exact = FlowMapConsistency(model)
    x0 = model.data.sample(300, generator=torch.Generator().manual_seed(1))
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    hs, losses = [0.02, 0.01], []
    for h in hs:
        t_next = torch.full((300,), 0.5 * sde.T, dtype=F64)
        losses.append(float(cd_pair_loss(exact, exact, model, x0, t_next, t_next - h * sde.T, z, method).mean()))
    p = ORDER[method]
    assert 2 * (p + 1) - 0.5 < _slope(hs, losses) < 2 * (p + 1) + 0.5, losses


def test_cd_loss_is_small_for_the_exact_student_only():
    sde = VPSDE()
    model = _analytic(sde)
    exact = FlowMapConsistency(model)
    identity = ConsistencyModel(lambda x, c: torch.zeros_like(x), sde, sigma_data=1e-9)  # f(x, t) ~ x
    x0 = model.data.sample(200, generator=torch.Generator().manual_seed(3))
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    good = float(cd_loss(exact, exact, model, x0, generator=gen(), N=200, method="heun"))
    bad = float(cd_loss(identity, identity, model, x0, generator=gen(), N=200, method="heun"))
    assert good < 1e-8 < 1e-2 < bad


def _student():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    return ConsistencyModel(lambda x, c: net(x * (1 + c[:, None])), VESDE(sigma_min=0.002, sigma_max=80.0)), net


@pytest.mark.parametrize("loss", ["ct", "ect"])
def test_ct_and_ect_losses_give_gradients_to_the_student_only_and_follow_the_generator(loss):
    student, net = _student()
    target, target_net = _student()
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=F64)

    def value(seed):
        gen = torch.Generator().manual_seed(seed)
        if loss == "ct":
            return ct_loss(student, target, x0, generator=gen, N=ict_discretization(300, 1000))
        return ect_loss(student, target, x0, generator=gen, stage=2)

    out = value(6)
    out.backward()
    assert out.ndim == 0 and bool(torch.isfinite(out)) and out.item() > 0
    assert all(p.grad is not None for p in net.parameters()) and all(p.grad is None for p in target_net.parameters())
    assert value(6).item() == out.item() and value(7).item() != out.item()


@pytest.mark.parametrize("method", sorted(ORDER))
@pytest.mark.parametrize("sde,N", [(VPSDE(), 18), (FlowSDE(), 2)], ids=["vp", "flow"])
def test_cd_loss_from_a_score_model_teacher_in_float32(method, sde, N):
    """CD from a ScoreModel teacher (eps prediction, float32) trains a ConsistencyModel student: finite loss,
    gradients for the student only. On flow, N = 2 makes every interval end at T = 0.999, which float32 rounds
    up (0.99900001): the student's coefficients take that time as T (it once raised "t must lie in [0, T]")."""
    from scoresde import ScoreModel

    torch.manual_seed(1)
    teacher_net, net = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    teacher = ScoreModel(lambda x, c: teacher_net(torch.cat([x, c[:, None]], 1)), sde, "eps")
    student = ConsistencyModel(lambda x, c: net(torch.cat([x, c[:, None]], 1)), sde)
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    out = cd_loss(student, student, teacher, x0, generator=torch.Generator().manual_seed(3), N=N, method=method)
    out.backward()
    assert out.dtype == torch.float32 and bool(torch.isfinite(out)) and net.weight.grad is not None
    assert teacher_net.weight.grad is None


def test_ect_stage_0_is_the_weighted_denoising_loss():
    """At stage 0, nu_r <= 0 for every nu_t (n(nu) >= 1), so the target is the boundary point x_{t_eps} itself
    (f(x, t_eps) = x), at nu_min: the loss is mean(d(f(x_t, t), alpha_eps x0 + sigma_eps z) / (nu_t - nu_min))."""
    student, _ = _student()
    sde = student.sde
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    got = ect_loss(student, student, x0, generator=torch.Generator().manual_seed(9), stage=0)
    gen = torch.Generator().manual_seed(9)
    nu_t = (-1.1 + 2.0 * torch.randn(32, generator=gen, dtype=F64)).exp().clamp(0.002 * (1 + 1e-6), 80.0)
    z = torch.randn(32, 2, generator=gen, dtype=F64)
    t = sde.t_of_lambda(-torch.log(nu_t))
    sigma_eps = float(sde.sigma(torch.tensor([student.t_eps], dtype=F64)))  # VE: alpha = 1
    want = (distance(student.x0(x0 + nu_t[:, None] * z, t), x0 + sigma_eps * z, "pseudo_huber")
            / (nu_t - sigma_eps)).mean()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


class _TimeSpy(torch.nn.Module):
    """F(x, c) with c_noise = t: records every time it is evaluated at."""

    def __init__(self):
        super().__init__()
        self.lin, self.times = torch.nn.Linear(2, 2).double(), []

    def forward(self, x, c):
        self.times.append(c.detach().clone())
        return self.lin(x) * (1 + c[:, None])


@pytest.mark.parametrize("loss", ["cd", "ct", "ect"])
def test_the_losses_never_evaluate_the_student_below_its_boundary_time(loss):
    """With ConsistencyModel(..., t_eps=0.3) every time the student / target net sees is >= 0.3 (the losses'
    grids end at the student's t_eps, not the process's), and the boundary itself is among the targets'."""
    sde = VPSDE()
    spy = _TimeSpy()
    student = ConsistencyModel(spy, sde, t_eps=0.3)
    x0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    gen = torch.Generator().manual_seed(1)
    if loss == "cd":
        cd_loss(student, student, _analytic(sde), x0, generator=gen, N=4, method="ddim")
    elif loss == "ct":
        ct_loss(student, student, x0, generator=gen, N=4)
    else:
        ect_loss(student, student, x0, generator=gen, stage=1)
    times = torch.cat(spy.times)
    assert float(times.min()) == 0.3, float(times.min())
    ts = karras_times(sde, 4, 0.3)
    assert ts[0] == 0.3 and ts[-1] == sde.T and bool((ts[1:] > ts[:-1]).all())


def test_curricula():
    """iCT: N(k) = min(10 * 2^floor(k / K'), 1280) + 1 with K' = floor(K / 8); ECT: 8 stages."""
    K = 8000
    assert [ict_discretization(k, K) for k in (0, 999, 1000, 2000, 7000, 7999)] == [11, 11, 21, 41, 1281, 1281]
    assert [ect_stage(k, K) for k in (0, 999, 1000, 7999, 8000)] == [0, 0, 1, 7, 8]
    ts = karras_times(VPSDE(), 11)
    assert ts.shape == (11,) and ts[0] == 1e-3 and ts[-1] == 1.0 and bool((ts[1:] > ts[:-1]).all())
    for bad in (dict(k=-1, K=K), dict(k=0, K=0)):
        with pytest.raises(ValueError):
            ict_discretization(**bad)
    with pytest.raises(ValueError, match="teacher step"):
        cd_fixed_point(_analytic(VPSDE()), torch.zeros(1, 2, dtype=F64), ts.flip(0), "euler_maruyama")


# --- independent recomputations (formulas written out from the papers, same generator stream) -------------

def _vp_student(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    return ConsistencyModel(lambda x, c: net(x * (1 + c[:, None])), VPSDE())


def _pseudo_huber(a, b):
    """Song & Dhariwal 2023, Sec. 3.3: sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(d)."""
    c = 0.00054 * math.sqrt(a[0].numel())
    return torch.sqrt((a - b).flatten(1).pow(2).sum(1) + c * c) - c


def _ict_probabilities(nu, P_mean=-1.1, P_std=2.0):
    """p(i) ∝ erf((log nu_{i+1} - P_mean) / (sqrt2 P_std)) - erf((log nu_i - P_mean) / (sqrt2 P_std))."""
    cdf = torch.erf((nu.log() - P_mean) / (math.sqrt(2.0) * P_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def test_pseudo_huber_distance_hand_value():
    """d = 100: c = 0.0054; ||a - b|| = 0.0072, so sqrt(0.0072^2 + 0.0054^2) - 0.0054 = 0.009 - 0.0054 = 0.0036."""
    a, b = torch.zeros(1, 100, dtype=F64), torch.zeros(1, 100, dtype=F64)
    b[0, 7] = 0.0072
    torch.testing.assert_close(distance(a, b, "pseudo_huber"), torch.tensor([0.0036], dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(distance(a, b, "l2"), torch.tensor([0.0072**2 / 100], dtype=F64), rtol=1e-12, atol=0)


def test_ct_loss_equals_an_independent_recomputation_of_ict():
    """iCT (Song & Dhariwal 2023) on VP: n ~ the erf differences, z after it from the same generator, weight
    1 / (nu_{n+1} - nu_n), pseudo-Huber; the loss agrees to round-off."""
    student = _vp_student()
    sde, N, B = student.sde, 21, 64
    x0 = torch.randn(B, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    got = ct_loss(student, student, x0, generator=torch.Generator().manual_seed(2), N=N)
    ts = karras(sde, N - 1).flip(0)  # increasing, t_1 = t_eps
    nu = sde.sigma(ts) / sde.alpha(ts)
    gen = torch.Generator().manual_seed(2)
    n = torch.multinomial(_ict_probabilities(nu), B, replacement=True, generator=gen)
    z = torch.randn(B, 3, generator=gen, dtype=F64)
    t_next, t_cur = ts[n + 1], ts[n]
    x_next = sde.alpha(t_next)[:, None] * x0 + sde.sigma(t_next)[:, None] * z
    x_cur = sde.alpha(t_cur)[:, None] * x0 + sde.sigma(t_cur)[:, None] * z
    weight = 1.0 / (nu[n + 1] - nu[n])
    want = (weight * _pseudo_huber(student.x0(x_next, t_next), student.x0(x_cur, t_cur))).mean()
    assert len(set(n.tolist())) > 5  # many intervals drawn
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


def test_ict_interval_frequencies_match_the_erf_differences():
    """200,000 draws of the interval on an 11-point VE grid: each empirical frequency within 5 binomial standard
    errors sqrt(p (1 - p) / n) of p(i)."""
    sde = VESDE(sigma_min=0.002, sigma_max=80.0)
    ts = karras_times(sde, 11)
    nu = sde.sigma(ts) / sde.alpha(ts)
    draws = 200_000
    n = _lognormal_intervals(nu, draws, -1.1, 2.0, torch.Generator().manual_seed(3))
    freq = torch.bincount(n, minlength=10).to(F64) / draws
    p = _ict_probabilities(nu)
    se = torch.sqrt(p * (1 - p) / draws)
    assert bool(((freq - p).abs() <= 5 * se + 1e-12).all()), (freq, p)


def test_ect_loss_at_stage_3_equals_an_independent_recomputation():
    """ECT (Geng et al. 2024) on VP at stage a = 3 (q = 2, k = 8, b = 1): nu_t = exp(P_mean + P_std n) clipped,
    z after it from the same generator, nu_r = nu_t (1 - (1 + k sigmoid(-b nu_t)) / q^a), the target at
    max(nu_r, nu_min) (t_eps below nu_min) and the weight 1 / (nu_t - max(nu_r, nu_min)); the seed draws nu_r above
    nu_min, and in (0, nu_min)."""
    student = _vp_student(1)
    sde, B = student.sde, 256
    x0 = torch.randn(B, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    got = ect_loss(student, student, x0, generator=torch.Generator().manual_seed(5), stage=3)
    te = torch.tensor([student.t_eps, sde.T], dtype=F64)
    nu_min, nu_max = (sde.sigma(te) / sde.alpha(te)).tolist()
    gen = torch.Generator().manual_seed(5)
    nu_t = (-1.1 + 2.0 * torch.randn(B, generator=gen, dtype=F64)).exp().clamp(nu_min * (1 + 1e-6), nu_max)
    z = torch.randn(B, 3, generator=gen, dtype=F64)
    nu_r = nu_t * (1 - (1 + 8.0 * torch.sigmoid(-nu_t)) / 2.0**3)
    assert int((nu_r > nu_min).sum()) > B // 2 and int(((nu_r > 0) & (nu_r < nu_min)).sum()) > 3
    level = nu_r.clamp_min(nu_min)
    t_next = sde.t_of_lambda(-nu_t.log())
    t_cur = torch.where(nu_r > nu_min, sde.t_of_lambda(-level.log()), torch.full_like(nu_r, student.t_eps))
    x_next = sde.alpha(t_next)[:, None] * x0 + sde.sigma(t_next)[:, None] * z
    x_cur = sde.alpha(t_cur)[:, None] * x0 + sde.sigma(t_cur)[:, None] * z
    want = (_pseudo_huber(student.x0(x_next, t_next), student.x0(x_cur, t_cur)) / (nu_t - level)).mean()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
