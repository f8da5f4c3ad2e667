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

Two more objectives:

- `flow_matching_loss` (Lipman et al. 2023, arXiv:2210.02747; Liu et al. 2023): the MSE of the
  flow velocity u = dx_t/dt = alpha' x0 + sigma' eps (u = eps - x0 on `FlowSDE`), t ~ U(t_eps, T).
  Since x0_hat = (x_t - sigma eps_hat)/alpha, u_hat - u = (sigma' - alpha' sigma/alpha)(eps_hat - eps)
  = -sigma lambda' (eps_hat - eps), so it is the eps loss weighted by sigma^2 lambda'(t)^2
  = 1/(1 - t)^2 on FlowSDE.
- `hybrid_loss`: Improved DDPM's L_simple + lambda L_vlb (Nichol & Dhariwal 2021, arXiv:2102.09672,
  Sec. 3.1) for a model with a learned variance on a `DiscreteVPSDE`, with L_vlb's timesteps
  importance-sampled from a `LossHistory` (Sec. 3.3).

Conditional models: labels are replaced by the null label with probability p_uncond
(classifier-free guidance, Ho & Salimans 2022, arXiv:2207.12598). All randomness (t, labels,
noise) comes from the explicit `generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from solvers.protocol import Model, bcast
from solvers.validate import check_int, check_name, check_number

from .param import has_learned_variance
from .sde import SDE
from .sde_discrete import DiscreteVPSDE
from .vlb import discretized_gaussian_log_prob, gaussian_kl, learned_variance, posterior_coefficients

__all__ = [
    "HybridLoss", "LossHistory", "TIME_SAMPLING", "drop_labels", "dsm_loss", "flow_matching_loss",
    "flow_matching_weight", "hybrid_loss", "likelihood_weight", "rand", "sample_t",
]

TimeSampling = Literal["uniform", "likelihood", "discrete"]
TIME_SAMPLING: tuple[str, ...] = ("uniform", "likelihood", "discrete")


def rand(n: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
    """n draws of U[0, 1) in float64, made on the generator's device and moved to `device`."""
    device = torch.device("cpu") if device is None else torch.device(device)
    gen_device = device if generator is None else generator.device
    return torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64).to(device)


def likelihood_weight(sde: SDE, t: Tensor) -> Tensor:
    """w(t) = g(t)^2 / sigma(t)^2, the likelihood weighting on the eps loss, (B,)."""
    return sde.g2(t) / sde.sigma(t) ** 2


def sample_t(
    sde: SDE,
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
    check_name("time_sampling", time_sampling, TIME_SAMPLING)
    u = rand(n, generator=generator, device=device)
    ones = torch.ones(n, device=u.device, dtype=dtype)
    if time_sampling == "discrete":
        if not isinstance(sde, DiscreteVPSDE):
            raise ValueError(f"time_sampling='discrete' needs a DiscreteVPSDE, got {type(sde).__name__}")
        step = torch.clamp(torch.floor(u * sde.N).long(), max=sde.N - 1)  # n ~ U{0, ..., N-1}
        return sde.t_of_timestep(step).to(dtype), ones
    check_number("t_eps", t_eps, 0, sde.T, low_open=True, high_open=True)
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


def _check_labels(y: Tensor | None, null_label: int | None, p_uncond: float) -> None:
    if y is not None:
        if null_label is None:
            raise ValueError("labels y were given without null_label (the network's num_classes)")
        check_number("p_uncond", p_uncond, 0, 1)


def _check_data(x0: Tensor) -> None:
    if x0.ndim < 2:
        raise ValueError(f"expected data x0 of shape (B, *D), got {tuple(x0.shape)}")


def _noised_batch(
    model, x0: Tensor, y: Tensor | None, null_label: int | None, p_uncond: float, time_sampling: TimeSampling,
    t_eps: float, generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Checked inputs -> (t, weight, x_t, eps, y): times and weights (B,), the perturbed data and its
    noise (B, *D), labels after dropout; drawn from `generator` in that order (t, labels, noise)."""
    _check_data(x0)
    _check_labels(y, null_label, p_uncond)
    sde = model.sde
    t, weight = sample_t(sde, x0.shape[0], time_sampling=time_sampling, t_eps=t_eps, generator=generator,
                         device=x0.device, dtype=x0.dtype)
    if y is not None:
        y = drop_labels(y, p_uncond, null_label, generator=generator)
    x_t, eps = sde.perturb(x0, t, generator=generator)
    return t, weight, x_t, eps, y


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
    t, weight, x_t, eps, y = _noised_batch(model, x0, y, null_label, p_uncond, time_sampling, t_eps, generator)
    eps_hat = model.eps(x_t, t) if y is None else model.eps(x_t, t, y)
    dtype = torch.promote_types(x0.dtype, torch.float32)
    return weight.to(dtype) * (eps_hat.to(dtype) - eps.to(dtype)).square().flatten(1).mean(1)


# --- flow matching -------------------------------------------------------------------------------

def flow_matching_weight(sde: SDE, t: Tensor) -> Tensor:
    """(sigma' - alpha' sigma / alpha)^2 = sigma^2 lambda'^2, the flow-matching loss as a weight on the
    eps loss, (B,); 1 / (1 - t)^2 on FlowSDE."""
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    return (sde.dsigma_dt(t) - sde.dalpha_dt(t) * sigma / alpha) ** 2


def flow_matching_loss(
    model,
    x0: Tensor,
    *,
    y: Tensor | None = None,
    null_label: int | None = None,
    p_uncond: float = 0.1,
    t_eps: float = 1e-5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample flow-matching loss, (B,): mean_D (u_theta(x_t, t[, y]) - u)^2, t ~ U(t_eps, T).

    u = alpha'(t) x0 + sigma'(t) eps is the velocity of the path x_t = alpha x0 + sigma eps (Lipman
    et al. 2023, Eq. 23 with the conditional path of Liu et al. 2023: u = eps - x0 on FlowSDE).
    model: a `ScoreModel` (its `flow` prediction is compared; native for prediction="flow"). Draws
    t, labels and noise from `generator` in the order of `dsm_loss`, so with the same generator
    the result is dsm_loss(time_sampling="uniform") times `flow_matching_weight(sde, t)`. float32
    or wider, as `dsm_loss`.
    """
    t, _, x_t, eps, y = _noised_batch(model, x0, y, null_label, p_uncond, "uniform", t_eps, generator)
    sde = model.sde
    u_hat = model.flow(x_t, t) if y is None else model.flow(x_t, t, y)
    dtype = torch.promote_types(x0.dtype, torch.float32)
    # conditional flow matching target: u = d/dt (alpha x0 + sigma eps)
    u = bcast(sde.dalpha_dt(t).to(dtype), x0) * x0.to(dtype) + bcast(sde.dsigma_dt(t).to(dtype), x0) * eps.to(dtype)
    return (u_hat.to(dtype) - u).square().flatten(1).mean(1)


# --- Improved DDPM: importance-sampled hybrid loss ------------------------------------------------

class LossHistory:
    """The last `length` values of L_vlb at each of N timesteps, for importance sampling (Nichol &
    Dhariwal 2021, Sec. 3.3): p_n ∝ sqrt(E[L_n^2]) over the stored values, uniform until every
    timestep holds `length` values.

    A small uniform share `floor` (1e-3, as in the authors' code) keeps every p_n > 0 so that the
    importance weights 1 / (N p_n) stay bounded. State: `values` (N, length) float64, a ring buffer
    per timestep, and `count` (N,) int64, values recorded so far per timestep; both live on
    `device`, are updated without host syncs, and go into training checkpoints (`state_dict`).
    """

    def __init__(self, num_steps: int, *, length: int = 10, floor: float = 1e-3, device=None):
        check_int("num_steps", num_steps, 1)
        check_int("length", length, 1)
        check_number("floor", floor, 0, 1, high_open=True)
        self.N, self.length, self.floor = num_steps, length, floor
        self.values = torch.zeros(num_steps, length, dtype=torch.float64, device=device)
        self.count = torch.zeros(num_steps, dtype=torch.long, device=device)

    def probabilities(self) -> Tensor:
        """p_n (N,) float64: uniform while some timestep has fewer than `length` values."""
        uniform = torch.full_like(self.values[:, 0], 1.0 / self.N)
        rms = self.values.square().mean(1).sqrt()
        p = (1 - self.floor) * rms / rms.sum().clamp_min(torch.finfo(rms.dtype).tiny) + self.floor / self.N
        return torch.where(self.count.min() >= self.length, p, uniform)

    def sample(self, n: int, *, generator: torch.Generator | None = None, device=None) -> tuple[Tensor, Tensor]:
        """n timesteps (n,) int64 drawn from p and their importance weights 1 / (N p) (n,) float64."""
        p = self.probabilities()
        gen_device = self.values.device if generator is None else generator.device
        steps = torch.multinomial(p.to(gen_device), n, replacement=True, generator=generator).to(self.values.device)
        weight = 1.0 / (self.N * p[steps])
        device = self.values.device if device is None else device
        return steps.to(device), weight.to(device)

    def record(self, steps: Tensor, losses: Tensor) -> None:
        """Append losses (B,) at timesteps steps (B,) in batch order (the last `length` per timestep stay)."""
        steps = steps.to(self.values.device).long()
        losses = losses.detach().to(self.values.device, torch.float64)
        onehot = torch.nn.functional.one_hot(steps, self.N)  # (B, N)
        rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # earlier occurrences of the same timestep
        total = onehot.sum(0)  # occurrences per timestep in this batch
        keep = rank >= total[steps] - self.length  # only the last `length` of a timestep survive
        slot = (self.count[steps] + rank) % self.length
        self.values.index_put_((steps[keep], slot[keep]), losses[keep])
        self.count += total

    def state_dict(self) -> dict[str, Tensor]:
        """{"values": (N, length), "count": (N,)}, CPU copies."""
        return {"values": self.values.detach().cpu().clone(), "count": self.count.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned (shapes must match)."""
        values, count = state["values"], state["count"]
        if values.shape != self.values.shape or count.shape != self.count.shape:
            raise ValueError(f"loss history of shapes {tuple(values.shape)}, {tuple(count.shape)} does not fit "
                             f"{tuple(self.values.shape)}, {tuple(self.count.shape)}")
        self.values.copy_(values)
        self.count.copy_(count)


@dataclass(frozen=True)
class HybridLoss:
    """Result of `hybrid_loss`, all (B,).

    loss: weight * (simple + lam N vlb), what to average and minimize; simple: L_simple = mean_D
    (eps_hat - eps)^2; vlb: the L_vlb term at the sampled timestep in bits/dim (decoder NLL for
    n = 0, KL for n >= 1; detached; record it in the LossHistory); step: timesteps n (int64);
    weight: importance weights 1 / (N p_n).
    """

    loss: Tensor
    simple: Tensor
    vlb: Tensor
    step: Tensor
    weight: Tensor


def hybrid_loss(
    model,
    x0: Tensor,
    history: LossHistory,
    *,
    levels: int,
    lam: float = 0.001,
    y: Tensor | None = None,
    null_label: int | None = None,
    p_uncond: float = 0.1,
    generator: torch.Generator | None = None,
) -> HybridLoss:
    """L_hybrid = L_simple + lam L_vlb (Nichol & Dhariwal 2021, Eq. 16), per sample; see `HybridLoss`.

    model: a learned-variance model on a `DiscreteVPSDE` (`ScoreModel(..., learned_variance=True)`;
    `eps_and_variance` is evaluated once). x0: (B, *D) data on the `levels`-point grid of [-1, 1]
    (not checked here: no host sync). A timestep n ~ p (the `history`'s importance distribution) is
    drawn per sample, at the knot t = (n + 1)/N. The L_vlb term, with the mean's gradient stopped
    (only the variance learns from it), is the KL between q(x_{t-1/N} | x_t, x0) and the model's
    N(mean, exp(v log beta + (1 - v) log beta_tilde)) for n >= 1, and the discretized-Gaussian
    decoder NLL of `scoresde.vlb` (std sigma/alpha at t = 1/N) for n = 0, in bits/dim, so that
    E_n[N L_n] is the bound of `vlb_bits_per_dim` without its constant prior term. Both terms carry
    the importance weight 1/(N p_n), which keeps each an unbiased estimate of its uniform-n
    expectation. Returns a `HybridLoss`; the caller records (step, vlb) in `history`.
    """
    sde = _check_hybrid(model, x0, history, y, null_label, p_uncond)
    step, weight = history.sample(x0.shape[0], generator=generator, device=x0.device)
    t = sde.t_of_timestep(step)  # float64 knots (n + 1) / N
    if y is not None:
        y = drop_labels(y, p_uncond, null_label, generator=generator)
    x_t, eps = sde.perturb(x0, t.to(x0.dtype), generator=generator)
    eps_hat, v = model.eps_and_variance(x_t, t.to(x0.dtype)) if y is None else model.eps_and_variance(x_t, t.to(x0.dtype), y)

    dtype = torch.promote_types(x0.dtype, torch.float32)
    x0, x_t, eps, eps_hat, v = (a.to(dtype) for a in (x0, x_t, eps, eps_hat, v))
    simple = (eps_hat - eps).square().flatten(1).mean(1)
    vlb = _vlb_term(sde, step, t, x0, x_t, eps_hat, v, levels)
    w = weight.to(dtype)
    loss = w * (simple + lam * sde.N * vlb)
    return HybridLoss(loss=loss, simple=simple, vlb=vlb.detach(), step=step, weight=w)


def _check_hybrid(model, x0: Tensor, history: LossHistory, y, null_label, p_uncond) -> DiscreteVPSDE:
    """The checks of `hybrid_loss`; returns the model's DiscreteVPSDE."""
    _check_data(x0)
    _check_labels(y, null_label, p_uncond)
    sde = model.sde
    if not isinstance(sde, DiscreteVPSDE):
        raise ValueError(f"hybrid_loss needs a DiscreteVPSDE (integer timesteps), got {type(sde).__name__}")
    if not has_learned_variance(model):
        raise ValueError("hybrid_loss needs a model with eps_and_variance, e.g. ScoreModel(..., learned_variance=True)")
    if history.N != sde.N:
        raise ValueError(f"the loss history has {history.N} timesteps, the schedule {sde.N}")
    return sde


def _vlb_term(
    sde: DiscreteVPSDE, step: Tensor, t: Tensor, x0: Tensor, x_t: Tensor, eps_hat: Tensor, v: Tensor, levels: int,
) -> Tensor:
    """L_vlb in bits/dim (B,) at timesteps step (B,): the KL for n >= 1, the decoder NLL for n = 0.

    t (B,): the float64 knots (n + 1) / N; x0, x_t, eps_hat, v (B, *D) share one dtype. The mean's
    gradient is stopped (`hybrid_loss`).
    """
    N, D, dtype = sde.N, x0[0].numel(), x0.dtype
    # coefficients in float64 at the knots; the KL of n = 0 rows is computed at n = 1 and discarded
    n = torch.clamp(step, min=1)
    s_, t_ = n.to(torch.float64) / N, (n + 1).to(torch.float64) / N
    alpha_s, sigma_s, alpha_t, sigma_t = sde.alpha(s_), sde.sigma(s_), sde.alpha(t_), sde.sigma(t_)
    c_xt, c_x0, beta, beta_tilde = (bcast(c.to(dtype), x_t) for c in posterior_coefficients(alpha_s, sigma_s, alpha_t, sigma_t))
    a_t, s_t = (bcast(c.to(dtype), x_t) for c in (sde.alpha(t), sde.sigma(t)))
    # stop the mean's gradient: L_vlb trains the variance only (Nichol & Dhariwal 2021, Sec. 3.1)
    x0_hat = (x_t - s_t * eps_hat.detach()) / a_t
    mean_q, mean_p = c_xt * x_t + c_x0 * x0, c_xt * x_t + c_x0 * x0_hat
    kl = gaussian_kl(mean_q, beta_tilde.expand_as(x_t), mean_p, learned_variance(v, beta, beta_tilde)).flatten(1).sum(1)
    decoder = -discretized_gaussian_log_prob(x0, x0_hat, s_t / a_t, levels).flatten(1).sum(1)
    return torch.where(step == 0, decoder, kl) / (D * math.log(2.0))
