"""Denoising score matching losses, one code path for VP, sub-VP, VE and the discrete DDPM schedule.

For x_t = alpha x0 + sigma eps the conditional score is -eps / sigma, so the score matching loss
weighted by sigma^2 (Song et al. 2021, arXiv:2011.13456, Eq. 7 with lambda(t) = sigma^2) is the
noise-prediction loss:

    sigma^2 || s_theta(x_t, t) + eps / sigma ||^2 = || eps_theta(x_t, t) - eps ||^2.

`dsm_loss` returns that per sample, averaged over the D data dimensions, with t drawn by one of

- "uniform": t ~ U(t_eps, T), weight 1 (continuous DSM; t_eps = 1e-5).
- "likelihood": the likelihood weighting lambda(t) = g^2, i.e. g^2 / sigma^2 on the eps loss
  (Song et al. 2021b, "Maximum likelihood training of score-based diffusion models",
  arXiv:2101.09258), estimated by importance sampling t with density proportional to the weight.
  For every affine SDE w(t) = g^2 / sigma^2 = -2 d lambda / dt (from g^2 = d sigma^2/dt -
  2 sigma^2 d log alpha/dt), so the CDF of t is linear in lambda = log(alpha / sigma): draw lambda
  uniformly between lambda(T) and lambda(t_eps) and map back with the process's exact
  `t_of_lambda`. No tabulated CDF is needed. Each sample then carries the constant weight
  Z / (T - t_eps) with Z = 2 (lambda(t_eps) - lambda(T)) = int w dt, so that the expectation
  equals that of w(t) || eps_theta - eps ||^2 under t ~ U(t_eps, T).
- "discrete": DDPM's L_simple (Ho et al. 2020, arXiv:2006.11239, Eq. 14): integer timesteps
  n ~ U{0, ..., N-1} of a `DiscreteVPSDE`, at the knots t = (n + 1) / N where alpha(t)^2 =
  abar_n exactly, weight 1.

Conditional models: labels are replaced by the null label with probability p_uncond
(classifier-free guidance, Ho & Salimans 2022, arXiv:2207.12598). All randomness (t, labels,
noise) comes from the explicit `generator`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from solvers.protocol import Model

from .sde import AffineSDE, DiscreteVPSDE

__all__ = ["TIME_SAMPLING", "drop_labels", "dsm_loss", "likelihood_weight", "rand", "sample_t"]

TimeSampling = Literal["uniform", "likelihood", "discrete"]
TIME_SAMPLING: tuple[str, ...] = ("uniform", "likelihood", "discrete")


def rand(n: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
    """n draws of U[0, 1) in float64, made on the generator's device and moved to `device`."""
    device = torch.device("cpu") if device is None else torch.device(device)
    gen_device = device if generator is None else generator.device
    return torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64).to(device)


def likelihood_weight(sde: AffineSDE, t: Tensor) -> Tensor:
    """w(t) = g(t)^2 / sigma(t)^2, the likelihood weighting on the eps loss, (B,)."""
    return sde.g2(t) / sde.sigma(t) ** 2


def _check_t_eps(sde: AffineSDE, t_eps: float) -> None:
    if not 0.0 < t_eps < sde.T:
        raise ValueError(f"t_eps must lie in (0, T={sde.T}), got {t_eps!r}")


def sample_t(
    sde: AffineSDE,
    n: int,
    *,
    time_sampling: TimeSampling = "uniform",
    t_eps: float = 1e-5,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Training times t (n,) and per-sample loss weights (n,), both in `dtype`; see the module docstring.

    The inverse CDF is computed in float64 and cast at the end.
    """
    if time_sampling not in TIME_SAMPLING:
        raise ValueError(f"unknown time_sampling {time_sampling!r}; choose one of {list(TIME_SAMPLING)}")
    u = rand(n, generator=generator, device=device)
    ones = torch.ones(n, device=u.device, dtype=dtype)
    if time_sampling == "discrete":
        if not isinstance(sde, DiscreteVPSDE):
            raise ValueError(f"time_sampling='discrete' needs a DiscreteVPSDE, got {type(sde).__name__}")
        step = torch.clamp(torch.floor(u * sde.N).long(), max=sde.N - 1)  # n ~ U{0, ..., N-1}
        return sde.t_of_timestep(step).to(dtype), ones
    _check_t_eps(sde, t_eps)
    if time_sampling == "uniform":
        return (t_eps + (sde.T - t_eps) * u).to(dtype), ones
    ends = torch.tensor([t_eps, sde.T], dtype=torch.float64, device=u.device)
    lam_hi, lam_lo = sde.lambda_(ends).unbind()
    # p(t) = w(t) / Z with w = -2 dlambda/dt: lambda is uniform on [lambda(T), lambda(t_eps)]
    t = sde.t_of_lambda(lam_hi - u * (lam_hi - lam_lo)).clamp(t_eps, sde.T)
    Z = 2.0 * (lam_hi - lam_lo)
    return t.to(dtype), ones * (Z / (sde.T - t_eps)).to(dtype)


def drop_labels(y: Tensor, p_uncond: float, null_label: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label of y (B,) by `null_label` with probability p_uncond."""
    drop = rand(y.shape[0], generator=generator, device=y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, null_label), y)


def dsm_loss(
    model: Model,
    x0: Tensor,
    *,
    y: Tensor | None = None,
    null_label: int | None = None,
    p_uncond: float = 0.1,
    time_sampling: TimeSampling = "uniform",
    t_eps: float = 1e-5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample denoising score matching loss, (B,): weight(t) * mean_D (eps_theta(x_t, t[, y]) - eps)^2.

    model: a `ScoreModel` (any prediction kind; its eps is compared, so an x0 or v network is
    trained with the same sigma^2-weighted score loss). x0: (B, *D) data. y: (B,) integer labels
    of a conditional model, with `null_label` (the network's num_classes) and the dropout
    probability p_uncond. time_sampling: "uniform", "likelihood" or "discrete" (module docstring).
    The loss is computed in float32 (or x0's dtype if wider) whatever the network's dtype.
    """
    if x0.ndim < 2:
        raise ValueError(f"expected data x0 of shape (B, *D), got {tuple(x0.shape)}")
    if y is not None:
        if null_label is None:
            raise ValueError("labels y were given without null_label (the network's num_classes)")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond!r}")
    sde = model.sde
    t, weight = sample_t(sde, x0.shape[0], time_sampling=time_sampling, t_eps=t_eps, generator=generator,
                         device=x0.device, dtype=x0.dtype)
    if y is not None:
        y = drop_labels(y, p_uncond, null_label, generator=generator)
    x_t, eps = sde.perturb(x0, t, generator=generator)
    eps_hat = model.eps(x_t, t) if y is None else model.eps(x_t, t, y)
    dtype = torch.promote_types(x0.dtype, torch.float32)
    return weight.to(dtype) * (eps_hat.to(dtype) - eps.to(dtype)).square().flatten(1).mean(1)
