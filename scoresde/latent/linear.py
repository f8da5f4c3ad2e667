"""`LinearAutoencoder`: an invertible linear map as an autoencoder, the exact yardstick of latent diffusion.

decode(z) = A z and encode(x) = A^-1 x on flattened data, A (d, d) invertible. With A orthogonal the
forward process commutes with the map (A eps ~ N(0, I)), so latent diffusion of the law of A^-1 x
equals pixel diffusion of x, sample for sample, when the prior draws correspond (x_T = A z_T); with
any invertible A, log p_x(x) = log p_z(A^-1 x) - log|det A| exactly (`log_abs_det`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.validate import check_number

__all__ = ["LinearAutoencoder"]


class LinearAutoencoder:
    """decode(z) = A z, encode(x) = A^-1 x, flattened: matrix A (d, d) invertible, d = prod(image_shape).

    image_shape: shape of one image; latent_shape: of one latent (default image_shape; any shape with
    d elements); scale_factor: s > 0, stored for `LatentModel` (which encodes s A^-1 x). Keeps A's dtype.
    """

    def __init__(self, matrix: Tensor, image_shape: tuple[int, ...], latent_shape: tuple[int, ...] | None = None,
                 *, scale_factor: float = 1.0):
        matrix = torch.as_tensor(matrix)
        d = math.prod(image_shape)
        latent_shape = tuple(image_shape) if latent_shape is None else tuple(latent_shape)
        if matrix.shape != (d, d) or not matrix.is_floating_point():
            raise ValueError(f"matrix must be a float tensor of shape ({d}, {d}) for image_shape {tuple(image_shape)}, "
                             f"got {matrix.dtype} {tuple(matrix.shape)}")
        if math.prod(latent_shape) != d:
            raise ValueError(f"latent_shape {latent_shape} must have {d} elements, as image_shape {tuple(image_shape)}")
        sign, logdet = torch.linalg.slogdet(matrix)
        if float(sign) == 0 or not math.isfinite(float(logdet)):
            raise ValueError("matrix must be invertible (its determinant is 0)")
        self.scale_factor = check_number("scale_factor", scale_factor, 0, low_open=True)
        self.matrix = matrix
        self.inverse = torch.linalg.inv(matrix)
        self.image_shape = tuple(image_shape)
        self.latent_shape = latent_shape

    def encode(self, x: Tensor) -> Tensor:
        """A^-1 x per sample: x (B, *image_shape) -> (B, *latent_shape), in x's dtype."""
        return (x.flatten(1) @ self.inverse.to(x).T).reshape(x.shape[0], *self.latent_shape)

    def decode(self, z: Tensor) -> Tensor:
        """A z per sample: z (B, *latent_shape) -> (B, *image_shape), in z's dtype."""
        return (z.flatten(1) @ self.matrix.to(z).T).reshape(z.shape[0], *self.image_shape)

    def log_abs_det(self) -> float:
        """log|det A|, nats: log p_x(x) = log p_z(A^-1 x) - log|det A|."""
        return float(torch.linalg.slogdet(self.matrix.double())[1])
