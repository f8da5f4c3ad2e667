"""The variational bound (negative ELBO) of Ho et al. 2020 in bits/dim, for any affine process.

On a grid t_0 < t_1 < ... < t_S = T the bound is (Ho et al. 2020, Eq. 5; Kingma et al. 2021, Eq. 11)

    -log p(x_0) <= L_0 + sum_{i=1}^{S} L_i + L_prior
    L_0     = -log p(x_0 | x_{t_0})                         (discretized Gaussian decoder)
    L_i     = KL(q(x_{t_{i-1}} | x_{t_i}, x_0) || p(x_{t_{i-1}} | x_{t_i}))
    L_prior = KL(q(x_{t_S} | x_0) || N(0, prior_std^2 I)).

For s < t, with alpha_ts = alpha_t/alpha_s and sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2, the
posterior q(x_s | x_t, x_0) is Gaussian with mean alpha_ts sigma_s^2/sigma_t^2 x_t +
alpha_s sigma_ts^2/sigma_t^2 x_0 and variance beta_tilde = sigma_ts^2 sigma_s^2/sigma_t^2. The model
uses the same mean with x_0 replaced by its prediction, and variance beta_tilde ("small"),
beta = sigma_ts^2 ("large"), or exp(v log beta + (1 - v) log beta_tilde) with v from a learned
variance head (Nichol & Dhariwal 2021, Eq. 15). On a DiscreteVPSDE with its own knots this is exactly
the DDPM bound: beta = beta_n and beta_tilde = (1 - abar_{n-1})/(1 - abar_n) beta_n.

Each KL term is estimated with one draw of x_{t_i} ~ q(x_{t_i} | x_0) per sample (unbiased).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from solvers.grids import MAX_STEPS
from solvers.protocol import GeneratorArg, randn_like
from solvers.validate import check_int, check_name

from .likelihood.results import check_data
from .param import has_learned_variance
from .sde import SDE
from .sde_discrete import DiscreteVPSDE

__all__ = [
    "VLB", "discretized_gaussian_log_prob", "gaussian_kl", "has_learned_variance", "learned_variance",
    "posterior_coefficients", "vlb_bits_per_dim",
]

VARIANCES = ("small", "large", "learned")


@dataclass(frozen=True)
class VLB:
    """Result of `vlb_bits_per_dim`.

    bpd: (B,) total bound in bits/dim; decoder: (B,) L_0; kl: (B, S) L_1..L_S (L_i for the step
    from ts[i] down to ts[i-1]); prior: (B,) L_prior — all in bits/dim; ts: (S + 1,) float64 grid;
    nfe: model evaluations (S + 1).
    """

    bpd: Tensor
    decoder: Tensor
    kl: Tensor
    prior: Tensor
    ts: Tensor
    nfe: int


def _log_diff_ndtr(u: Tensor, l: Tensor) -> Tensor:
    """log(Phi(u) - Phi(l)) for u > l, stable in both tails (reflect when the bin is right of 0)."""
    right = (u + l) > 0
    hi = torch.where(right, -l, u)
    lo = torch.where(right, -u, l)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi))


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor, levels: int) -> Tensor:
    """log P(bin of x) under N(mean, std^2) per element (Ho et al. 2020, Eq. 13), same shape as x.

    x lies on the K-level grid -1 + 2k/(K - 1) of [-1, 1]; a bin has half-width 1/(K - 1), and the
    end bins extend to -inf and +inf.
    """
    half = 1.0 / (levels - 1)
    upper = (x + half - mean) / std
    lower = (x - half - mean) / std
    interior = _log_diff_ndtr(upper, lower)
    left_edge = torch.special.log_ndtr(upper)
    right_edge = torch.special.log_ndtr(-lower)
    out = torch.where(x < -1 + half, left_edge, interior)
    return torch.where(x > 1 - half, right_edge, out)


def gaussian_kl(mean_q: Tensor, var_q: Tensor, mean_p: Tensor, var_p: Tensor) -> Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) per element, nats."""
    return 0.5 * (torch.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1.0)


def posterior_coefficients(
    alpha_s: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For s < t: (c_xt, c_x0, beta, beta_tilde), all of the inputs' (broadcast) shape.

    q(x_s | x_t, x_0) = N(c_xt x_t + c_x0 x_0, beta_tilde) with alpha_ts = alpha_t / alpha_s,
    beta = sigma_t^2 - alpha_ts^2 sigma_s^2 (the forward step's variance), beta_tilde =
    beta sigma_s^2 / sigma_t^2, c_xt = alpha_ts sigma_s^2 / sigma_t^2, c_x0 = alpha_s beta / sigma_t^2
    (Ho et al. 2020, Eqs. 6-7, in alpha/sigma form).
    """
    a_ts = alpha_t / alpha_s
    beta = sigma_t**2 - a_ts**2 * sigma_s**2
    beta_tilde = beta * sigma_s**2 / sigma_t**2
    return a_ts * sigma_s**2 / sigma_t**2, alpha_s * beta / sigma_t**2, beta, beta_tilde


def learned_variance(v: Tensor, beta: Tensor, beta_tilde: Tensor) -> Tensor:
    """exp(v log beta + (1 - v) log beta_tilde) (Nichol & Dhariwal 2021, Eq. 15); v (B, *D)."""
    return torch.exp(v * torch.log(beta) + (1 - v) * torch.log(beta_tilde))


def check_levels(x: Tensor, levels: int) -> None:
    """Raise ValueError unless x lies on the `levels`-point grid of [-1, 1]."""
    check_int("levels", levels, 2)
    k = (x + 1) * (levels - 1) / 2
    if not bool(torch.all((k - k.round()).abs() < 1e-4)) or not bool(torch.all((x >= -1 - 1e-6) & (x <= 1 + 1e-6))):
        raise ValueError(f"x must lie on the {levels}-level grid -1 + 2k/{levels - 1} of [-1, 1]")


def vlb_grid(sde: SDE, steps: int | None) -> Tensor:
    """Increasing grid t_0 < ... < t_S = T: a DiscreteVPSDE's own knots n/N when steps is None, else
    `steps` intervals uniform in t from sde.t_eps to T (for a DiscreteVPSDE, a stride over its knots)."""
    if steps is None:
        if not isinstance(sde, DiscreteVPSDE):
            raise ValueError("steps is required for a continuous-time SDE; None means every knot of a DiscreteVPSDE")
        return torch.arange(1, sde.N + 1, dtype=torch.float64) / sde.N
    check_int("steps", steps, 1, MAX_STEPS)
    if isinstance(sde, DiscreteVPSDE):
        if steps > sde.N - 1:
            raise ValueError(f"steps must be at most N - 1 = {sde.N - 1} for this DiscreteVPSDE, got {steps}")
        n = torch.round(torch.linspace(1, sde.N, steps + 1, dtype=torch.float64))
        return n / sde.N
    return torch.linspace(sde.t_eps, sde.T, steps + 1, dtype=torch.float64)


def _check_variance(model, variance: str, variance_head) -> bool:
    """Check the variance options of `vlb_bits_per_dim`; True when the model's eps_and_variance supplies v."""
    check_name("variance", variance, VARIANCES)
    if variance_head is not None and not callable(variance_head):
        raise ValueError(f"variance_head must be None or a function (x_t, t) -> v, got {variance_head!r}"[:300])
    if variance != "learned" and variance_head is not None:
        raise ValueError(f"variance_head needs variance='learned', got variance={variance!r}")
    from_model = variance == "learned" and variance_head is None
    if from_model and not has_learned_variance(model):
        raise ValueError(
            "variance='learned' needs variance_head, or a model with eps_and_variance(x, t) -> (eps, v) "
            f"such as ScoreModel(..., learned_variance=True); got {type(model).__name__} without one"
        )
    return from_model


def vlb_bits_per_dim(
    model,
    x: Tensor,
    *,
    levels: int = 256,
    steps: int | None = None,
    variance: str = "small",
    variance_head: Callable[[Tensor, Tensor], Tensor] | None = None,
    generator: GeneratorArg = None,
) -> VLB:
    """Negative ELBO of x (B, *D) in bits/dim, with its per-term breakdown.

    model: a Model (x0 predictions are used); x: data on the `levels`-point grid of [-1, 1];
    steps: see `vlb_grid`; variance: "small" (beta_tilde), "large" (beta) or "learned", the last
    with `variance_head(x_t, t) -> v` (B, *D) in [0, 1]-ish interpolating log beta and log beta_tilde,
    or, with variance_head=None, a model with `eps_and_variance(x_t, t) -> (eps, v)` (e.g.
    `ScoreModel(..., learned_variance=True)`), whose mean and variance then come from one evaluation
    per KL term. The decoder uses std sigma(t_0)/alpha(t_0). Noise comes from `generator`. Returns `VLB`.
    """
    from_model = _check_variance(model, variance, variance_head)
    check_data(x)
    check_levels(x, levels)
    sde = model.sde
    ts = vlb_grid(sde, steps).to(x.device)
    B, D = x.shape[0], x[0].numel()
    alpha, sigma = (f(ts).to(x.dtype) for f in (sde.alpha, sde.sigma))
    nats_to_bpd = 1.0 / (D * math.log(2.0))

    def at(i: int) -> Tensor:
        return ts[i].to(x.dtype).reshape(1).expand(B)

    # L_0: discretized Gaussian decoder at t_0
    eps = randn_like(x, generator)
    x_t0 = alpha[0] * x + sigma[0] * eps
    x0_hat = model.x0(x_t0, at(0))
    decoder = -discretized_gaussian_log_prob(x, x0_hat, sigma[0] / alpha[0], levels).flatten(1).sum(1)

    kl_terms = []
    for i in range(1, len(ts)):
        x_t = alpha[i] * x + sigma[i] * randn_like(x, generator)
        if from_model:
            eps_hat, v = model.eps_and_variance(x_t, at(i))
            x0_hat = (x_t - sigma[i] * eps_hat) / alpha[i]
        else:
            x0_hat = model.x0(x_t, at(i))
            v = variance_head(x_t, at(i)) if variance == "learned" else None
        kl_terms.append(_kl_term(x, x_t, x0_hat, v, variance, alpha[i - 1], sigma[i - 1], alpha[i], sigma[i]))
    kl = torch.stack(kl_terms, 1) if kl_terms else x.new_zeros(B, 0)

    # L_prior: KL(N(alpha_T x, sigma_T^2) || N(0, prior_std^2)), closed form
    prior_var = torch.as_tensor(sde.prior_std**2, dtype=x.dtype, device=x.device)
    prior = gaussian_kl(alpha[-1] * x, (sigma[-1] ** 2).expand_as(x), torch.zeros_like(x), prior_var).flatten(1).sum(1)

    bpd = (decoder + kl.sum(1) + prior) * nats_to_bpd
    return VLB(
        bpd=bpd, decoder=decoder * nats_to_bpd, kl=kl * nats_to_bpd, prior=prior * nats_to_bpd, ts=ts.cpu(), nfe=len(ts)
    )


def _kl_term(x: Tensor, x_t: Tensor, x0_hat: Tensor, v: Tensor | None, variance: str,
             a_s: Tensor, s_s: Tensor, a_t: Tensor, s_t: Tensor) -> Tensor:
    """L_i = KL(q(x_s | x_t, x_0) || p(x_s | x_t)) in nats (B,), p with mean from x0_hat (B, *D)."""
    # posterior q(x_s | x_t, x_0) (Ho et al. 2020, Eqs. 6-7): beta = "large", beta_tilde = "small"
    c_xt, c_x0, beta, beta_tilde = posterior_coefficients(a_s, s_s, a_t, s_t)
    mean_q, mean_p = c_xt * x_t + c_x0 * x, c_xt * x_t + c_x0 * x0_hat
    if variance == "small":
        var_p = beta_tilde.expand_as(x)
    elif variance == "large":
        var_p = beta.expand_as(x)
    else:
        var_p = learned_variance(v, beta, beta_tilde)
    return gaussian_kl(mean_q, beta_tilde.expand_as(x), mean_p, var_p).flatten(1).sum(1)
