"""Exact log-likelihood and bits/dim through the probability-flow ODE (Song et al. 2021, arXiv:2011.13456).

The probability-flow ODE dx/dt = F(x, t) = f(x, t) - g(t)^2 score(x, t) / 2 carries p_t to p_s for
every s, t, so by the instantaneous change of variables (Chen et al. 2018, arXiv:1806.07366, Thm 1)

    log p_{t_eps}(x) = log p_T(z) + int_{t_eps}^{T} div_x F(x(t), t) dt,     z = x(T),  x(t_eps) = x,

with p_T replaced by the prior N(0, prior_std^2 I). The augmented state [x, delta] is integrated
from t_eps to T. docs/likelihood.md derives this, the bits/dim offset and the dequantization.

Modes (`method`):
- adaptive torchdiffeq solvers ("dopri5", ...; rtol, atol);
- fixed-grid torchdiffeq solvers ("rk4", ...; `steps` grid intervals on the grid `grid`);
- "dpm_solver", the fixed-budget mode: x by a third-order multistep exponential integrator in
  log-SNR lambda (DPM-Solver++(3M)-style, run in the noising direction) and the log-determinant by
  Simpson quadrature in lambda of the divergence at the same points; steps + 1 evaluations.

Divergence of F (`divergence`): "hutchinson" (Hutchinson 1989; Skilling 1989: v^T J v with probes
v fixed along the trajectory, one vector-Jacobian product per probe), "exact" (trace of the
autograd Jacobian, one backward pass per dimension: for small dimensions) or "analytic" (the
model's own closed form `pf_divergence(x, t)`, which the analytic Gaussian models provide).

NFE counts evaluations of the ODE right-hand side: one model forward pass each, plus its backward
passes for the divergence.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch
from torch import Tensor
from torchdiffeq import odeint

from solvers import grids
from solvers.protocol import GeneratorArg, Model, bcast, randn, time_like

from .sde import DiscreteVPSDE

__all__ = [
    "ADAPTIVE_METHODS", "DIVERGENCES", "FIXED_METHODS", "METHODS", "PROBES", "VARIABLES", "Likelihood",
    "bits_per_dim", "bpd_from_logp", "dequantization_offset", "dequantize", "draw_probes", "exact_divergence",
    "exponential_step", "hutchinson_divergence", "lambda_derivatives", "log_likelihood", "phi_coefficients",
    "score_and_divergence", "simpson_weights",
]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
FIXED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4")
EXPONENTIAL_METHOD = "dpm_solver"
METHODS = ADAPTIVE_METHODS + FIXED_METHODS + (EXPONENTIAL_METHOD,)
DIVERGENCES = ("hutchinson", "exact", "analytic")
PROBES = ("rademacher", "gaussian")
VARIABLES = ("t", "lambda")

Divergence = Literal["hutchinson", "exact", "analytic"]
Probe = Literal["rademacher", "gaussian"]


@dataclass(frozen=True)
class Likelihood:
    """Result of `log_likelihood` / `bits_per_dim`.

    logp: (B,) log-likelihood in nats per sample (for `bits_per_dim` with `levels`, the lower bound
      on the log-probability of the discrete data); bpd: (B,) = -logp / (d ln 2), bits per
      dimension, d = prod(D); z: (B, *D) latent x(T) (of the first dequantization draw);
    nfe: ODE right-hand-side evaluations, all repeats together;
    logp_se, bpd_se: (B,) Monte-Carlo standard error of logp and bpd over the random probes and
      dequantization draws (0 when nothing is random, NaN when a single draw cannot estimate it);
      ODE discretization error is not included;
    settings: read-only mapping of everything that determined the result: method, rtol, atol,
      steps, grid, variable, t_eps, T, divergence, probe, n_probes, levels, repeats,
      dequantization (None where an option does not apply).
    """

    logp: Tensor
    bpd: Tensor
    z: Tensor
    nfe: int
    logp_se: Tensor
    bpd_se: Tensor
    settings: Mapping[str, object]


# ----------------------------------------------------------------------------------------------
# bits/dim and dequantization


def dequantization_offset(levels: int) -> float:
    """Bits per dimension added to the continuous code length of dequantized data, log2(levels / 2).

    Data in [-1, 1] with K levels sit in bins of width 2/K; P(bin) >= (2/K)^d exp(E_u log p(x + u))
    (Jensen), so -log2 P / d <= E_u[-log2 p] / d + log2(K / 2): 7 bits for K = 256 (8-bit images),
    log2(8.5) ≈ 3.09 bits for K = 17 (scikit-learn digits). Derivation in docs/likelihood.md.
    """
    _check_levels(levels)
    return math.log2(levels / 2)


def bpd_from_logp(logp: Tensor, dim: int) -> Tensor:
    """Bits per dimension -logp / (dim ln 2) of log-likelihoods logp (B,) in nats of dim-dimensional data.

    No offset is added here: pass the discrete log-probability bound (as `bits_per_dim` returns in
    `logp`) for quantized data, log p(x) for continuous data.
    """
    return -logp / (dim * math.log(2.0))


def dequantize(x: Tensor, levels: int, *, generator: GeneratorArg = None) -> Tensor:
    """Uniformly dequantize data x (B, *D) on the K-level grid {-1 + 2k/(K-1)} of [-1, 1].

    Convention (that of 8-bit images read as k/255 and scaled to [-1, 1], and of Song et al.'s
    code): level k = (x + 1)(K - 1)/2 owns the bin [-1 + 2k/K, -1 + 2(k+1)/K) of width 2/K, and the
    result is -1 + 2(k + u)/K with u ~ U(0, 1)^d drawn from `generator` (one torch.Generator or one
    per sample). Raises ValueError when x is off the grid. Returns x's shape, dtype and device.
    """
    k = _levels_of(x, levels)
    # u = Phi(n) with n ~ N(0, 1) is exactly U(0, 1) (probability integral transform); drawing n with
    # the one noise helper keeps per-sample generators and devices handled in one place
    u = torch.special.ndtr(randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
    return -1.0 + 2.0 * (k + u) / levels


def _check_levels(levels) -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2 (256 for 8-bit data, 17 for digits) or None, got {levels!r}")


def _levels_of(x: Tensor, levels: int) -> Tensor:
    """Integer levels k (as x's dtype) of x on the grid {-1 + 2k/(K-1)}; ValueError when off the grid."""
    _check_levels(levels)
    k_real = (x + 1.0) * (levels - 1) / 2.0
    k = torch.round(k_real)
    # validation at the boundary (one host sync per call)
    off = float((k_real - k).abs().max()) if x.numel() else 0.0
    if off > 1e-3 or bool((k < 0).any()) or bool((k > levels - 1).any()):
        raise ValueError(
            f"x is not on the grid of {levels} levels {{-1 + 2k/{levels - 1} : k = 0..{levels - 1}}} "
            f"(largest distance {off:.3g} levels); pass levels=None for continuous data"
        )
    return k


# ----------------------------------------------------------------------------------------------
# divergence of the probability-flow drift


def _score(model: Model, x: Tensor, t: Tensor, y) -> Tensor:
    return model.score(x, t) if y is None else model.score(x, t, y=y)


def hutchinson_divergence(out: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Hutchinson–Skilling estimates v^T (d out / d x) v, one per probe, (B, K).

    out (B, *D) computed from x (B, *D) with grad enabled; probes (B, K, *D). One vector-Jacobian
    product (backward pass) per probe; samples must not interact inside the model.
    """
    n_probes = probes.shape[1]
    est = []
    for k in range(n_probes):
        v = probes[:, k]
        # v^T J = grad_x <out, v>  (Hutchinson 1989; Skilling 1989)
        (vjp,) = torch.autograd.grad(out, x, grad_outputs=v, retain_graph=k < n_probes - 1)
        est.append((vjp * v).flatten(1).sum(1))
    return torch.stack(est, 1)


def exact_divergence(out: Tensor, x: Tensor) -> Tensor:
    """Trace of d out / d x by one backward pass per dimension, (B,). For small dimensions only."""
    flat = out.flatten(1)
    d = flat.shape[1]
    tr = torch.zeros(flat.shape[0], dtype=out.dtype, device=out.device)
    for i in range(d):
        (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < d - 1)
        tr = tr + row.flatten(1)[:, i]
    return tr


def score_and_divergence(
    model: Model, x: Tensor, t: Tensor, *, y=None, divergence: Divergence, probes: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One model evaluation: the score (B, *D) and the divergence of the probability-flow drift (B, K).

    div F = d a(t) - g(t)^2 div(score) / 2 for F = a(t) x - g^2 score / 2; K = n_probes for
    "hutchinson" (the linear part is exact, only div(score) is estimated), K = 1 otherwise. Grad is
    enabled only here, around the divergence.
    """
    sde = model.sde
    if divergence == "analytic":
        score = _score(model, x, t, y)
        div = model.pf_divergence(x, t) if y is None else model.pf_divergence(x, t, y=y)
        return score, div[:, None]
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        score = _score(model, x_in, t, y)
        if not score.requires_grad:
            raise ValueError(
                f"divergence={divergence!r} differentiates model.score in x, but it returned a tensor without "
                "grad (called under torch.inference_mode, or detached inside the model); use "
                "torch.no_grad instead of inference_mode, or divergence='analytic'"
            )
        if divergence == "exact":
            div_score = exact_divergence(score, x_in)[:, None]
        else:
            div_score = hutchinson_divergence(score, x_in, probes)
    d = x[0].numel()
    div = d * sde.dlog_alpha_dt(t)[:, None] - 0.5 * sde.g2(t)[:, None] * div_score
    return score.detach(), div.detach()


def draw_probes(x: Tensor, n_probes: int, probe: Probe, generator: GeneratorArg = None) -> Tensor:
    """Hutchinson probes (B, n_probes, *D) with E[v v^T] = I: Rademacher (+-1) or standard Gaussian.

    Drawn from `generator` (one, or one per sample, so a sample's probes do not depend on its batch).
    """
    n = randn((x.shape[0], n_probes, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
    if probe == "gaussian":
        return n
    # the sign of a standard normal is a Rademacher variable
    return torch.where(n >= 0, 1.0, -1.0).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# integrators


class _AugmentedODE(torch.nn.Module):
    """Right-hand side of the augmented probability-flow ODE; counts its calls (the NFE).

    The state is [x, delta / d] with d = prod(D): the log-determinant per dimension, so that
    rtol and atol bound its error in nats per dimension, as they bound x's per component (the
    solver's norm takes the largest of the two root-mean-square errors). variable "t":
    d[x, delta/d]/dt = [F, div F / d]. variable "lambda" (log-SNR, decreasing from lambda(t_eps)
    to lambda(T)): the same ODE times dt/dlambda = -2 sigma^2 / g^2, i.e. dx/dlambda =
    (d log alpha / dlambda) x + sigma^2 score, smooth in lambda for every schedule.
    """

    def __init__(self, model: Model, y, divergence: Divergence, probes: Tensor | None, variable: str):
        super().__init__()
        self.model, self.y, self.divergence, self.probes, self.variable = model, y, divergence, probes, variable
        self.nfe = 0

    def forward(self, s: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, _ = state
        sde = self.model.sde
        self.nfe += 1
        t = s if self.variable == "t" else sde.t_of_lambda(s.reshape(1))[0]
        # the adaptive solver may try a first step past the end while choosing its initial step
        # size (steps themselves stop there through step_t); clamping keeps every time in [0, T]
        tt = time_like(torch.clamp(t, min=0.0, max=sde.T), x)
        score, div = score_and_divergence(self.model, x, tt, y=self.y, divergence=self.divergence, probes=self.probes)
        drift, div = sde.pf_drift(x, tt, score), div / x[0].numel()
        if self.variable == "t":
            return drift, div
        dt_dlam = -2.0 * sde.sigma(tt) ** 2 / sde.g2(tt)
        return bcast(dt_dlam, x) * drift, dt_dlam[:, None] * div


def _increasing_grid(model: Model, grid: str, steps: int, t_eps: float) -> Tensor:
    """(steps + 1,) float64 grid increasing from t_eps to T, built by solvers.grids (then flipped)."""
    return grids.make(grid, model.sde, steps, t_start=model.sde.T, t_end=t_eps).flip(0)


def _integrate_torchdiffeq(
    model, x, *, y, method, rtol, atol, steps, grid, t_eps, variable, divergence, probes, n_div
) -> tuple[Tensor, Tensor, int]:
    """Returns z (B, *D), delta = int div F dt (B, K) and the NFE."""
    sde = model.sde
    d = x[0].numel()
    func = _AugmentedODE(model, y, divergence, probes, variable)
    delta0 = torch.zeros(x.shape[0], n_div, dtype=x.dtype, device=x.device)
    if method in ADAPTIVE_METHODS:
        ts = torch.tensor([t_eps, sde.T], dtype=torch.float64, device=x.device)
    else:
        ts = _increasing_grid(model, grid, steps, t_eps).to(x.device)
    # float64 times (torchdiffeq keeps times in float64 and the state in x's dtype)
    ss = ts if variable == "t" else sde.lambda_(ts)
    if method in ADAPTIVE_METHODS:
        options = {"step_t": ss[1:]}
        xs, deltas = odeint(func, (x, delta0), ss, method=method, rtol=rtol, atol=atol, options=options)
    else:
        xs, deltas = odeint(
            func, (x, delta0), ss[[0, -1]], method=method, options={"grid_constructor": lambda f, y0, t: ss}
        )
    return xs[-1], d * deltas[-1], func.nfe


def phi_coefficients(h: float) -> tuple[float, float, float]:
    """phi_1, phi_2, phi_3 of the data-prediction exponential integrator for a step h = lam_t - lam_s.

    int_{lam_s}^{lam_t} e^lam (lam - lam_s)^k / k! dlam = e^{lam_t} phi_{k+1}: phi_1 = 1 - e^{-h},
    phi_2 = h - phi_1, phi_3 = h^2 / 2 - phi_2. Valid for either sign of h (h < 0 when noising).
    """
    phi_1 = -math.expm1(-h)
    phi_2 = h - phi_1
    phi_3 = 0.5 * h * h - phi_2
    return phi_1, phi_2, phi_3


def exponential_step(
    x_s: Tensor, D0: Tensor, D1: Tensor | None, D2: Tensor | None,
    sigma_s: Tensor, sigma_t: Tensor, alpha_t: Tensor, h: float,
) -> Tensor:
    """One step of the probability-flow ODE from s to t in data-prediction form.

    x_t = (sigma_t / sigma_s) x_s + alpha_t (phi_1 D0 + phi_2 D1 + phi_3 D2)  (Lu et al. 2022,
    arXiv:2211.01095, Eq. 9 with x0(lam) = D0 + (lam - lam_s) D1 + (lam - lam_s)^2 D2 / 2).
    D0 = x0 prediction at s, D1, D2 its first and second lambda-derivatives (None: order 1 / 2);
    alpha_*, sigma_* (B,); h = lam_t - lam_s.
    """
    phi_1, phi_2, phi_3 = phi_coefficients(h)
    update = phi_1 * D0
    if D1 is not None:
        update = update + phi_2 * D1
    if D2 is not None:
        update = update + phi_3 * D2
    return bcast(sigma_t / sigma_s, x_s) * x_s + bcast(alpha_t, x_s) * update


def lambda_derivatives(lams: Sequence[float], x0s: Sequence[Tensor]) -> tuple[Tensor | None, Tensor | None]:
    """First and second lambda-derivatives at lams[-1] of the polynomial through (lams[i], x0s[i]).

    Newton divided differences on up to the last three points (any spacing); (None, None) for one
    point, (D1, None) for two.
    """
    if len(lams) == 1:
        return None, None
    l0, l1 = lams[-1], lams[-2]
    d01 = (x0s[-1] - x0s[-2]) / (l0 - l1)
    if len(lams) == 2:
        return d01, None
    l2 = lams[-3]
    d12 = (x0s[-2] - x0s[-3]) / (l1 - l2)
    d012 = (d01 - d12) / (l0 - l2)
    # p(lam) = f0 + d01 (lam - l0) + d012 (lam - l0)(lam - l1): p'(l0) = d01 + d012 (l0 - l1), p'' = 2 d012
    return d01 + d012 * (l0 - l1), 2.0 * d012


def simpson_weights(nodes: Sequence[float]) -> list[float]:
    """Weights w with sum_i w_i f(nodes[i]) ≈ int_{nodes[0]}^{nodes[-1]} f, for any monotone nodes.

    Composite Simpson on consecutive pairs of intervals (exact for quadratics, spacing may vary);
    with an odd number of intervals the last one integrates the quadratic through the last three
    nodes. Two nodes: the trapezoid rule.
    """
    n = len(nodes) - 1
    w = [0.0] * (n + 1)
    if n == 1:
        h = nodes[1] - nodes[0]
        return [h / 2, h / 2]
    pairs_end = n if n % 2 == 0 else n - 1
    for i in range(0, pairs_end, 2):
        for j, wj in zip((i, i + 1, i + 2), _lagrange_integrals(nodes[i : i + 3], nodes[i], nodes[i + 2])):
            w[j] += wj
    if n % 2 == 1:
        for j, wj in zip((n - 2, n - 1, n), _lagrange_integrals(nodes[n - 2 : n + 1], nodes[n - 1], nodes[n])):
            w[j] += wj
    return w


def _lagrange_integrals(abc: Sequence[float], p: float, q: float) -> list[float]:
    """int_p^q of the three Lagrange basis polynomials on the nodes abc."""
    out = []
    for j in range(3):
        b, c = (abc[k] for k in range(3) if k != j)
        out.append((_prim(q, b, c) - _prim(p, b, c)) / ((abc[j] - b) * (abc[j] - c)))
    return out


def _prim(u: float, b: float, c: float) -> float:
    """An antiderivative of (u - b)(u - c)."""
    return u**3 / 3 - (b + c) * u**2 / 2 + b * c * u


def _integrate_exponential(
    model, x, *, y, steps, grid, t_eps, divergence, probes, n_div
) -> tuple[Tensor, Tensor, int]:
    """Fixed-budget mode: returns z (B, *D), delta = int div F dt (B, K) and the NFE (= steps + 1).

    Notation: lam = log(alpha / sigma) decreases along the grid (we integrate towards noise);
    D0 = x0 prediction; q = sigma^2 div(score) = (div F - d a) dt/dlam with dt/dlam = -2 sigma^2 / g^2,
    so that int div F dt = d log(alpha_T / alpha_eps) + int q dlam (docs/likelihood.md).
    """
    sde = model.sde
    d = x[0].numel()
    ts = _increasing_grid(model, grid, steps, t_eps).to(x.device)
    lams = sde.lambda_(ts).tolist()  # host floats for the step coefficients, once per call
    alphas, sigmas = sde.alpha(ts).to(x.dtype), sde.sigma(ts).to(x.dtype)
    a_s, g2s = sde.dlog_alpha_dt(ts).to(x.dtype), sde.g2(ts).to(x.dtype)
    x0s: list[Tensor] = []
    qs: list[Tensor] = []
    for i in range(steps + 1):
        t_cur = time_like(ts[i], x)
        score, div = score_and_divergence(model, x, t_cur, y=y, divergence=divergence, probes=probes)
        # Tweedie: x0 = (x + sigma^2 score) / alpha
        x0s.append((x + bcast(sigmas[i : i + 1] ** 2, x) * score) / alphas[i])
        qs.append((div - d * a_s[i]) * (-2.0 * sigmas[i] ** 2 / g2s[i]))
        if i == steps:
            break
        x0s = x0s[-3:]
        D1, D2 = lambda_derivatives(lams[max(0, i - 2) : i + 1], x0s)
        # DPM-Solver++(3M)-style step from lambda_i to lambda_{i+1} < lambda_i
        x = exponential_step(
            x, x0s[-1], D1, D2, sigmas[i : i + 1], sigmas[i + 1 : i + 2], alphas[i + 1 : i + 2], lams[i + 1] - lams[i]
        )
    weights = simpson_weights(lams)
    quad = sum(w * q for w, q in zip(weights, qs))
    linear = d * (sde.log_alpha(ts[-1:]) - sde.log_alpha(ts[:1])).to(x.dtype)
    return x, linear + quad, steps + 1


# ----------------------------------------------------------------------------------------------
# public API


def _check_settings(
    model, x, *, y, method, rtol, atol, steps, grid, variable, t_eps, divergence, probe, n_probes
) -> dict:
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a float tensor of shape (B, *D) with B >= 1, got {shape}")
    if x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(f"x must be a float tensor of shape (B, *D) with B >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {list(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {list(PROBES)}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be an integer >= 1, got {n_probes!r}")
    if divergence != "hutchinson" and n_probes != 1:
        raise ValueError(f"n_probes={n_probes} applies to divergence='hutchinson' only; {divergence!r} is exact")
    if divergence == "analytic" and not callable(getattr(model, "pf_divergence", None)):
        raise ValueError(
            f"divergence='analytic' needs a model with pf_divergence(x, t) (the analytic models have it); "
            f"{type(model).__name__} has none: use 'exact' or 'hutchinson'"
        )
    if y is not None:
        if isinstance(y, Tensor) and (y.ndim == 0 or y.shape[0] != x.shape[0]):
            raise ValueError(f"y must have one label per sample, shape ({x.shape[0]}, ...), got {tuple(y.shape)}")
        methods = ["score"] + (["pf_divergence"] if divergence == "analytic" else [])
        for name in methods:
            if "y" not in inspect.signature(getattr(model, name)).parameters:
                raise ValueError(f"a label y was given but {type(model).__name__}.{name} takes no y")
    adaptive = method in ADAPTIVE_METHODS
    if adaptive:
        if steps is not None:
            raise ValueError(f"steps applies to fixed-grid methods {list(FIXED_METHODS) + [EXPONENTIAL_METHOD]}; "
                             f"{method!r} is adaptive (set rtol, atol)")
        for name, tol in (("rtol", rtol), ("atol", atol)):
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (tol > 0 and math.isfinite(tol)):
                raise ValueError(f"{name} must be a finite number > 0, got {tol!r}")
    else:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"method {method!r} needs steps, an integer >= 1, got {steps!r}")
        if method == EXPONENTIAL_METHOD and steps < 2:
            raise ValueError(f"method {EXPONENTIAL_METHOD!r} needs steps >= 2, got {steps!r}")
        if grid not in grids.GRIDS:
            raise ValueError(f"unknown grid {grid!r}; choose one of {sorted(grids.GRIDS)}")
    sde = model.sde
    if method == EXPONENTIAL_METHOD:
        if variable is not None:
            raise ValueError(
                f"variable applies to the torchdiffeq methods; {EXPONENTIAL_METHOD!r} always steps in lambda"
            )
        variable = "lambda"
    elif variable is None:
        # the discrete schedule's drift jumps at each of its N knots in t, but not in lambda
        variable = "lambda" if isinstance(sde, DiscreteVPSDE) else "t"
    elif variable not in VARIABLES:
        raise ValueError(f"unknown variable {variable!r}; choose one of {list(VARIABLES)} or None")
    t_eps = float(sde.t_eps_likelihood) if t_eps is None else t_eps
    if isinstance(t_eps, bool) or not isinstance(t_eps, (int, float)) or not (0 < t_eps < sde.T):
        raise ValueError(f"t_eps must be a number in (0, T={sde.T}), got {t_eps!r}")
    hutch = divergence == "hutchinson"
    return {
        "method": method,
        "rtol": rtol if adaptive else None,
        "atol": atol if adaptive else None,
        "steps": None if adaptive else steps,
        "grid": None if adaptive else grid,
        "variable": variable,
        "t_eps": float(t_eps),
        "T": float(sde.T),
        "divergence": divergence,
        "probe": probe if hutch else None,
        "n_probes": n_probes if hutch else None,
    }


def _logp_draws(model, x, *, y, settings: dict, generator: GeneratorArg) -> tuple[Tensor, Tensor, int]:
    """log p(x) estimates, one per probe (B, K), the latent z (B, *D) and the NFE."""
    hutch = settings["divergence"] == "hutchinson"
    probes = draw_probes(x, settings["n_probes"], settings["probe"], generator) if hutch else None
    n_div = settings["n_probes"] if hutch else 1
    common = dict(y=y, steps=settings["steps"], grid=settings["grid"], t_eps=settings["t_eps"],
                  divergence=settings["divergence"], probes=probes, n_div=n_div)
    with torch.no_grad():
        if settings["method"] == EXPONENTIAL_METHOD:
            z, delta, nfe = _integrate_exponential(model, x, **common)
        else:
            z, delta, nfe = _integrate_torchdiffeq(
                model, x, method=settings["method"], rtol=settings["rtol"], atol=settings["atol"],
                variable=settings["variable"], **common
            )
        logp = model.sde.prior_logp(z)[:, None] + delta
    return logp, z, nfe


def _standard_error(draws: Tensor) -> Tensor:
    """Standard error of the mean of iid draws (B, n); NaN for n = 1."""
    n = draws.shape[1]
    if n == 1:
        return torch.full_like(draws[:, 0], float("nan"))
    return draws.std(1) / math.sqrt(n)


def log_likelihood(
    model: Model,
    x: Tensor,
    *,
    y=None,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int | None = None,
    grid: str = "uniform_lambda",
    variable: str | None = None,
    t_eps: float | None = None,
    divergence: Divergence = "hutchinson",
    probe: Probe = "rademacher",
    n_probes: int = 1,
    generator: GeneratorArg = None,
) -> Likelihood:
    """Log-likelihood log p_{t_eps}(x) of continuous data x through the probability-flow ODE.

    x: (B, *D) data (for images, in [-1, 1]), any float dtype and device; the ODE runs in that
    dtype on that device. y: label passed to model.score (conditional models). Returns logp (B,)
    in nats, bpd (B,) = -logp / (d ln 2) with no dequantization offset, the latent z (B, *D), NFE,
    standard errors and the settings.

    method: adaptive torchdiffeq solver (ADAPTIVE_METHODS; rtol, atol), fixed-grid torchdiffeq
    solver (FIXED_METHODS; `steps` intervals of the solvers.grids grid `grid`, uniform in
    log-SNR by default) or "dpm_solver" (fixed budget: steps + 1 evaluations, see module doc).
    t_eps: start time, default model.sde.t_eps_likelihood. divergence: "hutchinson" (n_probes
    probes of kind `probe`, averaged; drawn from `generator`, one torch.Generator or one per
    sample), "exact" (autograd, d backward passes per evaluation) or "analytic" (model.pf_divergence).
    """
    settings = _check_settings(model, x, y=y, method=method, rtol=rtol, atol=atol, steps=steps, grid=grid,
                               variable=variable, t_eps=t_eps, divergence=divergence, probe=probe, n_probes=n_probes)
    draws, z, nfe = _logp_draws(model, x, y=y, settings=settings, generator=generator)
    logp = draws.mean(1)
    se = _standard_error(draws) if settings["divergence"] == "hutchinson" else torch.zeros_like(logp)
    d = x[0].numel()
    settings.update(levels=None, repeats=1, dequantization=None)
    return Likelihood(logp=logp, bpd=bpd_from_logp(logp, d), z=z, nfe=nfe, logp_se=se,
                      bpd_se=se / (d * math.log(2.0)), settings=MappingProxyType(settings))


def bits_per_dim(
    model: Model,
    x: Tensor,
    *,
    levels: int | None = 256,
    repeats: int = 1,
    y=None,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int | None = None,
    grid: str = "uniform_lambda",
    variable: str | None = None,
    t_eps: float | None = None,
    divergence: Divergence = "hutchinson",
    probe: Probe = "rademacher",
    n_probes: int = 1,
    generator: GeneratorArg = None,
) -> Likelihood:
    """Bits per dimension of data x (B, *D) in [-1, 1] quantized to `levels` levels.

    levels = K (256 for 8-bit images, 17 for scikit-learn digits): x must lie on the grid
    {-1 + 2k/(K-1)}; each of `repeats` rounds draws a uniform dequantization (`dequantize`) and
    probes from `generator`, in that order, and integrates the ODE. Returned logp (B,) is the
    lower bound mean_r log p(x + u_r) + d log(2/K) on the log-probability of the discrete data,
    in nats, so bpd = mean_r[-log2 p(x + u_r)] / d + log2(K/2) (`dequantization_offset`).
    levels=None: continuous data, no dequantization and no offset (log_likelihood averaged over
    `repeats` probe draws). The other options are those of `log_likelihood`; z is that of the
    first round, nfe counts all rounds, and the standard error spans probes and dequantization
    (NaN with a single dequantization draw).
    """
    if levels is not None:
        _check_levels(levels)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    settings = _check_settings(model, x, y=y, method=method, rtol=rtol, atol=atol, steps=steps, grid=grid,
                               variable=variable, t_eps=t_eps, divergence=divergence, probe=probe, n_probes=n_probes)
    if levels is not None:
        _levels_of(x, levels)  # raise before any integration when x is off the grid
    d = x[0].numel()
    rounds, z, nfe = [], None, 0
    for _ in range(repeats):
        x_r = x if levels is None else dequantize(x, levels, generator=generator)
        draws, z_r, nfe_r = _logp_draws(model, x_r, y=y, settings=settings, generator=generator)
        rounds.append(draws)
        z = z_r if z is None else z
        nfe += nfe_r
    offset_nats = 0.0 if levels is None else d * math.log(2.0 / levels)
    all_draws = torch.stack(rounds, 1)  # (B, repeats, K)
    logp = all_draws.mean((1, 2)) + offset_nats
    if levels is not None:
        se = _standard_error(all_draws.mean(2))
    elif settings["divergence"] == "hutchinson":
        se = _standard_error(all_draws.flatten(1))
    else:
        se = torch.zeros_like(logp)
    settings.update(levels=levels, repeats=repeats, dequantization=None if levels is None else "uniform")
    return Likelihood(logp=logp, bpd=bpd_from_logp(logp, d), z=z, nfe=nfe, logp_se=se,
                      bpd_se=se / (d * math.log(2.0)), settings=MappingProxyType(settings))
