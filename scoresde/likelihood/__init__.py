"""Exact log-likelihood and bits/dim through the probability-flow ODE (Song et al. 2021, arXiv:2011.13456).

The probability-flow ODE dx/dt = F(x, t) = f(x, t) - g(t)^2 score(x, t) / 2 carries p_t to p_s for
every s, t, so by the instantaneous change of variables (Chen et al. 2018, arXiv:1806.07366, Thm 1)

    log p_{t_eps}(x) = log p_T(z) + int_{t_eps}^{T} div_x F(x(t), t) dt,     z = x(T),  x(t_eps) = x,

with p_T replaced by the prior N(0, prior_std^2 I). The augmented state [x, delta] is integrated
from t_eps to T. docs/likelihood.md derives this, the bits/dim offset and the dequantization.

Modes (`method`):
- adaptive torchdiffeq solvers ("dopri5", ...; rtol, atol);
- fixed-grid torchdiffeq solvers ("rk4", ...; `steps` grid intervals on the grid `grid`);
- "dpm_solver", the fixed-budget mode: x by the sampler's DPM-Solver++ multistep updates (up to
  3M, `solvers.dpm_solver_pp`) in log-SNR lambda, run in the noising direction, and the
  log-determinant by Simpson quadrature in lambda of the divergence at the same points; steps + 1
  evaluations;
- "dpm_solver_4m", "dpm_solver_6m": exponential Adams-Bashforth of order 4 / 6 in lambda with a
  quadrature of the same order for the log-determinant (6m: within 5e-5 bits/dim of the exact answer
  in 30 evaluations on a d = 3072 Gaussian; docs/likelihood.md has the tables and the caveat).

Divergence of F (`divergence`): "hutchinson" (Hutchinson 1989; Skilling 1989: v^T J v with probes
v fixed along the trajectory, one vector-Jacobian product per probe), "exact" (trace of the
autograd Jacobian, one backward pass per dimension: for small dimensions) or "analytic" (the
model's own closed form `pf_divergence(x, t)`, which the analytic Gaussian models provide).

NFE counts evaluations of the ODE right-hand side: one model forward pass each, plus its backward
passes for the divergence.

Modules: `api` (log_likelihood, bits_per_dim, validation), `results` (Likelihood, bits/dim,
dequantization), `divergence`, `ode` (the torchdiffeq modes) and `fixed_budget` (the "dpm_solver*" modes).
"""

from .api import METHODS, bits_per_dim, log_likelihood
from .divergence import DIVERGENCES, PROBES, draw_probes, exact_divergence, hutchinson_divergence, score_and_divergence
from .divergence import Divergence, Probe  # noqa: F401  (importable as before, outside __all__)
from .fixed_budget import EXPONENTIAL_METHOD  # noqa: F401  (importable as before, outside __all__)
from .fixed_budget import exponential_step, phi_coefficients, simpson_weights
from .ode import ADAPTIVE_METHODS, FIXED_METHODS, VARIABLES
from .results import Likelihood, bpd_from_logp, dequantization_offset, dequantize

__all__ = [
    "ADAPTIVE_METHODS", "DIVERGENCES", "FIXED_METHODS", "METHODS", "PROBES", "VARIABLES", "Likelihood",
    "bits_per_dim", "bpd_from_logp", "dequantization_offset", "dequantize", "draw_probes", "exact_divergence",
    "exponential_step", "hutchinson_divergence", "log_likelihood", "phi_coefficients", "score_and_divergence",
    "simpson_weights",
]
