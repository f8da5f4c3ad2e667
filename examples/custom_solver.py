"""Write a solver, register it, and check it against the exact answer on an analytic Gaussian.

    python examples/custom_solver.py

Prints the endpoint error of the new first-order solver at 10, 20 and 40 steps (it halves as the
steps double) next to the registered `ddim`, which implements the same update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import scoresde
import solvers
from solvers.coefficients import step_coefficients
from solvers.protocol import time_like


def exp_euler_update(x_s, x0, alpha_s, sigma_s, alpha_t, sigma_t):
    """DDIM / DPM-Solver++(1) in data form: x_t = sigma_t/sigma_s x_s + (alpha_t - alpha_s sigma_t/sigma_s) x0."""
    ratio = sigma_t / sigma_s
    return ratio * x_s + (alpha_t - alpha_s * ratio) * x0


@dataclass(frozen=True, kw_only=True)
class ExponentialEuler(solvers.Solver):
    name = "exp_euler"
    description = "first-order exponential integrator in x0 form (a worked example)"
    order, stochastic, nfe_per_step = 1, False, 1
    default_steps, default_grid = 50, "uniform_lambda"

    def step(self, model, state, s, t, *, generator, hook):
        """One interval from s to the less noisy t; the base class loops, counts and reports."""
        a_s, sig_s, a_t, sig_t, _ = (c.to(state.x) for c in step_coefficients(model.sde, s, t))
        x0 = model.x0(state.x, time_like(s, state.x))
        return solvers.State(x=exp_euler_update(state.x, x0, a_s, sig_s, a_t, sig_t), x0=x0)


def main() -> dict[int, float]:
    if "exp_euler" not in solvers.names():
        solvers.register("exp_euler", ExponentialEuler)
    f64 = torch.float64
    sde = scoresde.VPSDE()
    model = scoresde.AnalyticModel(scoresde.Gaussian(torch.zeros(4, dtype=f64), 0.5), sde)
    x_T = sde.prior_sample((64, 4), generator=torch.Generator().manual_seed(0), dtype=f64)
    exact = model.flow_map(x_T, sde.T, sde.t_eps)
    errors = {}
    for steps in (10, 20, 40):
        ours = scoresde.sample(model, solver="exp_euler", steps=steps, x_T=x_T)
        ddim = scoresde.sample(model, solver="ddim", steps=steps, grid="uniform_lambda", x_T=x_T)
        errors[steps] = float((ours.x - exact).pow(2).mean().sqrt())
        print(f"{steps:3d} steps: RMS error {errors[steps]:.2e}; max difference to ddim {float((ours.x - ddim.x).abs().max()):.1e}")
    return errors


if __name__ == "__main__":
    main()
