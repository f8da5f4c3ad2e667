"""Improved DDPM's hybrid loss: the L_vlb terms against DDPM's closed forms, the stopped mean
gradient, the importance-sampling history, and training with it (exact resume included)."""

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.stats
import torch

from scoresde import VPSDE, AnalyticModel, DiscreteVPSDE, Gaussian, ScoreModel
from scoresde.losses import LossHistory, hybrid_loss
from scoresde.train import TrainConfig, load_checkpoint, train
from scoresde.training import loop as train_loop  # where the loop looks up LossHistory

from .helpers import logged_losses as losses
from .helpers import train_killed_in_step_5

F64 = torch.float64
MEAN = torch.tensor([0.1, -0.3, 0.5, 0.0], dtype=F64)
STD = torch.tensor([0.3, 0.2, 0.4, 0.25], dtype=F64)
TINY = dict(net_options={"ch": 8, "num_res_blocks": 1, "ch_mult": (1, 2), "attn_resolutions": (4,)},
            batch_size=16, lr=1e-3, warmup_steps=3, ema_decay=0.9, log_every=1, progress=False, device="cpu")
HYBRID = dict(sde="ddpm", loss="hybrid", learn_variance=True, time_sampling="discrete")


def quantized(n, levels=256, seed=0):
    x = Gaussian(MEAN, STD).sample(n, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)
    return torch.round((x + 1) * (levels - 1) / 2) * 2 / (levels - 1) - 1


class ExactEpsWithVariance(torch.nn.Module):
    """net(x, t) = concat(a * exact eps, b * tanh(x)) on (B, 4) data: a mean part and a raw variance part."""

    def __init__(self, sde):
        super().__init__()
        self.exact = AnalyticModel(Gaussian(MEAN, STD), sde)
        self.a = torch.nn.Parameter(torch.tensor(0.9, dtype=F64))
        self.b = torch.nn.Parameter(torch.tensor(0.5, dtype=F64))

    def forward(self, x, c):
        return torch.cat([self.a * self.exact.eps(x, c), self.b * torch.tanh(x)], 1)


def pinned(n: int, N: int = 1000) -> LossHistory:
    """A full history whose importance distribution puts all mass on timestep n (floor 0)."""
    h = LossHistory(N, floor=0.0)
    h.values[n] = 1.0
    h.count.fill_(h.length)
    return h


# ------------------------------------------------------------------------- the L_vlb terms


@pytest.mark.parametrize("n", [0, 1, 500, 999])
def test_vlb_term_matches_ddpm_closed_forms(n):
    """At timestep n >= 1 the term is KL(q(x_{n-1} | x_n, x0) || N(mu, exp(v log beta_n + (1 - v) log
    beta_tilde_n))) written with DDPM's discrete abar_n (Ho et al. 2020, Eqs. 6-7); at n = 0 the
    discretized Gaussian decoder (scipy's normal CDF) with std sqrt((1 - abar_0) / abar_0); bits/dim."""
    sde = DiscreteVPSDE()
    model = ScoreModel(ExactEpsWithVariance(sde), sde, "eps", c_noise="t", learned_variance=True)
    x0 = quantized(32)
    res = hybrid_loss(model, x0, pinned(n), levels=256, generator=torch.Generator().manual_seed(4))
    assert torch.equal(res.step, torch.full((32,), n))
    # replay the draws: timesteps, then the noise
    gen = torch.Generator().manual_seed(4)
    pinned(n).sample(32, generator=gen)
    x_t, eps = sde.perturb(x0, torch.full((32,), (n + 1) / 1000, dtype=F64), generator=gen)
    abar = sde.alphas_cumprod
    with torch.no_grad():
        out = model.net(x_t, torch.full((32,), (n + 1) / 1000, dtype=F64))
    eps_hat, v = out[:, :4], (out[:, 4:] + 1) / 2
    x0_hat = (x_t - (1 - abar[n]).sqrt() * eps_hat) / abar[n].sqrt()
    if n == 0:
        std = ((1 - abar[0]) / abar[0]).sqrt().item()
        h = 1 / 255
        lo = np.where(x0.numpy() < -1 + h, -np.inf, x0.numpy() - h)
        hi = np.where(x0.numpy() > 1 - h, np.inf, x0.numpy() + h)
        p = scipy.stats.norm.cdf(hi, x0_hat.numpy(), std) - scipy.stats.norm.cdf(lo, x0_hat.numpy(), std)
        expected = torch.from_numpy(-np.log(p).sum(1) / (4 * math.log(2)))
    else:
        beta = 1 - abar[n] / abar[n - 1]
        beta_tilde = (1 - abar[n - 1]) / (1 - abar[n]) * beta
        c0, ct = abar[n - 1].sqrt() * beta / (1 - abar[n]), (1 - beta).sqrt() * (1 - abar[n - 1]) / (1 - abar[n])
        mean_q, mean_p = c0 * x0 + ct * x_t, c0 * x0_hat + ct * x_t
        var_p = torch.exp(v * torch.log(beta) + (1 - v) * torch.log(beta_tilde))
        kl = 0.5 * (torch.log(var_p / beta_tilde) + (beta_tilde + (mean_q - mean_p) ** 2) / var_p - 1)
        expected = kl.sum(1) / (4 * math.log(2))
    torch.testing.assert_close(res.vlb, expected, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(res.simple, (eps_hat - eps).square().mean(1))
    # importance weight 1 / (N p_n) = 1 / 1000 here; lambda N = 1
    torch.testing.assert_close(res.loss, (res.simple + 0.001 * 1000 * res.vlb) / 1000)


def test_vlb_term_trains_only_the_variance():
    """The mean's gradient is stopped in L_vlb: d loss / d a comes from L_simple alone, and L_simple
    does not reach the variance parameter b."""
    sde = DiscreteVPSDE()
    net = ExactEpsWithVariance(sde)
    model = ScoreModel(net, sde, "eps", c_noise="t", learned_variance=True)
    x0 = quantized(16)
    res = hybrid_loss(model, x0, LossHistory(1000), levels=256, generator=torch.Generator().manual_seed(0))
    grad_a, grad_b = torch.autograd.grad(res.loss.sum(), [net.a, net.b], retain_graph=True)
    simple_a, simple_b = torch.autograd.grad((res.weight * res.simple).sum(), [net.a, net.b], allow_unused=True)
    torch.testing.assert_close(grad_a, simple_a)
    assert simple_b is None or float(simple_b) == 0.0
    assert float(grad_b.abs()) > 0


def test_hybrid_loss_refuses_what_it_cannot_do():
    sde = DiscreteVPSDE()
    x0 = quantized(2)
    with pytest.raises(ValueError, match="needs a DiscreteVPSDE"):
        hybrid_loss(ScoreModel(ExactEpsWithVariance(VPSDE()), VPSDE(), learned_variance=True), x0, LossHistory(1000), levels=256)
    with pytest.raises(ValueError, match="needs a model with eps_and_variance"):
        hybrid_loss(AnalyticModel(Gaussian(MEAN, STD), sde), x0, LossHistory(1000), levels=256)
    with pytest.raises(ValueError, match="the loss history has 10 timesteps, the schedule 1000"):
        hybrid_loss(ScoreModel(ExactEpsWithVariance(sde), sde, learned_variance=True), x0, LossHistory(10), levels=256)


# ------------------------------------------------------------------------ importance sampling


def test_history_is_uniform_until_full_then_proportional_to_rms():
    h = LossHistory(5, length=3, floor=0.0)
    torch.testing.assert_close(h.probabilities(), torch.full((5,), 0.2, dtype=F64))
    h.record(torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3]), torch.ones(9))
    torch.testing.assert_close(h.probabilities(), torch.full((5,), 0.2, dtype=F64))  # timestep 4 has 1 value
    vals = torch.tensor([[1.0, 2, 2], [3, 0, 4], [1, 1, 1], [2, 2, 2], [0, 0, 6]], dtype=F64)
    h.values.copy_(vals)
    h.count.fill_(3)
    rms = vals.square().mean(1).sqrt()
    torch.testing.assert_close(h.probabilities(), rms / rms.sum())
    floored = LossHistory(5, length=3)  # default floor 1e-3 keeps every p_n > 0
    floored.values.copy_(vals)
    floored.count.fill_(3)
    torch.testing.assert_close(floored.probabilities(), 0.999 * rms / rms.sum() + 0.001 / 5)
    steps, w = h.sample(100_000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(steps, minlength=5).to(F64) / 100_000
    assert float((freq - rms / rms.sum()).abs().max()) < 0.01  # 5 standard errors at most ~0.0075
    torch.testing.assert_close(w, 1 / (5 * (rms / rms.sum())[steps]))


def test_history_record_keeps_the_last_values_in_batch_order():
    """Against a plain Python ring buffer, with repeated timesteps (more than `length` in one batch)."""
    h = LossHistory(4, length=3)
    ref = {n: [] for n in range(4)}
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        steps = torch.randint(0, 4, (9,), generator=gen)
        losses = torch.rand(9, generator=gen, dtype=F64)
        h.record(steps, losses)
        for n, loss in zip(steps.tolist(), losses.tolist()):
            ref[n] = (ref[n] + [loss])[-3:]
    for n in range(4):
        assert int(h.count[n]) >= 3
        torch.testing.assert_close(sorted(h.values[n].tolist()), sorted(ref[n]))
    state = h.state_dict()
    other = LossHistory(4, length=3)
    other.load_state_dict(state)
    assert torch.equal(other.values, h.values) and torch.equal(other.count, h.count)
    with pytest.raises(ValueError, match="does not fit"):
        LossHistory(5, length=3).load_state_dict(state)


# ----------------------------------------------------------------------------------- training


@pytest.mark.parametrize("kw,match", [
    (dict(loss="hybrid", learn_variance=True), "loss 'hybrid' needs sde 'ddpm'"),
    (dict(loss="hybrid", sde="ddpm", time_sampling="discrete"), "needs learn_variance=True"),
    (dict(loss="hybrid", sde="ddpm", learn_variance=True), "needs time_sampling 'discrete'"),
    (dict(HYBRID, dequantize=True), "needs dequantize=False"),
    (dict(loss="l1"), r"unknown loss 'l1'; choose one of \['dsm', 'hybrid', 'flow_matching', 'cd', 'ct', 'ect', 'pd', 'reflow'\]"),
    (dict(net_options={"learn_variance": True}), "use TrainConfig.learn_variance"),
    (dict(HYBRID, hybrid_lambda=-1.0), "hybrid_lambda must be"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_hybrid_training_runs_and_checkpoints_the_history(tmp_path):
    res = train(TrainConfig(**TINY, **HYBRID, steps=3, out_dir=str(tmp_path)))
    assert res.step == 3 and math.isfinite(res.loss)
    assert res.model.learned_variance and res.net.config.learn_variance
    ckpt = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert int(ckpt.loss_history["count"].sum()) == 3 * 16 and ckpt.loss_history["values"].shape == (1000, 10)
    from scoresde.train import load_model

    model = load_model(tmp_path / "checkpoint.safetensors")
    eps, v = model.eps_and_variance(torch.randn(2, 1, 8, 8), torch.full((2,), 0.5))
    assert eps.shape == v.shape == (2, 1, 8, 8)


def test_exact_resume_with_importance_sampling(tmp_path, monkeypatch):
    """The history starts full of tiny values (importance sampling from step 1, dominated by the
    recorded losses); a run killed in step 5 and resumed from the step-3 checkpoint repeats the
    uninterrupted run's losses, weights and history exactly."""

    def prefilled(num_steps, **kw):
        h = LossHistory(num_steps, **kw)
        h.values.copy_(1e-6 * torch.rand(num_steps, h.length, generator=torch.Generator().manual_seed(7), dtype=F64))
        h.count.fill_(h.length)
        return h

    monkeypatch.setattr(train_loop, "LossHistory", prefilled)
    base = TrainConfig(**TINY, **HYBRID, steps=6, ckpt_every=3, seed=1)
    ref = train(replace(base, out_dir=str(tmp_path / "ref")))
    out = tmp_path / "run"
    train_killed_in_step_5(monkeypatch, replace(base, out_dir=str(out)), "hybrid_loss")
    res = train(replace(base, out_dir=str(out)))
    assert losses(out) == losses(tmp_path / "ref") and len(losses(out)) == 6
    for (k, p), q in zip(res.net.state_dict().items(), ref.net.state_dict().values()):
        assert torch.equal(p, q), k
    a, b = load_checkpoint(out / "checkpoint.safetensors"), load_checkpoint(tmp_path / "ref" / "checkpoint.safetensors")
    assert all(torch.equal(a.loss_history[k], b.loss_history[k]) for k in ("values", "count"))
