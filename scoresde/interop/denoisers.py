"""EDM / k-diffusion denoisers D(x, sigma) as scoresde models, and scoresde models as denoisers.

A denoiser in the sense of Karras et al. 2022 (EDM, arXiv:2206.00364) works on the variance-exploding
scale: its input is x_hat = x0 + n eps and it returns E[x0 | x_hat], where n is EDM's "sigma", called
`noise_level` here (docs/conventions.md). Any affine process x_t = alpha x0 + sigma eps is that scale
after dividing by alpha, with n = sigma / alpha = exp(-lambda), so

    x0(x_t, t) = D(x_t / alpha(t), sigma(t) / alpha(t)),

and conversely D(x_hat, n) = x0(alpha(t) x_hat, t) with t = t_of_lambda(-log n). k-diffusion's wrapped
models (`model(x, sigma, **extra)` returning the denoised image) are the same callable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from solvers.protocol import bcast
from solvers.validate import check_number

from ..param import ScoreModel
from ..sde import SDE, VESDE

__all__ = ["Denoiser", "EDMPrecond", "as_denoiser", "edm_preconditioning", "edm_sde", "from_denoiser"]


def edm_preconditioning(noise_level: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM's c_skip, c_out, c_in, c_noise at noise levels n (B,) (Karras et al. 2022, Table 1, "Ours").

    c_skip = sd^2 / (n^2 + sd^2), c_out = n sd / sqrt(n^2 + sd^2), c_in = 1 / sqrt(n^2 + sd^2),
    c_noise = log(n) / 4, with sd = sigma_data.
    """
    total = noise_level**2 + sigma_data**2
    # Karras et al. 2022 (arXiv:2206.00364), Table 1: preconditioning of the "Ours" column
    return sigma_data**2 / total, noise_level * sigma_data / total.sqrt(), total.rsqrt(), noise_level.log() / 4


class EDMPrecond(nn.Module):
    """The denoiser D(x, n) = c_skip x + c_out F(c_in x, c_noise) around a raw network F (EDM, Eq. 7).

    net(x, c_noise) or net(x, c_noise, y) -> tensor of x's shape; n: noise levels (B,) or a scalar.
    """

    def __init__(self, net: Callable[..., Tensor], sigma_data: float = 0.5):
        super().__init__()
        if not callable(net):
            raise ValueError(f"net must be callable, got {type(net).__name__}")
        self.net = net
        self.sigma_data = check_number("sigma_data", sigma_data, 0, low_open=True)

    def forward(self, x: Tensor, noise_level: Tensor, y: Tensor | None = None) -> Tensor:
        n = torch.as_tensor(noise_level, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = edm_preconditioning(n, self.sigma_data)
        x_in = bcast(c_in, x) * x
        out = self.net(x_in, c_noise) if y is None else self.net(x_in, c_noise, y)
        # Karras et al. 2022, Eq. (7): D(x; sigma) = c_skip x + c_out F((c_in x); c_noise)
        return bcast(c_skip, x) * x + bcast(c_out, x) * out


def edm_sde(sigma_min: float = 0.002, sigma_max: float = 80.0) -> VESDE:
    """The VE process of EDM's sampler: noise levels sigma_min..sigma_max (Karras et al. 2022, Table 1)."""
    return VESDE(sigma_min=sigma_min, sigma_max=sigma_max)


class _OnProcess(nn.Module):
    """A denoiser D(x_hat, n[, y]) as net(x_t, t[, y]) -> x0 on the affine process `sde`."""

    def __init__(self, denoiser: Callable[..., Tensor], sde: SDE):
        super().__init__()
        self.denoiser = denoiser
        self.sde = sde

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        x_hat = x / bcast(alpha, x).to(x.dtype)
        n = (sigma / alpha).to(x.dtype)
        return self.denoiser(x_hat, n) if y is None else self.denoiser(x_hat, n, y)


def from_denoiser(denoiser: Callable[..., Tensor], sde: SDE | None = None, *, precondition: bool = False,
                  sigma_data: float = 0.5) -> ScoreModel:
    """A `ScoreModel` (prediction "x0") from an EDM / k-diffusion denoiser D(x_hat, n[, y]) -> x0.

    sde: the process to see it on (default `edm_sde()`, the VE process sigma 0.002..80); on VP or
    any affine process the input is x_t / alpha(t) and n = sigma(t) / alpha(t). precondition=True:
    `denoiser` is a raw network F(x, c_noise[, y]) wrapped in `EDMPrecond(F, sigma_data)`.
    n reaches D as a (B,) tensor in x's dtype; labels y are passed on as D(x, n, y).
    """
    if not callable(denoiser):
        raise ValueError(f"denoiser must be callable as D(x, sigma), got {type(denoiser).__name__}")
    if not isinstance(precondition, bool):
        raise ValueError(f"precondition must be a bool, got {precondition!r}")
    sde = edm_sde() if sde is None else sde
    if precondition:
        denoiser = EDMPrecond(denoiser, sigma_data)
    return ScoreModel(_OnProcess(denoiser, sde), sde, "x0", c_noise="t")


class Denoiser:
    """A scoresde model as an EDM / k-diffusion denoiser: D(x_hat, n, y=None) -> x0 (B, *D).

    x_hat is on the VE scale (x_t / alpha); n: noise levels sigma / alpha > 0, (B,) or a scalar.
    `sigma_min`, `sigma_max` are the noise levels at the process's t_eps and T (the range a
    k-diffusion sampler should use); `time(n)` maps noise levels to our times.
    """

    def __init__(self, model):
        if not callable(getattr(model, "x0", None)) or not hasattr(model, "sde"):
            raise ValueError(f"model must have x0(x, t) and an sde, got {type(model).__name__}")
        self.model = model
        self.sde = model.sde
        ends = torch.tensor([float(self.sde.t_eps), float(self.sde.T)], dtype=torch.float64)
        self.sigma_min, self.sigma_max = (float(v) for v in torch.exp(-self.sde.lambda_(ends)))

    def time(self, noise_level: Tensor) -> Tensor:
        """Times t (float64, noise_level's shape) with sigma(t) / alpha(t) = noise_level."""
        return self.sde.t_of_lambda(-torch.as_tensor(noise_level, dtype=torch.float64).log())

    def __call__(self, x: Tensor, sigma, y: Tensor | None = None) -> Tensor:
        n = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        if n.device.type == "meta":
            raise ValueError("x is on the meta device (shapes without data); pass a tensor with values")
        if not bool(torch.all(n > 0)):  # one host read, on any device: a GPU's bad level would give NaN
            raise ValueError(f"noise levels must be > 0, got min {float(n.min())}")
        t = self.time(n)
        x_t = bcast(self.sde.alpha(t), x).to(x.dtype) * x
        labels = {} if y is None else {"y": y}
        return self.model.x0(x_t, t.to(x.dtype), **labels)


def as_denoiser(model) -> Denoiser:
    """`Denoiser(model)`: run k-diffusion- or EDM-style samplers on any scoresde model."""
    return Denoiser(model)
