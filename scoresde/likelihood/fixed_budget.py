"""The fixed-budget mode, method="dpm_solver": steps + 1 evaluations on a grid from t_eps to T.

x is carried by the sampler's own DPM-Solver++ updates (`solvers.dpm_solver_pp`, with the phi
functions of `solvers.coefficients`) run in the noising direction, and the log-determinant by
Simpson quadrature in log-SNR of the divergence at the same points (docs/likelihood.md derives both).

Notation, as in `solvers.dpm_solver_pp`: lam = log(alpha / sigma) decreases along the grid, so a step
from s to t has h = lam_t - lam_s < 0, while the multistep ratios r0 = (lam_s - lam_p1) / h and
r1 = (lam_p1 - lam_p2) / h stay positive; the updates (linear part integrated exactly, x0 a
polynomial in lambda) hold for either sign of h. x0 = (x + sigma^2 score) / alpha (Tweedie);
q = sigma^2 div(score) = (div F - d a) dt/dlam with dt/dlam = -2 sigma^2 / g^2, so that
int div F dt = d log(alpha_T / alpha_eps) + int q dlam.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from solvers.coefficients import phis
from solvers.dpm_solver_pp import dpm_solver_pp_1_step, dpm_solver_pp_3m_step, dpm_solver_pp_3s_step
from solvers.protocol import bcast, time_like

from .divergence import score_and_divergence
from .ode import increasing_grid

__all__ = ["EXPONENTIAL_METHOD", "exponential_step", "phi_coefficients", "simpson_weights"]

EXPONENTIAL_METHOD = "dpm_solver"


def phi_coefficients(h: float) -> tuple[float, float, float]:
    """h phi_1(-h), h^2 phi_2(-h), h^3 phi_3(-h) for a step h = lam_t - lam_s, phi_k of `solvers.coefficients`.

    These are int_0^h e^{u - h} u^k / k! du, k = 0, 1, 2, the weights of x0 and its first two
    lambda-derivatives in a data-form step. Valid for either sign of h (h < 0 when noising), h != 0.
    """
    phi = phis(torch.tensor(-h, dtype=torch.float64), 3)
    return tuple(float(h ** (k + 1) * phi_k) for k, phi_k in enumerate(phi))


def exponential_step(
    x_s: Tensor, D0: Tensor, D1: Tensor | None, D2: Tensor | None,
    sigma_s: Tensor, sigma_t: Tensor, alpha_t: Tensor, h: float,
) -> Tensor:
    """One step of the probability-flow ODE from s to t in data-prediction form, given x0's derivatives.

    x_t = (sigma_t / sigma_s) x_s + alpha_t (phi_1 D0 + phi_2 D1 + phi_3 D2) with the weights of
    `phi_coefficients` (Lu et al. 2022, arXiv:2211.01095, Eq. 9 with x0(lam) = D0 + (lam - lam_s) D1
    + (lam - lam_s)^2 D2 / 2). D0 = x0 prediction at s, D1, D2 its first and second
    lambda-derivatives (None: order 1 / 2); alpha_*, sigma_* (B,); h = lam_t - lam_s. The integrator
    itself uses the multistep updates of `solvers.dpm_solver_pp`, which estimate h D1 and h^2 D2.
    """
    phi_1, phi_2, phi_3 = phi_coefficients(h)
    update = phi_1 * D0
    if D1 is not None:
        update = update + phi_2 * D1
    if D2 is not None:
        update = update + phi_3 * D2
    return bcast(sigma_t / sigma_s, x_s) * x_s + bcast(alpha_t, x_s) * update


def noising_step(
    x_s: Tensor, x0_s: Tensor, hist: tuple, lam_s: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, h: Tensor
) -> Tensor:
    """One multistep update from s to t (h < 0); hist holds (lambda, x0) of up to two earlier grid times, newest last.

    The order ramps up with the history: DPM-Solver++(1), then the second-order multistep update in
    its Taylor form (phi_2 weighs the divided difference, as in Lu et al.'s solver_type="taylor"),
    then DPM-Solver++(3M). Coefficients are float64 (1,) tensors.
    """
    if not hist:
        # Lu et al. 2022b, DPM-Solver++(1): x_t = s_t/s_s x_s + a_t h phi_1 x0_s
        return dpm_solver_pp_1_step(x_s, x0_s, sigma_s, alpha_t, sigma_t, h)
    lam_p1, x0_p1 = hist[-1]
    r0 = (lam_s - lam_p1) / h
    if len(hist) == 1:
        # x_t = s_t/s_s x_s + a_t h (phi_1 x0_s + phi_2 D1) with D1 = (x0_s - x0_p1) / r0: the last line of
        # DPM-Solver++(3S), whose second point lam_s + r2 h is here the previous grid time (r2 = -r0)
        return dpm_solver_pp_3s_step(x_s, x0_s, x0_p1, sigma_s, alpha_t, sigma_t, h, -r0.reshape(()))
    lam_p2, x0_p2 = hist[-2]
    r1 = (lam_p1 - lam_p2) / h
    # Lu et al. 2022b, DPM-Solver++(3M): x_t = s_t/s_s x_s + a_t h (phi_1 x0_s + phi_2 D1 + phi_3 D2)
    return dpm_solver_pp_3m_step(x_s, x0_s, x0_p1, x0_p2, sigma_s, alpha_t, sigma_t, h, r0, r1)


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


def integrate_exponential(
    model, x, *, y, steps, grid, t_eps, divergence, probes, n_div
) -> tuple[Tensor, Tensor, int]:
    """Fixed-budget mode: returns z (B, *D), delta = int div F dt (B, K) and the NFE (= steps + 1)."""
    sde = model.sde
    d = x[0].numel()
    ts = increasing_grid(model, grid, steps, t_eps).to(x.device)
    lams, alphas, sigmas = sde.lambda_(ts), sde.alpha(ts), sde.sigma(ts)  # float64: step coefficients
    alphas_x, sigmas_x = alphas.to(x.dtype), sigmas.to(x.dtype)
    a_s, g2s = sde.dlog_alpha_dt(ts).to(x.dtype), sde.g2(ts).to(x.dtype)
    hist, qs = (), []
    for i in range(steps + 1):
        score, div = score_and_divergence(model, x, time_like(ts[i], x), y=y, divergence=divergence, probes=probes)
        # Tweedie: x0 = (x + sigma^2 score) / alpha
        x0 = (x + bcast(sigmas_x[i : i + 1] ** 2, x) * score) / alphas_x[i]
        qs.append((div - d * a_s[i]) * (-2.0 * sigmas_x[i] ** 2 / g2s[i]))
        if i == steps:
            break
        s, t = slice(i, i + 1), slice(i + 1, i + 2)
        x = noising_step(x, x0, hist, lams[s], sigmas[s], alphas[t], sigmas[t], lams[t] - lams[s])
        hist = (*hist, (lams[s], x0))[-2:]
    weights = simpson_weights(lams.tolist())  # host floats, once per call
    quad = sum(w * q for w, q in zip(weights, qs))
    linear = d * (sde.log_alpha(ts[-1:]) - sde.log_alpha(ts[:1])).to(x.dtype)
    return x, linear + quad, steps + 1
