"""Cascaded super-resolution against the exact conditional law of Gaussian data (float64), and the learned
SR stage's wiring (channel concatenation, noise-conditioning augmentation)."""

import pytest
import torch

import scoresde
from scoresde.analytic import AnalyticModel, CorrelatedGaussian, CorrelatedGaussianModel, Gaussian
from scoresde.latent.cascade import (
    ConditionedNet, SRStage, augment_low_res, downsample, noise_feature, sample_cascade, sr_loss, upsample,
)
from scoresde.latent.exact_sr import ExactGaussianSR, pool_matrix
from scoresde.latent.linear import LinearAutoencoder
from scoresde.latent.model import LatentModel
from scoresde.nn.dit import DiT, DiTConfig
from scoresde.nn.unet import UNet, UNetConfig

SHAPE, LOW = (1, 4, 4), (1, 2, 2)  # 16 high-resolution dims, 4 low-resolution ones (factor 2)
N = 4000


def smooth_gaussian() -> CorrelatedGaussian:
    """A smooth image law: squared-exponential covariance over pixel positions plus a random part."""
    ij = torch.cartesian_prod(torch.arange(4.0), torch.arange(4.0)).double()
    C = 0.6 * torch.exp(-torch.cdist(ij, ij) ** 2 / (2 * 1.5**2))
    A = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    C = C + 0.02 * A @ A.T / 16 + 0.01 * torch.eye(16, dtype=torch.float64)
    m = torch.linspace(-0.4, 0.5, 16, dtype=torch.float64)
    return CorrelatedGaussian(m.reshape(SHAPE), C)


def exact_stage() -> ExactGaussianSR:
    return ExactGaussianSR(smooth_gaussian(), scoresde.VPSDE(), 2)


def check_law(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, z: float = 4.5) -> None:
    """Sample mean and covariance of x (n, *D) within z standard errors of the law's, entry by entry.

    Standard errors: sqrt(C_ii / n) for the mean, sqrt((C_ii C_jj + C_ij^2) / n) for a covariance entry;
    sigma(t_eps)^2 ~ 1e-4 of the solver's end point is added to the diagonal variance it is compared with."""
    x, n = x.flatten(1), x.shape[0]
    var = torch.diagonal(cov) + 1e-4
    assert ((x.mean(0) - mean.reshape(-1)).abs() / (var / n).sqrt()).max() < z
    se_cov = ((torch.outer(var, var) + cov**2) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() / se_cov).max() < z


def test_the_conditional_law_is_the_gaussian_conditional_of_the_joint():
    # independent check: (x, w) as one CorrelatedGaussian of 20 dims and its `conditional` (a Schur complement)
    stage = exact_stage()
    data, P = stage.data, stage.pool
    w = torch.tensor([[[[0.3, -0.2], [0.1, 0.5]]]], dtype=torch.float64)
    for s, ridge in ((0.3, 0.0), (0.0, 1e-5)):
        tt = torch.tensor([s], dtype=torch.float64)
        a = float(stage.aug_sde.alpha(tt)) if s else 1.0
        b = float(stage.aug_sde.sigma(tt)) if s else ridge
        C, m = data.cov, data.mean.reshape(-1)
        joint = torch.cat([torch.cat([C, a * C @ P.T], 1), torch.cat([a * P @ C, a**2 * P @ C @ P.T + b**2 * torch.eye(4,
                           dtype=torch.float64)], 1)])
        law = CorrelatedGaussian(torch.cat([m, a * P @ m]), joint)
        mask = torch.cat([torch.zeros(16, dtype=torch.bool), torch.ones(4, dtype=torch.bool)])
        mean_ref, cov_ref = law.conditional(torch.cat([torch.zeros(16, dtype=torch.float64), w.reshape(-1)]), mask)
        mean, cov = stage.conditional_law(w, s)
        torch.testing.assert_close(mean.reshape(-1), mean_ref, rtol=0, atol=1e-7 if ridge else 1e-12)
        torch.testing.assert_close(cov, cov_ref, rtol=0, atol=1e-7 if ridge else 1e-12)
    # zero augmentation: P x equals w exactly under the conditional law (mean P-maps to w, cov has P C' P^T = 0)
    mean, cov = stage.conditional_law(w, 0.0)
    torch.testing.assert_close(P @ mean.reshape(-1), w.reshape(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(P @ cov @ P.T, torch.zeros(4, 4, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver,steps", [("dpm_solver++", 20), ("sde_dpm_solver++", 40), ("unipc", 20)])
@pytest.mark.parametrize("s", [0.0, 0.3])
def test_sr_sampler_samples_the_exact_conditional_law(solver, steps, s):
    stage = exact_stage()
    low = torch.tensor([[[[0.3, -0.2], [0.1, 0.5]]]], dtype=torch.float64)
    w = augment_low_res(low, s, stage.aug_sde, generator=torch.Generator().manual_seed(7))
    model = stage.conditioned(w.expand(N, *LOW), s)
    x = scoresde.sample(model, solver=solver, steps=steps, n=N, shape=SHAPE, seed=1, dtype=torch.float64).x
    mean, cov = stage.conditional_law(w, s)
    check_law(x, mean[0], cov)
    if s == 0.0:  # zero augmentation: the samples keep the low-resolution image (up to sigma(t_eps) ~ 1e-2)
        assert (downsample(x, 2) - low).abs().max() < 0.05


@pytest.mark.parametrize("latent_base", [False, True])
def test_the_exact_cascade_samples_the_data_law(latent_base):
    stage = exact_stage()
    low_law = stage.low_res_law()
    base = CorrelatedGaussianModel(low_law, stage.sde)
    if latent_base:  # the same low-resolution law as a latent model: z = U^T l is diagonal in the eigenbasis U
        U, lam = low_law.eigvecs, low_law.eigvals
        latent = AnalyticModel(Gaussian((U.T @ low_law.mean.reshape(-1)).reshape(LOW), lam.sqrt().reshape(LOW)), stage.sde)
        base = LatentModel(latent, LinearAutoencoder(U, LOW))
    out = sample_cascade(base, stage, n=N, seed=3, dtype=torch.float64, base_options={"solver": "dpm_solver++", "steps": 20},
                         sr_options={"solver": "unipc", "steps": 20})
    assert out.x.shape == (N, *SHAPE) and out.low.shape == (N, *LOW) and torch.equal(out.w, out.low)
    assert out.nfe == {"base": 20, "sr": 20} and out.settings["sr"]["solver"] == "unipc"
    check_law(out.x, stage.data.mean, stage.data.cov)
    assert (downsample(out.x, 2) - out.low).abs().max() < 0.05


def test_augmentation_noises_the_condition_by_the_forward_process():
    sde = scoresde.VPSDE()
    low = torch.full((20000, 1, 1, 1), 0.8, dtype=torch.float64)
    w = augment_low_res(low, 0.4, sde, generator=torch.Generator().manual_seed(0))
    tt = torch.tensor([0.4], dtype=torch.float64)
    assert abs(float(w.mean()) - 0.8 * float(sde.alpha(tt))) < 4 * float(sde.sigma(tt)) / 20000**0.5
    assert abs(float(w.std()) / float(sde.sigma(tt)) - 1) < 0.02
    assert torch.equal(augment_low_res(low[:3], 0.0, sde, generator=torch.Generator()), low[:3])
    torch.testing.assert_close(noise_feature(sde, torch.tensor([0.0, 0.4]), low[:2]),
                               torch.tensor([[0.0], [float(sde.sigma(tt) / sde.alpha(tt))]], dtype=torch.float64))
    with pytest.raises(ValueError, match="levels s must be finite and >= 0"):
        augment_low_res(low[:2], -0.1, sde)


def test_pooling_and_upsampling():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(downsample(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    torch.testing.assert_close(downsample(upsample(downsample(x, 2), 2), 2), downsample(x, 2))
    torch.testing.assert_close((x.flatten(1) @ pool_matrix((1, 4, 4), 2, dtype=torch.float32).T).reshape(1, 1, 2, 2),
                               downsample(x, 2))


def tiny_sr_stage(backbone: str = "unet") -> SRStage:
    torch.manual_seed(0)
    if backbone == "unet":
        net = UNet(UNetConfig(image_size=8, in_channels=6, out_channels=3, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                              attn_resolutions=(), dropout=0.0, augment_dim=1))
    else:
        net = DiT(DiTConfig(image_size=8, in_channels=6, out_channels=3, patch_size=2, hidden_size=32, depth=1,
                            num_heads=2, embedding_dim=16, augment_dim=1))
    return SRStage(net, scoresde.VPSDE(), (3, 8, 8), 2)


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_the_learned_stage_concatenates_the_upsampled_condition(backbone):
    stage = tiny_sr_stage(backbone)
    seen = {}

    def spy(x_in, c_noise, y=None, augment_labels=None):
        seen.update(x_in=x_in, aug=augment_labels)
        return stage.backbone(x_in, c_noise, y, augment_labels=augment_labels)

    w = torch.randn(2, 3, 4, 4)
    model = stage.conditioned(w, 0.25)
    model.net = ConditionedNet(spy, model.net.cond, model.net.feature)
    x = torch.randn(2, 3, 8, 8)
    out = model.eps(x, torch.full((2,), 0.5))
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(seen["x_in"], torch.cat([x, upsample(w, 2)], 1))
    assert seen["aug"].shape == (2, 1) and float(seen["aug"][0, 0]) > 0
    with pytest.raises(ValueError, match=r"shape \(B, 3, 4, 4\)"):
        stage.conditioned(torch.randn(2, 3, 8, 8), 0.0)


def smooth_images(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.tanh(torch.randn(n, 3, 8, 8, generator=gen).cumsum(2).cumsum(3) / 6)


def test_the_cascade_runs_with_a_learned_stage():
    stage = tiny_sr_stage()
    base = CorrelatedGaussianModel(CorrelatedGaussian(torch.zeros(3, 4, 4), torch.eye(48)), stage.sde)
    out = sample_cascade(base, stage, n=3, seed=0, aug_level=0.2, base_options={"solver": "ddim", "steps": 3},
                         sr_options={"solver": "heun", "steps": 3})
    assert out.x.shape == (3, 3, 8, 8) and bool(torch.isfinite(out.x).all()) and not torch.equal(out.w, out.low)
    again = sample_cascade(base, stage, n=3, seed=0, aug_level=0.2, base_options={"solver": "ddim", "steps": 3},
                           sr_options={"solver": "heun", "steps": 3})
    assert torch.equal(out.x, again.x)
    loss = sr_loss(stage, smooth_images(4, torch.Generator().manual_seed(0)), s_max=0.5)
    assert loss.shape == (4,) and bool(torch.isfinite(loss).all())
    with pytest.raises(ValueError, match=r"sr_options must not set \['batch_size'\]"):
        sample_cascade(base, stage, n=3, seed=0, sr_options={"batch_size": 1})
    with pytest.raises(ValueError, match="aug_level"):
        sample_cascade(base, stage, n=3, seed=0, aug_level=-1.0)


@pytest.mark.slow
def test_a_few_sr_training_steps_lower_the_loss():
    stage = tiny_sr_stage()
    gen = torch.Generator().manual_seed(0)
    x = smooth_images(64, gen)
    opt = torch.optim.Adam(stage.backbone.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = sr_loss(stage, x, s_max=0.5, generator=gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
