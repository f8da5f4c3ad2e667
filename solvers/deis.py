"""DEIS tAB (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator",
arXiv:2204.13902): an exponential integrator with an Adams–Bashforth-type polynomial in t.

The probability-flow ODE of an affine SDE with the noise prediction eps, dx/dt = f x + g^2 / (2 sigma) eps,
has the linear part integrated exactly (`solvers.coefficients`, noise form). Writing the exponential
weight in the noise level nu = sigma / alpha = e^{-lambda} (d nu = nu'(tau) d tau), a step from s to the
less noisy t reads

    x_t = alpha_t / alpha_s x_s + alpha_t int_{nu_s}^{nu_t} eps(tau(nu)) d nu

(for eps frozen at s this is DDIM). tAB-p replaces eps by the Lagrange polynomial in t through the
predictions at the current and the p - 1 previous grid times t_0 = s, t_1, ..., t_{p-1}:

    x_t = alpha_t / alpha_s x_s + sum_j C_j eps_j,    C_j = alpha_t int_{nu_s}^{nu_t} l_j(tau(nu)) d nu,
    l_j(tau) = prod_{k != j} (tau - t_k) / (t_j - t_k),

which is Zhang & Chen's tAB-DEIS with their integral over tau written in nu. The weights C_j
are computed once per grid (`init`) by Gauss–Legendre quadrature in nu, in float64, using only
alpha, sigma and t_of_lambda of the SDE: in nu the integrand is smooth up to sigma = 0, so a step to
t = 0 (VP, sub-VP) needs no special case, and the weights stay differentiable in the grid
(`solvers.fit_grid`). The first steps ramp up from order 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Hook, Solver
from .coefficients import marginal, step_order
from .conversions import x0_from_eps
from .dpm_solver_pp import MultistepState
from .protocol import SDE, CountedModel, GeneratorArg, coef, time_like
from .validate import check_bool, check_choice

__all__ = [
    "DEIS", "DEISState", "QUADRATURE_NODES", "deis_coefficients", "deis_grid_coefficients", "deis_step_weights",
    "deis_update", "gauss_legendre", "lagrange_basis",
]

# Gauss–Legendre nodes per step: the weights agree with 64 nodes to about 1e-15 (tests/solvers/test_multistep_eps.py)
QUADRATURE_NODES = 32


def gauss_legendre(n: int, *, device=None) -> tuple[Tensor, Tensor]:
    """Nodes (n,) in (-1, 1) and weights (n,) of the n-point Gauss–Legendre rule, float64 (Golub & Welsch 1969)."""
    k = torch.arange(1, n, dtype=torch.float64, device=device)
    beta = k / torch.sqrt(4 * k**2 - 1)  # the Jacobi matrix of the Legendre polynomials
    nodes, vectors = torch.linalg.eigh(torch.diag(beta, 1) + torch.diag(beta, -1))
    return nodes, 2 * vectors[0] ** 2


def lagrange_basis(tau: Tensor, times: Tensor) -> Tensor:
    """l_j(tau) of the Lagrange basis through the distinct `times` (p,), at tau (Q,): returns (p, Q)."""
    rows = []
    for j in range(times.numel()):
        l_j = torch.ones_like(tau)
        for k in range(times.numel()):
            if k != j:
                l_j = l_j * (tau - times[k]) / (times[j] - times[k])
        rows.append(l_j)
    return torch.stack(rows)


def deis_step_weights(alpha_t: Tensor, nu_s: Tensor, nu_t: Tensor, tau: Tensor, w: Tensor, times: Tensor) -> Tensor:
    """C_j (p,) of one step from the quadrature nodes: tau (Q,) the times at the Gauss–Legendre points of
    [nu_t, nu_s], w (Q,) their weights on [-1, 1], times (p,) the interpolation times (s first)."""
    # Zhang & Chen 2023, tAB-DEIS weights: C_j = int_s^t Psi(t, tau) g^2/(2 sigma) l_j(tau) d tau, here in nu
    return alpha_t * (nu_t - nu_s) / 2 * (lagrange_basis(tau, times) * w).sum(1)


def _nodes_in_time(sde: SDE, nu_s: Tensor, nu_t: Tensor, nodes: int) -> tuple[Tensor, Tensor]:
    """Times tau (K, Q) at the Gauss–Legendre points of the K intervals [nu_t, nu_s] (nu_s, nu_t (K,)) and
    the weights (Q,)."""
    x, w = gauss_legendre(nodes, device=nu_s.device)
    nu = nu_s[:, None] + (nu_t - nu_s)[:, None] * (x + 1) / 2  # inside (nu_t, nu_s): finite log even when nu_t = 0
    return sde.t_of_lambda(-torch.log(nu).reshape(-1)).reshape(nu.shape), w


def deis_coefficients(sde: SDE, s: Tensor, t: Tensor, times: Tensor, *, nodes: int = QUADRATURE_NODES) -> Tensor:
    """C_j = alpha_t int_{nu_s}^{nu_t} l_j(tau(nu)) d nu (p,) float64 for the basis through times (p,) (s first).

    s, t: float64 (1,), s > t; nu = sigma / alpha; tau(nu) = sde.t_of_lambda(-log nu). Gauss–Legendre in nu.
    """
    alpha_s, sigma_s, _ = marginal(sde, s)
    alpha_t, sigma_t, _ = marginal(sde, t)
    nu_s, nu_t = sigma_s / alpha_s, sigma_t / alpha_t
    tau, w = _nodes_in_time(sde, nu_s, nu_t, nodes)
    return deis_step_weights(alpha_t, nu_s, nu_t, tau[0], w, times)


def deis_grid_coefficients(
    sde: SDE, ts: Tensor, orders: list[int], *, nodes: int = QUADRATURE_NODES
) -> tuple[Tensor, ...]:
    """`deis_coefficients` of every step i of the float64 grid ts (N + 1,) at order orders[i]: N tensors (p_i,).

    One call of sde.alpha, sde.sigma and sde.t_of_lambda for the whole grid.
    """
    alpha, sigma = sde.alpha(ts), sde.sigma(ts)
    nu = sigma / alpha
    tau, w = _nodes_in_time(sde, nu[:-1], nu[1:], nodes)
    return tuple(
        deis_step_weights(alpha[i + 1], nu[i], nu[i + 1], tau[i], w, ts[i - p + 1 : i + 1].flip(0))
        for i, p in enumerate(orders)
    )


def deis_update(x_s: Tensor, eps_hist: tuple[Tensor, ...], C: Tensor, alpha_s: Tensor, alpha_t: Tensor) -> Tensor:
    """One tAB-p step: eps_hist holds the predictions (B, *D) newest last, C (p,) float64 newest first."""
    # Zhang & Chen 2023, tAB-DEIS update: x_t = alpha_t / alpha_s x_s + sum_j C_j eps_j
    x_t = coef(alpha_t / alpha_s, x_s) * x_s
    for j, eps in enumerate(reversed(eps_hist[-C.numel() :])):
        x_t = x_t + coef(C[j : j + 1], x_s) * eps
    return x_t


@dataclass(frozen=True)
class DEISState(MultistepState):
    """MultistepState (hist: the noise predictions of the current and earlier grid times, newest last,
    at most `order`) with the weights C (p_i,) of every step i of the grid."""

    coefs: tuple = ()


@dataclass(frozen=True, kw_only=True)
class DEIS(Solver):
    """DEIS tAB-p (Zhang & Chen 2023, arXiv:2204.13902): exponential integrator, eps polynomial in t.

    Options: `order` p (1, 2 or 3; default 3); `lower_order_final` (default False: every step after
    the warm start at order p, as in the paper; True drops to orders 2, 1 on the last steps of grids
    of fewer than 10 steps, which on the analytic mixture of docs/solvers.md was mostly worse);
    `denoise_final`. One evaluation per step; the first steps ramp up from order 1. Order 1 is DDIM
    (eta = 0). The weights of the whole grid are computed by `init` (p Gauss–Legendre integrals of
    QUADRATURE_NODES nodes per step, no evaluation).
    """

    name = "deis"
    description = "DEIS tAB-1/2/3: exponential integrator, eps Lagrange polynomial in t (Zhang & Chen 2023)"
    stochastic = False
    nfe_per_step = 1
    default_steps = 20
    default_grid = "quadratic_t"

    order: int = 3
    lower_order_final: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_choice("order", self.order, (1, 2, 3))
        check_bool("lower_order_final", self.lower_order_final)

    def init(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg) -> DEISState:
        steps, ts = ts.numel() - 1, ts.to(torch.float64)
        lof = self.lower_order_final
        orders = [step_order(self.order, i, steps, warmup=i + 1, lower_order_final=lof) for i in range(steps)]
        return DEISState(x=x, coefs=deis_grid_coefficients(model.sde, ts, orders), steps=steps)

    def step(
        self, model: CountedModel, state: DEISState, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> DEISState:
        x = state.x
        s, t = s.to(torch.float64).reshape(1), t.to(torch.float64).reshape(1)
        alpha_s, sigma_s, _ = marginal(model.sde, s)
        alpha_t, _, _ = marginal(model.sde, t)
        eps_s = model.eps(x, time_like(s, x))
        hist = (*state.hist, eps_s)[-self.order :]
        x_t = deis_update(x, hist, state.coefs[state.i], alpha_s, alpha_t)
        x0_s = x0_from_eps(x, eps_s, alpha_s, sigma_s)
        return DEISState(x=x_t, x0=x0_s, hist=hist, coefs=state.coefs, i=state.i + 1, steps=state.steps)
