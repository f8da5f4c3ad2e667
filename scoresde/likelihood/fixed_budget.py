"""The fixed-budget modes: steps + 1 evaluations on a grid from t_eps to T, run in the noising direction.

method="dpm_solver": x is carried by the sampler's own DPM-Solver++ updates (`solvers.dpm_solver_pp`,
up to 3M, with the phi functions of `solvers.coefficients`), and the log-determinant by Simpson
quadrature in log-SNR of the divergence at the same points.

method="dpm_solver_4m" / "dpm_solver_6m" (MULTISTEP_METHODS): x by the exponential Adams-Bashforth
method of order p = 4 / 6 in log-SNR (the data prediction x0 replaced by its polynomial through the
last p grid points, integrated exactly against the exponential weight: the order-p member of the
DPM-Solver++ multistep family), and the log-determinant by the composite interpolatory rule of the
same order on the same points. docs/likelihood.md derives them and gives the measurements: 6m is far
more accurate on smooth laws (the d = 3072 Gaussian) and better on the digits model at 25-30
evaluations, but its small stability region makes it erratic on sharply separated mixtures, where
4m stays robust.

Notation, as in `solvers.dpm_solver_pp`: lam = log(alpha / sigma) decreases along the grid, so a step
from s to t has h = lam_t - lam_s < 0, while the multistep ratios r0 = (lam_s - lam_p1) / h and
r1 = (lam_p1 - lam_p2) / h stay positive; the updates (linear part integrated exactly, x0 a
polynomial in lambda) hold for either sign of h. x0 = (x + sigma^2 score) / alpha (Tweedie);
q = sigma^2 div(score) = (div F - d a) dt/dlam with dt/dlam = -2 sigma^2 / g^2, so that
int div F dt = d log(alpha_T / alpha_eps) + int q dlam.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from solvers.coefficients import phis
from solvers.dpm_solver_pp import dpm_solver_pp_1_step, dpm_solver_pp_3m_step, dpm_solver_pp_3s_step
from solvers.protocol import bcast, time_like

from .divergence import score_and_divergence
from .ode import increasing_grid

__all__ = [
    "EXPONENTIAL_METHOD", "EXPONENTIAL_METHODS", "MULTISTEP_METHODS", "exponential_adams_weights", "exponential_step",
    "interpolatory_weights", "phi_coefficients", "simpson_weights", "stable_phis",
]

EXPONENTIAL_METHOD = "dpm_solver"
# name -> order of the exponential Adams-Bashforth update and of the log-determinant quadrature
MULTISTEP_METHODS = {"dpm_solver_4m": 4, "dpm_solver_6m": 6}
EXPONENTIAL_METHODS = (EXPONENTIAL_METHOD, *MULTISTEP_METHODS)


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
    model, x, *, y, steps, grid, t_eps, divergence, probes, n_div, method: str = EXPONENTIAL_METHOD
) -> tuple[Tensor, Tensor, int]:
    """Fixed-budget modes: returns z (B, *D), delta = int div F dt (B, K) and the NFE (= steps + 1).

    method "dpm_solver": `integrate_3m`; a MULTISTEP_METHODS name: `integrate_multistep` of its order.
    """
    if method in MULTISTEP_METHODS:
        return integrate_multistep(model, x, y=y, steps=steps, grid=grid, t_eps=t_eps, divergence=divergence,
                                   probes=probes, order=MULTISTEP_METHODS[method])
    if method != EXPONENTIAL_METHOD:
        raise ValueError(f"unknown fixed-budget method {method!r}; choose one of {list(EXPONENTIAL_METHODS)}")
    return integrate_3m(model, x, y=y, steps=steps, grid=grid, t_eps=t_eps, divergence=divergence, probes=probes)


def integrate_3m(model, x, *, y, steps, grid, t_eps, divergence, probes) -> tuple[Tensor, Tensor, int]:
    """DPM-Solver++(3M) for x, Simpson for the log-determinant: z (B, *D), delta (B, K), NFE = steps + 1."""
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


def stable_phis(z: float, n: int) -> list[float]:
    """[phi_1(z), ..., phi_n(z)] as host floats: the phi functions of `solvers.coefficients`, accurate for small |z|.

    For |z| >= 1 the recursion phi_1 = expm1(z) / z, phi_{k+1} = (phi_k - 1/k!) / z of
    `solvers.coefficients.phis`; below, where that recursion loses about k digits to cancellation,
    the series phi_k(z) = sum_m z^m / (m + k)!. Plain floats: weights of a grid need no tensor op.
    """
    if abs(z) >= 1.0:
        out = [math.expm1(z) / z]
        for k in range(1, n):
            out.append((out[-1] - 1.0 / math.factorial(k)) / z)
        return out
    out = []
    for k in range(1, n + 1):
        term, total, m = 1.0 / math.factorial(k), 0.0, 0
        while m == 0 or abs(term) > 1e-18 * abs(total):
            total += term
            m += 1
            term *= z / (m + k)
        out.append(total)
    return out


def _solve_transposed_vandermonde(u: Sequence[float], b: Sequence[float]) -> list[float]:
    """w with sum_j w_j u_j^k = b_k for k < len(u) (distinct u): the rule exact for polynomials of degree < len(u).

    Gaussian elimination with partial pivoting on host floats (len(u) <= 6 or so, scaled nodes of order 1).
    """
    m = len(u)
    a = [[u[j] ** k for j in range(m)] + [b[k]] for k in range(m)]
    for c in range(m):
        p = max(range(c, m), key=lambda r: abs(a[r][c]))
        a[c], a[p] = a[p], a[c]
        for r in range(c + 1, m):
            f = a[r][c] / a[c][c]
            a[r] = [v - f * w for v, w in zip(a[r], a[c])]
    w = [0.0] * m
    for c in reversed(range(m)):
        w[c] = (a[c][m] - sum(a[c][j] * w[j] for j in range(c + 1, m))) / a[c][c]
    return w


def exponential_adams_weights(lam_s: float, lam_t: float, nodes: Sequence[float]) -> list[float]:
    """w_j with int_{lam_s}^{lam_t} e^{-(lam_t - lam)} P(lam) dlam = sum_j w_j P(nodes[j]) for deg P < len(nodes).

    The weights of the data-form exponential Adams-Bashforth step from s to t: x0(lambda) replaced by its
    Lagrange interpolant through the nodes (distinct log-SNRs, any spacing; lam_s among them for the
    explicit method). In u = (lambda - lam_s) / h, h = lam_t - lam_s (either sign, h != 0), the
    moments are int_0^h e^{-(h - v)} (v / h)^k dv = k! h phi_{k+1}(-h); the weights solve the
    transposed Vandermonde system of the scaled nodes. Host floats (float64), computed once per grid.
    """
    h = lam_t - lam_s
    phi = stable_phis(-h, len(nodes))
    moments = [math.factorial(k) * h * phi[k] for k in range(len(nodes))]
    return _solve_transposed_vandermonde([(lam - lam_s) / h for lam in nodes], moments)


def interpolatory_weights(nodes: Sequence[float], points: int) -> list[float]:
    """Weights w with sum_i w_i f(nodes[i]) ≈ int_{nodes[0]}^{nodes[-1]} f, for monotone nodes of any spacing.

    Composite interpolatory rule: each interval is integrated exactly for the polynomial through
    `points` consecutive nodes around it (centred where the ends allow), so the rule is exact for
    polynomials of degree < points and its error is O(h^points) on smooth f (points = 3 on a
    uniform grid is not Simpson: every interval gets its own stencil). Needs len(nodes) >= points.
    """
    n = len(nodes) - 1
    if not 2 <= points <= n + 1:
        raise ValueError(f"points must be in [2, {n + 1}] for {n + 1} nodes, got {points}")
    w = [0.0] * (n + 1)
    for i in range(n):
        lo = min(max(i - (points - 2) // 2, 0), n + 1 - points)
        h = nodes[i + 1] - nodes[i]
        u = [(nodes[j] - nodes[i]) / h for j in range(lo, lo + points)]
        # int_{nodes[i]}^{nodes[i+1]} ((lam - nodes[i]) / h)^k dlam = h / (k + 1)
        for j, wj in enumerate(_solve_transposed_vandermonde(u, [h / (k + 1) for k in range(points)])):
            w[lo + j] += wj
    return w


def integrate_multistep(
    model, x, *, y, steps, grid, t_eps, divergence, probes, order: int
) -> tuple[Tensor, Tensor, int]:
    """Exponential Adams-Bashforth of order `order` for x and the matching quadrature for the log-determinant.

    Returns z (B, *D), delta = int div F dt (B, K) and the NFE = steps + 1 (one evaluation per grid point).
    Step i uses the x0 predictions of the last min(order, i + 1) grid points (the order ramps up from
    1); delta = d log(alpha_T / alpha_eps) + int q dlam with q = sigma^2 div(score) integrated by
    `interpolatory_weights` with min(order, steps + 1) points. All weights are host floats computed
    once from the grid before the loop.
    """
    sde = model.sde
    d = x[0].numel()
    ts = increasing_grid(model, grid, steps, t_eps).to(x.device)
    # float64 coefficients, read to the host once per call (the weights are host floats)
    lam, alpha, sigma = torch.stack([sde.lambda_(ts), sde.alpha(ts), sde.sigma(ts)]).tolist()
    weights = [
        exponential_adams_weights(lam[i], lam[i + 1], lam[max(i + 1 - order, 0) : i + 1][::-1]) for i in range(steps)
    ]
    quad_w = interpolatory_weights(lam, min(order, steps + 1))
    a_s, g2s = sde.dlog_alpha_dt(ts).to(x.dtype), sde.g2(ts).to(x.dtype)
    x0s, delta = [], None
    for i in range(steps + 1):
        score, div = score_and_divergence(model, x, time_like(ts[i], x), y=y, divergence=divergence, probes=probes)
        # Tweedie: x0 = (x + sigma^2 score) / alpha
        x0s = [(x + sigma[i] ** 2 * score) / alpha[i], *x0s][:order]  # newest first
        # q = sigma^2 div(score) = (div F - d a) dt/dlam, dt/dlam = -2 sigma^2 / g^2 (docs/likelihood.md)
        q = (div - d * a_s[i]) * (-2.0 * sigma[i] ** 2 / g2s[i])
        delta = quad_w[i] * q if delta is None else delta + quad_w[i] * q
        if i == steps:
            break
        # Lu et al. 2022b Eq. 9, x0 -> its interpolant on the last p points: x_t = s_t/s_s x_s + a_t sum_j w_j x0_j
        x = (sigma[i + 1] / sigma[i]) * x + alpha[i + 1] * sum(w_j * x0_j for w_j, x0_j in zip(weights[i], x0s))
    linear = d * (sde.log_alpha(ts[-1:]) - sde.log_alpha(ts[:1])).to(x.dtype)
    return x, linear + delta, steps + 1
