"""Latent diffusion and cascaded super-resolution (docs/latent.md).

- `scoresde.latent.model`: `LatentModel`, a diffusion model over latents composed with an autoencoder's
  decoder (and encoder): `scoresde.sample` runs any solver in latent space and returns decoded images.
- `scoresde.latent.linear`: `LinearAutoencoder`, an invertible linear map, the exact yardstick.
- `scoresde.latent.likelihood`: `pixel_log_likelihood`, the exact change of variables through a linear decoder.
- `scoresde.latent.sr_stage`: the super-resolution stage (channel concatenation, noise-conditioning
  augmentation) and its loss `sr_loss` (trained by `scoresde train --sr-factor F`); `scoresde.latent.cascade`:
  `sample_cascade` (and the stage's names again); `scoresde.latent.exact_sr`: the exact SR stage of Gaussian data.
- `scoresde.latent.vae` (the KL-regularized convolutional VAE), `vae_train` (its training and scale
  factor), `vae_files` (its model files).
"""
