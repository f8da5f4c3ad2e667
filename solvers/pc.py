"""Predictor–corrector sampling (Song et al. 2021, arXiv:2011.13456, App. G: PC Algorithms 2-3, Langevin
corrector Algorithms 4-5) and annealed Langevin dynamics (Song & Ermon 2019, arXiv:1907.05600).

Each grid step runs the predictor from t_cur to t_next, then `n_corrector` Langevin steps at t_next
(the order of Algorithms 2-3; the reference code corrects at t_cur before predicting, which only
shifts the corrector by one grid time). The Langevin step size follows the signal-to-noise rule

    eps_i = 2 alpha_i (snr ||z|| / ||score||)^2,

with ||.|| the norm over one sample ("per_sample", the paper's rule, default) or the batch means of
both norms ("batch_mean", the reference code's rule; it couples the samples of a batch). alpha_i is
the squared signal ratio of the grid step just taken, (alpha(t_cur) / alpha(t_next))^2: for VP this
is DDPM's 1 - beta_i of Algorithm 5 (VP), for VE it is 1 as in Algorithm 4, and sub-VP (same alpha as
VP) gets the VP value. Corrector evaluations count in the NFE.

The per-sample rule assumes ||z|| and ||score|| concentrate (high-dimensional data such as images).
In few dimensions the ratio ||z|| / ||score|| is heavy-tailed: 100 corrector steps on exact samples of
a Gaussian p_t inflate its variance by about 9% in 64-D, 31% in 16-D, 63% in 8-D and diverge in 1-D,
against 2-3% (Langevin's own O(snr^2) bias) with "batch_mean" in any dimension. Use
step_size="batch_mean" for low-dimensional data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from .base import Hook, Solver, State
from .coefficients import step_coefficients
from .euler_maruyama import euler_maruyama_step
from .protocol import CountedModel, GeneratorArg, bcast, randn_like, time_like
from .reverse_diffusion import ancestral_step, reverse_diffusion_step
from .validate import check_int, check_name, check_number

PredictorStep = Callable[..., tuple[Tensor, Tensor | None]]

# predictor name -> one step (model, x, t_cur, t_next, *, generator) -> (x_next, x0 or None)
PREDICTORS: dict[str, PredictorStep | None] = {
    "ancestral": ancestral_step,
    "euler_maruyama": euler_maruyama_step,
    "none": None,
    "reverse_diffusion": reverse_diffusion_step,
}
CORRECTORS: tuple[str, ...] = ("langevin", "none")
STEP_SIZES: tuple[str, ...] = ("per_sample", "batch_mean")


def langevin_step_size(score: Tensor, z: Tensor, snr: float, alpha_i: Tensor, *, per_sample: bool) -> Tensor:
    """eps_i = 2 alpha_i (snr ||z|| / ||score||)^2, (B,); score, z (B, *D), alpha_i (B,)."""
    grad_norm = score.flatten(1).norm(dim=1)
    noise_norm = z.flatten(1).norm(dim=1)
    if not per_sample:
        grad_norm, noise_norm = grad_norm.mean().expand_as(grad_norm), noise_norm.mean().expand_as(noise_norm)
    # Song et al. 2021, Algorithm 5 (VP corrector): eps = 2 alpha_i (r ||z|| / ||s||)^2; Algorithm 4 has alpha_i = 1
    return 2 * alpha_i * (snr * noise_norm / grad_norm) ** 2


def langevin_update(x: Tensor, score: Tensor, step: Tensor, z: Tensor) -> Tensor:
    """One unadjusted Langevin step x + eps score + sqrt(2 eps) z; x, score, z (B, *D), step (B,)."""
    # Song et al. 2021, Algorithms 4-5: x <- x + eps s + sqrt(2 eps) z (Song & Ermon 2019, Algorithm 1)
    return x + bcast(step, x) * score + bcast((2 * step).sqrt(), x) * z


def langevin_correct(
    model: CountedModel,
    x: Tensor,
    t: Tensor,
    alpha_i: Tensor,
    *,
    snr: float,
    n_steps: int,
    per_sample: bool,
    generator: GeneratorArg = None,
    hook: Hook | None = None,
) -> Tensor:
    """n_steps Langevin corrector steps at time t (0-d float64); alpha_i 0-d. One evaluation each.

    `hook` (if any) is applied to x at time t between consecutive corrector steps.
    """
    t_b, alpha_b = time_like(t, x), time_like(alpha_i, x)
    for j in range(n_steps):
        if j > 0 and hook is not None:
            x = hook(x, t)
        score = model.score(x, t_b)
        z = randn_like(x, generator)
        x = langevin_update(x, score, langevin_step_size(score, z, snr, alpha_b, per_sample=per_sample), z)
    return x


def pc_step(
    model: CountedModel,
    x: Tensor,
    s: Tensor,
    t: Tensor,
    predictor: PredictorStep | None,
    *,
    n_corrector: int,
    snr: float,
    per_sample: bool,
    generator: GeneratorArg,
    hook: Hook,
) -> State:
    """Predictor from s to t (if any), then n_corrector Langevin steps at t, `hook` before each corrector step."""
    x0 = None
    if predictor is not None:
        x, x0 = predictor(model, x, s, t, generator=generator)
    if n_corrector > 0:
        c = step_coefficients(model.sde, s, t)
        alpha_i = (c.alpha_s / c.alpha_t) ** 2  # 1 - beta_i for VP, 1 for VE
        if predictor is not None:
            x = hook(x, t)
        x = langevin_correct(
            model, x, t, alpha_i, snr=snr, n_steps=n_corrector, per_sample=per_sample, generator=generator, hook=hook
        )
    return State(x=x, x0=x0)


@dataclass(frozen=True, kw_only=True)
class _LangevinOptions(Solver):
    """The corrector's options, shared by PC and Langevin: snr > 0, n_corrector >= 1, step_size."""

    snr: float = 0.16
    n_corrector: int = 1
    step_size: str = "per_sample"

    def __post_init__(self):
        super().__post_init__()
        self._set(snr=check_number("snr", self.snr, 0, low_open=True))
        check_int("n_corrector", self.n_corrector, 1)
        check_name("step_size", self.step_size, STEP_SIZES)

    def _pc_step(self, model, state, s, t, predictor, n_corrector, generator, hook) -> State:
        return pc_step(
            model, state.x, s, t, predictor, n_corrector=n_corrector, snr=self.snr,
            per_sample=self.step_size == "per_sample", generator=generator, hook=hook,
        )


@dataclass(frozen=True, kw_only=True)
class PC(_LangevinOptions):
    """Predictor–corrector sampler: any predictor in PREDICTORS, Langevin (or no) corrector.

    Options: predictor ("reverse_diffusion", "euler_maruyama", "ancestral", "none"), corrector
    ("langevin", "none"), snr > 0, n_corrector >= 1 (Langevin steps per grid step), step_size
    ("per_sample", "batch_mean"). `nfe_per_step` on an instance counts the predictor's evaluation
    and the corrector's n_corrector. `order` is the predictor's weak order; the corrector adds a
    bias set by snr that refining the grid does not remove. With a hook (inpainting), every
    corrector step sees the hooked state, as in Song et al.'s reference code.
    """

    name = "pc"
    description = "predictor–corrector: reverse diffusion + Langevin corrector (Song et al. 2021, Alg. 2-5)"
    order = 1
    stochastic = True
    nfe_per_step = 2
    default_steps = 1000
    default_grid = "uniform_t"

    predictor: str = "reverse_diffusion"
    corrector: str = "langevin"

    def __post_init__(self):
        check_name("predictor", self.predictor, sorted(PREDICTORS))
        check_name("corrector", self.corrector, CORRECTORS)
        if self.predictor == "none" and self.corrector == "none":
            raise ValueError("predictor and corrector cannot both be 'none'; use solver 'langevin' for corrector only")
        super().__post_init__()
        self._set(nfe_per_step=(self.predictor != "none") + (self.n_corrector if self.corrector == "langevin" else 0))

    def step(
        self, model: CountedModel, state: State, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> State:
        n_corrector = self.n_corrector if self.corrector == "langevin" else 0
        return self._pc_step(model, state, s, t, PREDICTORS[self.predictor], n_corrector, generator, hook)


@dataclass(frozen=True, kw_only=True)
class Langevin(_LangevinOptions):
    """Annealed Langevin dynamics (Song & Ermon 2019): n_corrector Langevin steps at each of ts[1:].

    The state starts as a prior sample at ts[0]; step i runs the corrector at ts[i + 1] with the
    signal-to-noise step rule above. It has no convergence order (`order` = 0): its bias is set by
    snr and n_corrector, not by the grid.
    """

    name = "langevin"
    description = "annealed Langevin dynamics, corrector only (Song & Ermon 2019)"
    order = 0
    stochastic = True
    nfe_per_step = 1
    default_steps = 1000
    default_grid = "uniform_t"

    def __post_init__(self):
        super().__post_init__()
        self._set(nfe_per_step=self.n_corrector)

    def step(
        self, model: CountedModel, state: State, s: Tensor, t: Tensor, *, generator: GeneratorArg, hook: Hook
    ) -> State:
        return self._pc_step(model, state, s, t, None, self.n_corrector, generator, hook)
