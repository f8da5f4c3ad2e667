"""scoresde.interop against the real diffusers package, and the EDM / k-diffusion denoiser adapters.

Equality tests run a tiny randomly initialized UNet2DModel (8x8, float32) through diffusers'
scheduler loops and through our solvers on `grid_from_scheduler`; target: 1e-5 relative (max |diff|
over max |reference|). Measured on 0.42.1: about 5e-7 for every scheduler and prediction type here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

import solvers
from solvers.base import OneStepSolver
from solvers.coefficients import step_coefficients
from solvers.protocol import coef, time_like
from scoresde import AnalyticModel, CFGModel, Gaussian, VESDE, VPSDE, bits_per_dim
from scoresde.interop import (
    DiffusersStyleUNet,
    EDMPrecond,
    as_denoiser,
    edm_preconditioning,
    from_denoiser,
    from_diffusers,
    grid_from_scheduler,
    grid_from_timesteps,
    load_diffusers,
    require_diffusers,
    scheduler_betas,
    sde_from_scheduler,
)

RTOL = 1e-5


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_import_scoresde_does_not_import_diffusers():
    code = "import sys, scoresde, scoresde.interop; sys.exit('diffusers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0


def test_missing_diffusers_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(ImportError, match=r"scoresde\[diffusers\]"):
        require_diffusers()
    with pytest.raises(ImportError, match=r"scoresde\[diffusers\]"):
        load_diffusers(tmp_path)
    with pytest.raises(ImportError, match=r"scoresde\[diffusers\]"):
        sde_from_scheduler({"num_train_timesteps": 10, "beta_schedule": "linear"})


try:  # the `test` extra installs diffusers; without it only the tests that need it are skipped
    import diffusers
except ImportError:
    diffusers = None
needs_diffusers = pytest.mark.skipif(diffusers is None, reason="needs the diffusers extra")
# diffusers 0.42.1 turns a tensor into a numpy array the way numpy 2 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def tiny_unet(num_class_embeds=None, seed=0):
    torch.manual_seed(seed)  # diffusers' initializers draw from the global generator
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=num_class_embeds,
    )
    return unet.eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def diffusers_loop(unet, scheduler, x_T, *, generator=None, labels=None, scale=None, null=None):
    """diffusers' sampling loop (as its pipelines run it), with classifier-free guidance when `scale` is set."""
    x = x_T.clone()
    extra = {} if generator is None else {"generator": generator}
    with torch.no_grad():
        for n in scheduler.timesteps:
            if scale is None:
                out = unet(x, n).sample
            else:
                cond, uncond = unet(torch.cat([x, x]), n, class_labels=torch.cat([labels, null])).sample.chunk(2)
                out = uncond + scale * (cond - uncond)
            x = scheduler.step(out, n, x, **extra).prev_sample
    return x


@needs_diffusers
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "trained_betas"])
def test_sde_matches_scheduler_alphas_cumprod(schedule):
    kwargs = {"beta_schedule": schedule}
    if schedule == "trained_betas":
        kwargs = {"trained_betas": torch.linspace(1e-3, 0.05, 50).tolist(), "num_train_timesteps": 50}
    scheduler = diffusers.DDIMScheduler(**kwargs)
    sde = sde_from_scheduler(scheduler)
    N = scheduler.config.num_train_timesteps
    t = (torch.arange(N, dtype=torch.float64) + 1) / N
    torch.testing.assert_close(sde.alpha(t) ** 2, scheduler.alphas_cumprod.double(), rtol=1e-12, atol=0)
    assert sde_from_scheduler(scheduler.config).N == N  # from the config alone


@needs_diffusers
def test_network_sees_diffusers_timesteps(unet, x_T):
    seen = []
    spy = lambda x, n, **kw: (seen.append(n.detach().clone()), unet(x, n, **kw))[1]  # noqa: E731
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(5)
    with torch.no_grad():
        solvers.get("ddim")(from_diffusers(spy, scheduler), x_T, grid_from_scheduler(scheduler))
    assert [s.dtype for s in seen] == [torch.float32] * 5
    assert torch.equal(torch.stack([s[0] for s in seen]), scheduler.timesteps.float())


CASES = {  # name: (scheduler class, its options, our solver, steps)
    "ddim_leading": ("DDIMScheduler", {"timestep_spacing": "leading", "clip_sample": False}, "ddim", 10),
    "ddim_trailing": ("DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False}, "ddim", 10),
    "dpm_solver++_2m": ("DPMSolverMultistepScheduler", {}, "dpm_solver++", 10),
    "ddpm": ("DDPMScheduler", {"clip_sample": False}, "ancestral", 10),
}


@needs_diffusers
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_solver_equals_diffusers_scheduler(unet, x_T, case, prediction_type):
    cls, options, solver, steps = CASES[case]
    scheduler = getattr(diffusers, cls)(prediction_type=prediction_type, **options)
    scheduler.set_timesteps(steps)
    ref = diffusers_loop(unet, scheduler, x_T, generator=torch.Generator().manual_seed(5))
    model = from_diffusers(unet, scheduler)
    with torch.no_grad():  # the same seed: ancestral draws its noise in diffusers' order
        ours = solvers.get(solver)(model, x_T, grid_from_scheduler(scheduler), generator=torch.Generator().manual_seed(5))
    assert ours.nfe == steps
    assert rel(ours.x, ref) < RTOL


@needs_diffusers
def test_learned_range_variance_equals_ddpm_learned(x_T):
    # out_channels 6: eps and Improved DDPM's variance output; "leading" ends on timestep 0, where
    # neither adds noise (with "trailing" diffusers' last step from timestep 99 to -1 adds noise of log-variance
    # v log beta + (1 - v) log 1e-20, its clamp, where ours has variance 0: 5e-5 relative)
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=6, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    scheduler = diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=False)
    scheduler.set_timesteps(10)
    ref = diffusers_loop(unet, scheduler, x_T, generator=torch.Generator().manual_seed(5))
    model = from_diffusers(unet, scheduler)
    assert model.learned_variance
    with torch.no_grad():
        ours = solvers.get("ddpm_learned")(model, x_T, grid_from_scheduler(scheduler), generator=torch.Generator().manual_seed(5))
    assert rel(ours.x, ref) < RTOL


@needs_diffusers
def test_ddim_final_alpha_and_steps_offset(unet, x_T):
    scheduler = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(4)
    ts = grid_from_scheduler(scheduler)
    assert ts[-1] == 1 / 1000  # alphas_cumprod[0]: timestep 0
    with torch.no_grad():
        ours = solvers.get("ddim")(from_diffusers(unet, scheduler), x_T, ts)
    assert rel(ours.x, diffusers_loop(unet, scheduler, x_T)) < RTOL


@needs_diffusers
def test_dpm_solver_sigma_min_final_first_order_step(unet, x_T):
    # diffusers' last step is first order below 15 steps; ours only below 10: split the run there
    scheduler = diffusers.DPMSolverMultistepScheduler(final_sigmas_type="sigma_min")
    scheduler.set_timesteps(12)
    ts = grid_from_scheduler(scheduler)
    model = from_diffusers(unet, scheduler)
    with torch.no_grad():
        x = solvers.get("dpm_solver++")(model, x_T, ts[:-1]).x
        x = solvers.get("dpm_solver++", order=1)(model, x, ts[-2:]).x
    assert rel(x, diffusers_loop(unet, scheduler, x_T)) < RTOL


@needs_diffusers
def test_cosine_v_trailing_ddim_in_data_form(unet, x_T):
    # alphas_cumprod[999] = 2.4e-9 on squaredcos_cap_v2: DDIM through eps divides by alpha = 5e-5 in
    # float32 (1e-4 relative); DPM-Solver++(1), the same method in data form, stays at round-off
    scheduler = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                        clip_sample=False, timestep_spacing="trailing")
    scheduler.set_timesteps(10)
    with torch.no_grad():
        ours = solvers.get("dpm_solver++", order=1)(from_diffusers(unet, scheduler), x_T, grid_from_scheduler(scheduler))
    assert rel(ours.x, diffusers_loop(unet, scheduler, x_T)) < RTOL


def clipped_ddim_step(model, x, s, t, *, generator=None):
    """The custom solver of docs/interop.md: DDIM (eta = 0) with x0 clipped, eps kept (clip_sample=True)."""
    c = step_coefficients(model.sde, s, t)
    eps = model.eps(x, time_like(s, x))
    x0 = ((x - coef(c.sigma_s.reshape(1), x) * eps) / coef(c.alpha_s.reshape(1), x)).clamp(-1, 1)
    return coef(c.alpha_t.reshape(1), x) * x0 + coef(c.sigma_t.reshape(1), x) * eps, x0


@dataclass(frozen=True, kw_only=True)
class ClippedDDIM(OneStepSolver):
    name = "clipped_ddim"
    description = "DDIM (eta = 0) with x0 clipped to [-1, 1], like diffusers' clip_sample=True"
    update = staticmethod(clipped_ddim_step)


@needs_diffusers
def test_custom_solver_reproduces_clip_sample(unet, x_T):
    scheduler = diffusers.DDIMScheduler(clip_sample=True)  # diffusers' default
    scheduler.set_timesteps(10)
    ref = diffusers_loop(unet, scheduler, x_T)  # a random UNet: x0 is clipped on the early steps
    model = from_diffusers(unet, scheduler)
    with torch.no_grad():
        ours = ClippedDDIM()(model, x_T, grid_from_scheduler(scheduler)).x
        plain = solvers.get("ddim")(model, x_T, grid_from_scheduler(scheduler)).x
    # round-off only, but amplified by the clipping: 9e-5 in float32, 1.2e-6 with the UNet and x in
    # float64 (diffusers' coefficients stay float32 there), against 3e-7 and 6e-8 without clipping
    assert rel(ours, ref) < 3e-4
    assert rel(plain, ref) > 1e-2  # our DDIM does not clip


@needs_diffusers
def test_grid_refuses_what_one_grid_cannot_reproduce():
    scheduler = diffusers.DDIMScheduler(timestep_spacing="trailing")
    scheduler.set_timesteps(7)  # steps n -> n - 142 while the next timestep is n - 143
    with pytest.raises(ValueError, match="no single grid"):
        grid_from_scheduler(scheduler)
    scheduler = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True)
    scheduler.set_timesteps(7)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        grid_from_scheduler(scheduler)
    with pytest.raises(ValueError, match="set_timesteps"):
        grid_from_scheduler(diffusers.DDIMScheduler())
    with pytest.raises(ValueError, match="unsupported scheduler"):
        grid_from_scheduler(diffusers.EulerDiscreteScheduler())
    assert grid_from_timesteps([9, 4], 10).tolist() == [1.0, 0.5, 0.0]


@needs_diffusers
def test_load_saved_folder_without_download(unet, tmp_path, x_T):
    scheduler = diffusers.DDIMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear")
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path)
    loaded = load_diffusers(tmp_path)
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert loaded.model.prediction == "v"
    t = torch.full((2,), 0.5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.v(x_T, t), from_diffusers(unet, scheduler).v(x_T, t))
        torch.testing.assert_close(loaded.model.v(x_T, t), from_diffusers(unet, dict(scheduler.config)).v(x_T, t))
    with pytest.raises(ValueError, match="no UNet folder"):
        load_diffusers(tmp_path / "missing")


@needs_diffusers
def test_load_refuses_unknown_classes_non_object_configs_and_pickled_weights(unet, tmp_path):
    import shutil

    good = tmp_path / "good"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(good)

    def copy_with(name, edit=None, drop_safetensors=False):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        if edit is not None:
            sub, text = edit
            (folder / sub).write_text(text)
        if drop_safetensors:
            weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
            torch.save(unet.state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
            weights.unlink()
        return folder

    config = json.loads((good / "unet" / "config.json").read_text())
    bad_unet = copy_with("bad_unet", ("unet/config.json", json.dumps({**config, "_class_name": "os"})))
    with pytest.raises(ValueError, match=r"unsupported _class_name 'os'; choose one of \['UNet2DModel'\]"):
        load_diffusers(bad_unet)
    sched = json.loads((good / "scheduler" / "scheduler_config.json").read_text())
    bad_sched = copy_with("bad_sched", ("scheduler/scheduler_config.json",
                                        json.dumps({**sched, "_class_name": "UNet2DModel"})))
    with pytest.raises(ValueError, match=r"unsupported _class_name 'UNet2DModel'; choose one of \['DDIMScheduler'"):
        load_diffusers(bad_sched)
    for name, text in [("list", "[1, 2]"), ("string", '"UNet2DModel"')]:
        folder = copy_with(name, ("unet/config.json", text))
        with pytest.raises(ValueError, match=r"config\.json: expected a JSON object"):
            load_diffusers(folder)
    with pytest.raises(ValueError, match=r"scheduler_config\.json: not valid JSON"):
        load_diffusers(copy_with("broken", ("scheduler/scheduler_config.json", "{")))
    # a .bin pickle alone is never loaded (unpickling can run code)
    with pytest.raises(ValueError, match=r"no \.safetensors weights in .*reads safetensors only"):
        load_diffusers(copy_with("pickled", drop_safetensors=True))
    assert type(load_diffusers(good).unet).__name__ == "UNet2DModel"


def test_denoiser_checks_noise_levels_on_every_device():
    """The noise-level check is one host read on any device, not CPU only ("meta" stands in for a GPU)."""
    model = AnalyticModel(Gaussian(torch.zeros(2, 3, dtype=torch.float64), 0.5), VPSDE())
    D = as_denoiser(model)
    x = torch.randn(2, 2, 3, dtype=torch.float64)
    for sigma in (0.0, -1.0, torch.tensor([0.5, float("nan")], dtype=torch.float64)):
        with pytest.raises(ValueError, match="noise levels must be > 0"):
            D(x, sigma)
    with pytest.raises(ValueError, match="x is on the meta device"):
        D(torch.empty(2, 2, 3, dtype=torch.float64, device="meta"), 0.5)
    assert D(x, 0.5).shape == x.shape


@needs_diffusers
def test_cfg_with_class_conditional_unet(x_T):
    K, w = 3, 2.5
    unet = tiny_unet(num_class_embeds=K + 1, seed=2)  # label K: no class
    scheduler = diffusers.DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(5)
    y = torch.tensor([0, 2])
    ref = diffusers_loop(unet, scheduler, x_T, labels=y, scale=w, null=torch.full_like(y, K))
    guided = CFGModel(from_diffusers(unet, scheduler), y, w, null_label=K)
    with torch.no_grad():
        ours = solvers.get("ddim")(guided, x_T, grid_from_scheduler(scheduler))
    assert rel(ours.x, ref) < RTOL
    assert guided.net_calls == 5


@needs_diffusers
def test_bits_per_dim_closed_form_and_unet(unet):
    # a UNet whose last layer is zero predicts eps = 0: the probability-flow ODE is x' = f(x, t), so
    # x_T = r x with r = alpha(T) / alpha(t_eps) and log p(x) = log N(r x; 0, I) + d log r exactly
    zero = tiny_unet(seed=3)
    torch.nn.init.zeros_(zero.conv_out.weight)
    torch.nn.init.zeros_(zero.conv_out.bias)
    scheduler = diffusers.DDPMScheduler()
    model = from_diffusers(zero, scheduler)
    x = torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0)) / 127.5 - 1
    # the fixed-budget mode (DPM-Solver++ on the ODE) is exact on this linear ODE; dopri5 agrees to 2e-6
    # relative but takes 100 evaluations
    res = bits_per_dim(model, x, levels=None, method="dpm_solver", steps=4, generator=torch.Generator().manual_seed(0))
    sde, d = model.sde, x[0].numel()
    r = sde.alpha(torch.tensor([1.0], dtype=torch.float64)) / sde.alpha(torch.tensor([sde.t_eps_likelihood], dtype=torch.float64))
    z = (r * x.double()).flatten(1)
    logp = -0.5 * (z**2).sum(1) - 0.5 * d * math.log(2 * math.pi) + d * torch.log(r)
    torch.testing.assert_close(res.logp.double(), logp, rtol=1e-6, atol=0)
    # the random UNet: a finite, reproducible bits/dim on 8-bit data (fixed budget, 4 steps)
    runs = [bits_per_dim(from_diffusers(unet, scheduler), x, method="dpm_solver", steps=4,
                         generator=torch.Generator().manual_seed(1)).bpd for _ in range(2)]
    assert bool(torch.isfinite(runs[0]).all()) and torch.equal(runs[0], runs[1])


@needs_diffusers
def test_scoresde_model_runs_under_diffusers_scheduler():
    # an exact Gaussian model on the continuous VP SDE, stepped by diffusers' DDIM on its own betas
    sde = VPSDE()
    model = AnalyticModel(Gaussian(torch.full((3, 4, 4), 0.3), 0.5), sde)
    scheduler = diffusers.DDIMScheduler(trained_betas=scheduler_betas(sde).tolist(), clip_sample=False)
    scheduler.set_timesteps(10)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = diffusers_loop(DiffusersStyleUNet(model), scheduler, x_T)
    ours = solvers.get("ddim")(model, x_T, grid_from_scheduler(scheduler)).x
    assert rel(ours, ref) < RTOL  # 1.1e-6: diffusers multiplies the 1000 betas out in float32


def gaussian_denoiser(mean: float, std: float):
    """E[x0 | x0 + n eps = x] for x0 ~ N(mean, std^2 I): the exact EDM denoiser of that law."""
    def D(x, n):
        n = n.reshape(-1, *([1] * (x.ndim - 1)))
        return mean + std**2 / (std**2 + n**2) * (x - mean)
    return D


@pytest.mark.parametrize("sde", [VESDE(), VPSDE()], ids=["ve", "vp"])
def test_from_denoiser_is_the_exact_model(sde):
    mean, std = 0.3, 0.5
    exact = AnalyticModel(Gaussian(torch.full((2, 3), mean, dtype=torch.float64), std), sde)
    model = from_denoiser(gaussian_denoiser(mean, std), sde)
    x, t = torch.randn(4, 2, 3, dtype=torch.float64), torch.tensor([0.05, 0.3, 0.7, 1.0], dtype=torch.float64)
    for kind in ("x0", "eps", "score", "v"):
        torch.testing.assert_close(getattr(model, kind)(x, t), getattr(exact, kind)(x, t))
    # and back: our model as a denoiser is D again
    n = torch.tensor([0.01, 0.5, 3.0, 40.0], dtype=torch.float64)
    torch.testing.assert_close(as_denoiser(exact)(x, n), gaussian_denoiser(mean, std)(x, n))


def test_edm_preconditioning_table_1():
    n, sd = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64), 0.5
    c_skip, c_out, c_in, c_noise = edm_preconditioning(n, sd)
    torch.testing.assert_close(c_skip, sd**2 / (n**2 + sd**2))
    torch.testing.assert_close(c_out, n * sd / (n**2 + sd**2).sqrt())
    torch.testing.assert_close(c_in, 1 / (n**2 + sd**2).sqrt())
    torch.testing.assert_close(c_noise, 0.25 * n.log())
    # the effective training target (x0 - c_skip x) / c_out has unit variance for x0 ~ N(0, sd^2) (Eq. 8)
    torch.testing.assert_close((1 - c_skip) ** 2 * sd**2 + c_skip**2 * n**2, c_out**2)
    # a raw network F built from the exact denoiser gives that denoiser back through EDMPrecond
    D = gaussian_denoiser(0.0, sd)

    def F(x_in, c):
        noise = torch.exp(4 * c)
        c_skip, c_out, c_in, _ = edm_preconditioning(noise, sd)
        x = x_in / c_in.reshape(-1, 1)
        return (D(x, noise) - c_skip.reshape(-1, 1) * x) / c_out.reshape(-1, 1)

    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(EDMPrecond(F, sd)(x, n), D(x, n))
    model = from_denoiser(F, precondition=True, sigma_data=sd)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    exact = AnalyticModel(Gaussian(torch.zeros(5, dtype=torch.float64), sd), model.sde)
    torch.testing.assert_close(model.eps(x, t), exact.eps(x, t))


@needs_diffusers
def test_k_diffusion_euler_on_our_model_is_ddim(unet, x_T):
    # k-diffusion's Euler step in the noise level n on x_hat = x / alpha is DDIM (eta = 0) exactly
    scheduler = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    scheduler.set_timesteps(5)
    model = from_diffusers(unet, scheduler)
    ts = grid_from_scheduler(scheduler)[:-1]  # k-diffusion ends at n > 0 here: keep t_end > 0
    D = as_denoiser(model)
    n = torch.exp(-model.sde.lambda_(ts))
    x = x_T / model.sde.alpha(ts[:1]).float()
    with torch.no_grad():
        for n_cur, n_next in zip(n[:-1], n[1:]):
            d = (x - D(x, n_cur)) / n_cur.float()  # k_diffusion.sampling.to_d
            x = x + d * (n_next - n_cur).float()
        ours = solvers.get("ddim")(model, x_T, ts).x
    assert rel(x * model.sde.alpha(ts[-1:]).float(), ours) < 1e-5
    assert D.sigma_min < D.sigma_max
