"""iPNDM, the improved pseudo linear multistep method (Zhang & Chen 2023, DEIS, arXiv:2204.13902).

PNDM (Liu et al. 2022, arXiv:2202.09778) combines the noise predictions of the last four grid times
with the Adams–Bashforth weights and moves the state with the DDIM transfer; it warms up with
Runge–Kutta steps. iPNDM keeps the combination and warms up with lower-order Adams–Bashforth
combinations instead, so that every step costs one evaluation:

    eps'_s = sum_j b_j eps_{-j}     b = (1); (3/2, -1/2); (23/12, -16/12, 5/12); (55/24, -59/24, 37/24, -9/24)
    x_t    = alpha_t (x_s - sigma_s eps'_s) / alpha_s + sigma_t eps'_s      (DDIM, eta = 0)

Here eps_{-j} is the prediction j grid times back (eps_0 = eps_s). The DDIM transfer is exact for
eps'_s equal to the average of eps over the step in the noise level nu = sigma / alpha (in y = x / alpha,
the probability-flow ODE reads dy/dnu = eps), and the weights b are those of equal steps. So the
method has global order `order` on grids uniform in nu (`solvers.grids.karras` with rho = 1) and
global order 2 on other grids (orders 2 to 4 alike): there the average the weights form and the one
the transfer needs differ by O(h^2). docs/solvers.md has the measured slopes.

The DDIM transfer needs no special case at sigma_t = 0 (t_end = 0 on VP): it returns
alpha_t (x_s - sigma_s eps'_s) / alpha_s there.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import Hook, Solver
from .coefficients import step_coefficients, step_order
from .conversions import x0_from_eps
from .ddim import ddim_update
from .dpm_solver_pp import MultistepState  # hist: the noise predictions of the last grid times
from .protocol import CountedModel, GeneratorArg, time_like
from .validate import check_bool, check_choice

__all__ = ["ADAMS_BASHFORTH", "IPNDM", "ipndm_eps"]

# Adams–Bashforth weights b_j of orders 1 to 4, newest prediction first
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def ipndm_eps(eps_hist: tuple[Tensor, ...], p: int) -> Tensor:
    """The combined noise prediction eps'_s of order p from eps_hist (newest last, at least p entries, each (B, *D))."""
    # Zhang & Chen 2023, iPNDM (PNDM's linear multistep combination, Liu et al. 2022): eps' = sum_j b_j eps_{-j}
    return sum(b * eps for b, eps in zip(ADAMS_BASHFORTH[p], reversed(eps_hist[-p:])))


@dataclass(frozen=True, kw_only=True)
class IPNDM(Solver):
    """iPNDM (Zhang & Chen 2023, arXiv:2204.13902): Adams–Bashforth on eps with the DDIM transfer.

    Options: `order` (1 to 4) of the Adams–Bashforth combination, default 3: the most accurate at 5 to 15
    evaluations on the analytic benchmark and on the digits model (docs/solvers.md; the paper's iPNDM is
    order 4); `lower_order_final` (default False: every step after the warm start at `order`, as in the
    paper; True applies the rule of the other multistep solvers, orders 3, 2, 1 on the last steps of grids
    of fewer than 10 steps, which on the analytic mixture of docs/solvers.md was mostly worse);
    `denoise_final`. One evaluation per step; the first steps ramp up from order 1 (iPNDM's warm
    start). Order 1 is DDIM (eta = 0). Global order: `order` on grids uniform in sigma / alpha
    (`karras` with rho = 1), 2 on other grids (module docstring); `order` is the option.
    """

    name = "ipndm"
    description = "iPNDM: Adams-Bashforth eps + DDIM transfer, orders 1-4 (Zhang & Chen 2023, DEIS)"
    stochastic = False
    nfe_per_step = 1
    default_steps = 20
    default_grid = "quadratic_t"

    order: int = 3  # 4 before issue 18 (docs/solvers.md, "Recommended configurations")
    lower_order_final: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_choice("order", self.order, (1, 2, 3, 4))
        check_bool("lower_order_final", self.lower_order_final)

    def init(self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg) -> MultistepState:
        return MultistepState(x=x, steps=ts.numel() - 1)

    def step(
        self, model: CountedModel, state: MultistepState, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> MultistepState:
        x = state.x
        c = step_coefficients(model.sde, s, t)
        eps_s = model.eps(x, time_like(s, x))
        hist = (*state.hist, eps_s)[-self.order :]
        p = step_order(self.order, state.i, state.steps, warmup=len(hist), lower_order_final=self.lower_order_final)
        x_t, _ = ddim_update(x, ipndm_eps(hist, p), *(time_like(v, x) for v in c), 0.0, None)
        x0_s = x0_from_eps(x, eps_s, c.alpha_s.reshape(1), c.sigma_s.reshape(1))
        return MultistepState(x=x_t, x0=x0_s, hist=hist, i=state.i + 1, steps=state.steps)
