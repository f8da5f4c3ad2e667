"""LatentModel against exact ground truth: with an orthogonal "autoencoder" Q, latent diffusion of the law
of Q^T x equals pixel diffusion of x sample for sample (float64, deterministic solvers, x_T = Q z_T); with a
scaled orthogonal map the likelihood shifts by d log s - log|det A| exactly; guidance runs on the latents."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis.strategies import floats, integers

import scoresde
from scoresde.analytic import AnalyticModel, ConditionalAnalyticModel, CorrelatedGaussian, CorrelatedGaussianModel
from scoresde.analytic import Gaussian, GaussianMixture
from scoresde.latent.likelihood import pixel_log_likelihood
from scoresde.latent.linear import LinearAutoencoder
from scoresde.latent.model import LatentModel

SHAPE = (1, 2, 2)  # one 2x2 grey image: d = 4
D = 4
DETERMINISTIC = ["ddim", "heun", "dpm_solver", "dpm_solver++", "unipc", "ipndm", "deis"]


def orthogonal(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64, generator=gen))
    return q * torch.sign(torch.diagonal(r))  # a proper Haar draw


def pixel_and_latent(c: float = 1.0, s: float = 1.0, seed: int = 0):
    """Pixel data N(m, Q diag(std^2) Q^T) (exact correlated model) and the latent model of z = s A^-1 x,
    A = c Q: z ~ N((s/c) Q^T m, diag((s/c)^2 std^2)) (a diagonal Gaussian, AnalyticModel)."""
    Q = orthogonal(seed)
    m = torch.tensor([0.3, -0.5, 0.8, 0.1], dtype=torch.float64)
    std = torch.tensor([0.2, 0.5, 1.0, 1.5], dtype=torch.float64)
    sde = scoresde.VPSDE()
    pixel = CorrelatedGaussianModel(CorrelatedGaussian(m.reshape(SHAPE), Q @ torch.diag(std**2) @ Q.T), sde)
    k = s / c
    latent = AnalyticModel(Gaussian((k * Q.T @ m).reshape(SHAPE), (k * std).reshape(SHAPE)), sde)
    return pixel, LatentModel(latent, LinearAutoencoder(c * Q, SHAPE, scale_factor=s))


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_latent_diffusion_equals_pixel_diffusion_sample_for_sample(solver):
    pixel, model = pixel_and_latent()
    z_T = torch.randn(16, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x_T = model.decode(z_T)  # = Q z_T: the same noise, mapped through the matrix
    lat = scoresde.sample(model, solver=solver, steps=8, x_T=z_T)
    pix = scoresde.sample(pixel, solver=solver, steps=8, x_T=x_T)
    assert lat.x.shape == (16, *SHAPE) and lat.x.dtype == torch.float64
    torch.testing.assert_close(lat.x, pix.x, rtol=0, atol=1e-11)
    assert lat.nfe == pix.nfe
    assert lat.settings["latent"] == {"latent_shape": list(SHAPE), "image_shape": list(SHAPE), "scale_factor": 1.0,
                                      "autoencoder": "LinearAutoencoder"}
    # and it is not trivially so: the latent samples themselves are not the pixel samples
    assert (scoresde.sample(model.latent, solver=solver, steps=8, x_T=z_T).x - pix.x).abs().max() > 0.1


def test_seeded_latent_sampling_decodes_the_latent_run_in_chunks():
    _, model = pixel_and_latent(c=2.0, s=0.7)
    out = scoresde.sample(model, solver="pc", steps=20, n=10, seed=3, batch_size=4, dtype=torch.float64)
    z = scoresde.sample(model.latent, solver="pc", steps=20, n=10, seed=3, batch_size=4, shape=SHAPE,
                        dtype=torch.float64).x
    torch.testing.assert_close(out.x, (2.0 * orthogonal(0) @ (z / 0.7).flatten(1).T).T.reshape(10, *SHAPE))
    assert out.settings["latent"]["scale_factor"] == 0.7 and out.settings["nfe_per_chunk"] == [40, 40, 40]


@pytest.mark.parametrize("solver", [pytest.param("euler_maruyama", marks=pytest.mark.slow), "dpm_solver++"])
def test_decoded_samples_have_the_pixel_law(solver):
    # stochastic solvers draw their noise in latent coordinates, so only the law can match (and does)
    pixel, model = pixel_and_latent(c=2.0, s=1.5)
    n = 6000
    x = scoresde.sample(model, solver=solver, steps=200 if solver == "euler_maruyama" else 20, n=n, seed=0,
                        dtype=torch.float64).x.flatten(1)
    mean, cov = pixel.data.mean.reshape(-1), pixel.data.cov
    # standard errors: of the mean sqrt(C_ii / n); of a covariance entry sqrt((C_ii C_jj + C_ij^2) / n)
    se_mean = (torch.diagonal(cov) / n).sqrt()
    se_cov = ((torch.outer(torch.diagonal(cov), torch.diagonal(cov)) + cov**2) / n).sqrt()
    assert ((x.mean(0) - mean).abs() / se_mean).max() < 4.5
    assert ((torch.cov(x.T) - cov).abs() / se_cov).max() < 4.5 + (3.0 if solver == "euler_maruyama" else 0.0)


def test_orthogonal_likelihood_equals_pixel_likelihood():
    pixel, model = pixel_and_latent()
    x = pixel.data.sample(5, generator=torch.Generator().manual_seed(2))
    options = dict(method="rk4", steps=10, divergence="exact")
    lat = scoresde.log_likelihood(model, x, **options)
    pix = scoresde.log_likelihood(pixel, x, **options)
    torch.testing.assert_close(lat.logp, pix.logp, rtol=0, atol=1e-10)  # log|det Q| = 0
    assert lat.settings["space"] == "latent" and lat.settings["latent_dim"] == D
    assert "decoder's density" in lat.settings["pixel_likelihood"]
    torch.testing.assert_close(lat.z, model.encode(pix.z), rtol=0, atol=1e-10)


def test_scaled_map_shifts_the_likelihood_by_the_log_determinant():
    c, s = 2.0, 1.5
    pixel, model = pixel_and_latent(c=c, s=s)
    x = pixel.data.sample(5, generator=torch.Generator().manual_seed(2))
    options = dict(method="rk4", steps=30, divergence="exact")
    lat = scoresde.log_likelihood(model, x, **options)
    pix = pixel_log_likelihood(model, x, **options)
    shift = D * math.log(s) - D * math.log(c)  # d log s - log|det (c Q)|
    assert pix.settings["log_det_shift"] == pytest.approx(shift, abs=1e-12) and abs(shift) > 1.0
    torch.testing.assert_close(pix.logp - lat.logp, torch.full_like(lat.logp, shift), rtol=0, atol=1e-12)
    # against the exact density of the pixel data, once the ODE's prior N(0, I) is replaced by the exact
    # marginal p_T of the latents (VP's alpha(T) = 6.6e-3 is not 0) and up to the start at t_eps = 1e-5
    T = torch.full((5,), model.sde.T, dtype=torch.float64)
    prior_fix = model.latent.log_prob(pix.z, T) - model.sde.prior_logp(pix.z)
    assert prior_fix.abs().max() > 1e-3  # what the correction corrects is not nothing
    torch.testing.assert_close(pix.logp + prior_fix, pixel.data.log_prob(x), rtol=0, atol=1e-4)
    torch.testing.assert_close(pix.bpd, -pix.logp / (D * math.log(2)))
    assert pix.settings["space"] == "pixel"


def test_bits_per_dim_of_a_latent_model_refuses_pixel_dequantization():
    pixel, model = pixel_and_latent()
    x = pixel.data.sample(2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="pass levels=None"):
        scoresde.bits_per_dim(model, x)
    res = scoresde.bits_per_dim(model, x, levels=None, method="rk4", steps=10, divergence="exact")
    assert res.settings["space"] == "latent"


def test_a_vae_like_decoder_has_no_pixel_likelihood():
    class NotLinear(LinearAutoencoder):
        log_abs_det = None

    _, model = pixel_and_latent()
    with pytest.raises(ValueError, match="no density of its own"):
        pixel_log_likelihood(LatentModel(model.latent, NotLinear(torch.eye(D, dtype=torch.float64), SHAPE)),
                             torch.zeros(1, *SHAPE, dtype=torch.float64))


def test_guidance_runs_on_the_latents_and_equals_guided_pixel_diffusion():
    # a signed permutation P is orthogonal and keeps a diagonal mixture diagonal: pixel and latent
    # models are then both ConditionalAnalyticModel, with means P^T m_k and permuted stds
    perm, signs = torch.tensor([2, 0, 3, 1]), torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    P = torch.zeros(D, D, dtype=torch.float64)
    P[perm, torch.arange(D)] = signs  # P e_j = sign_j e_perm(j)
    means = torch.tensor([[1.0, -0.5, 0.2, 0.7], [-0.8, 0.4, -0.3, 0.0]], dtype=torch.float64)
    stds = torch.tensor([[0.3, 0.6, 0.9, 0.4], [0.5, 0.2, 0.7, 1.1]], dtype=torch.float64)
    weights = torch.tensor([0.4, 0.6], dtype=torch.float64)
    sde = scoresde.VPSDE()
    pixel = ConditionalAnalyticModel(GaussianMixture(weights, means.reshape(2, *SHAPE), stds.reshape(2, *SHAPE)), sde)
    latent = ConditionalAnalyticModel(GaussianMixture(weights, (means @ P).reshape(2, *SHAPE),
                                                      (stds @ P.abs()).reshape(2, *SHAPE)), sde)
    model = LatentModel(latent, LinearAutoencoder(P, SHAPE))
    assert model.null_label == 2 and model.num_classes == 2
    z_T = torch.randn(8, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    for solver in ("dpm_solver++", "heun"):
        lat = scoresde.sample(model, solver=solver, steps=10, x_T=z_T, y=y, guidance_scale=2.5)
        pix = scoresde.sample(pixel, solver=solver, steps=10, x_T=model.decode(z_T), y=y, guidance_scale=2.5)
        torch.testing.assert_close(lat.x, pix.x, rtol=0, atol=1e-11)
        assert lat.settings["guidance"]["scale"] == 2.5 and lat.settings["guidance"]["null_label"] == 2


def test_bad_inputs_are_refused():
    pixel, model = pixel_and_latent()
    with pytest.raises(ValueError, match="lacks 'encode'"):
        LatentModel(model.latent, object())
    with pytest.raises(ValueError, match="lacks 'eps'"):
        LatentModel(object(), model.autoencoder)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 2, 2\)"):
        model.encode(torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="must be invertible"):
        LinearAutoencoder(torch.zeros(D, D), SHAPE)
    with pytest.raises(ValueError, match="scale_factor"):
        LinearAutoencoder(torch.eye(D), SHAPE, scale_factor=0.0)


def test_labels_for_an_unconditional_latent_model_are_refused():
    _, model = pixel_and_latent()
    z_T = torch.zeros(2, *SHAPE, dtype=torch.float64)
    with pytest.raises(ValueError, match="takes none: guidance needs a class-conditional latent model"):
        scoresde.sample(model, solver="ddim", steps=2, x_T=z_T, y=0, guidance_scale=2.0)


@settings(max_examples=25, deadline=None)
@given(scale=floats(0.05, 20.0), c=floats(0.1, 10.0), seed=integers(0, 2**16))
def test_encode_decode_round_trip_and_the_determinant_shift(scale, c, seed):
    A = c * orthogonal(seed) @ torch.diag(torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64))
    ae = LinearAutoencoder(A, SHAPE, (4,), scale_factor=scale)
    model = LatentModel(AnalyticModel(Gaussian(torch.zeros(4, dtype=torch.float64)), scoresde.VPSDE()), ae)
    x = torch.randn(3, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    z = model.encode(x)
    assert z.shape == (3, 4)
    torch.testing.assert_close(z, scale * (x.flatten(1) @ torch.linalg.inv(A).T))
    torch.testing.assert_close(model.decode(z), x)
    assert ae.log_abs_det() == pytest.approx(4 * math.log(c) + math.log(1.5), abs=1e-9)
