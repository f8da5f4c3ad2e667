"""Latent diffusion and cascaded super-resolution (docs/latent.md).

- `scoresde.latent.model`: `LatentModel`, a diffusion model over latents composed with an autoencoder's
  decoder (and encoder): `scoresde.sample` runs any solver in latent space and returns decoded images.
- `scoresde.latent.linear`: `LinearAutoencoder`, an invertible linear map, the exact yardstick.
- `scoresde.latent.likelihood`: `pixel_log_likelihood`, the exact change of variables through a linear decoder.
- `scoresde.latent.cascade`: the super-resolution stage (channel concatenation, noise-conditioning
  augmentation), its loss `sr_loss` and `sample_cascade`; `scoresde.latent.exact_sr`: the exact SR stage
  of Gaussian data.
- `scoresde.latent.vae` (the KL-regularized convolutional VAE), `vae_train` (its training and scale
  factor), `vae_files` (its model files).
"""
