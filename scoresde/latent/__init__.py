"""Latent diffusion and cascaded super-resolution (docs/latent.md).

- `scoresde.latent.model`: `LatentModel`, a diffusion model over latents composed with an autoencoder's
  decoder (and encoder): `scoresde.sample` runs any solver in latent space and returns decoded images.
- `scoresde.latent.linear`: `LinearAutoencoder`, an invertible linear map, the exact yardstick.
- `scoresde.latent.likelihood`: `pixel_log_likelihood`, the exact change of variables through a linear decoder.
"""
