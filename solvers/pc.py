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

from torch import Tensor

from ._coeffs import step_coefficients
from .base import Callback, Sampler, report
from .euler_maruyama import euler_maruyama_step
from .protocol import CountedModel, GeneratorArg, bcast, randn_like, time_like
from .reverse_diffusion import ancestral_step, reverse_diffusion_step

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
) -> Tensor:
    """n_steps Langevin corrector steps at time t (0-d float64); alpha_i 0-d. One evaluation each."""
    t_b, alpha_b = time_like(t, x), time_like(alpha_i, x)
    for _ in range(n_steps):
        score = model.score(x, t_b)
        z = randn_like(x, generator)
        x = langevin_update(x, score, langevin_step_size(score, z, snr, alpha_b, per_sample=per_sample), z)
    return x


def pc_loop(
    model: CountedModel,
    x: Tensor,
    ts: Tensor,
    predictor: PredictorStep | None,
    *,
    n_corrector: int,
    snr: float,
    per_sample: bool,
    generator: GeneratorArg,
    callback: Callback | None,
) -> Tensor:
    """Walk ts: predictor from ts[i] to ts[i + 1] (if any), then n_corrector Langevin steps at ts[i + 1]."""
    for i in range(len(ts) - 1):
        x0 = None
        if predictor is not None:
            x, x0 = predictor(model, x, ts[i], ts[i + 1], generator=generator)
        if n_corrector > 0:
            c = step_coefficients(model.sde, ts[i], ts[i + 1])
            alpha_i = (c.alpha_s / c.alpha_t) ** 2  # 1 - beta_i for VP, 1 for VE
            x = langevin_correct(
                model, x, ts[i + 1], alpha_i, snr=snr, n_steps=n_corrector, per_sample=per_sample, generator=generator
            )
        report(callback, i, ts[i + 1], x, x0, model)
    return x


def _check_langevin_options(snr, n_corrector, step_size) -> None:
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not (0.0 < snr < float("inf")):
        raise ValueError(f"snr must be a finite number > 0, got {snr!r}")
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 1:
        raise ValueError(f"n_corrector must be an integer >= 1, got {n_corrector!r}")
    if step_size not in STEP_SIZES:
        raise ValueError(f"unknown step_size {step_size!r}; choose one of {list(STEP_SIZES)}")


class PC(Sampler):
    """Predictor–corrector sampler: any predictor in PREDICTORS, Langevin (or no) corrector.

    Options: predictor ("reverse_diffusion", "euler_maruyama", "ancestral", "none"), corrector
    ("langevin", "none"), snr > 0, n_corrector >= 1 (Langevin steps per grid step), step_size
    ("per_sample", "batch_mean"). `nfe_per_step` on an instance counts the predictor's evaluation
    and the corrector's n_corrector. `order` is the predictor's weak order; the corrector adds a
    bias set by snr that refining the grid does not remove.
    """

    name = "pc"
    description = "predictor–corrector: reverse diffusion + Langevin corrector (Song et al. 2021, Alg. 2-5)"
    order = 1
    stochastic = True
    nfe_per_step = 2
    default_steps = 1000
    default_grid = "uniform_t"

    def __init__(
        self,
        *,
        predictor: str = "reverse_diffusion",
        corrector: str = "langevin",
        snr: float = 0.16,
        n_corrector: int = 1,
        step_size: str = "per_sample",
        denoise_final: bool = False,
    ):
        super().__init__(denoise_final=denoise_final)
        if predictor not in PREDICTORS:
            raise ValueError(f"unknown predictor {predictor!r}; choose one of {sorted(PREDICTORS)}")
        if corrector not in CORRECTORS:
            raise ValueError(f"unknown corrector {corrector!r}; choose one of {list(CORRECTORS)}")
        if predictor == "none" and corrector == "none":
            raise ValueError("predictor and corrector cannot both be 'none'; use solver 'langevin' for corrector only")
        _check_langevin_options(snr, n_corrector, step_size)
        self.predictor, self.corrector = predictor, corrector
        self.snr, self.n_corrector, self.step_size = float(snr), n_corrector, step_size
        self.nfe_per_step = (predictor != "none") + (n_corrector if corrector == "langevin" else 0)

    def options(self) -> dict:
        return {k: v for k, v in super().options().items() if k != "nfe_per_step"}

    def integrate(
        self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg, callback: Callback | None
    ) -> Tensor:
        return pc_loop(
            model,
            x,
            ts,
            PREDICTORS[self.predictor],
            n_corrector=self.n_corrector if self.corrector == "langevin" else 0,
            snr=self.snr,
            per_sample=self.step_size == "per_sample",
            generator=generator,
            callback=callback,
        )


class Langevin(Sampler):
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

    def __init__(
        self, *, snr: float = 0.16, n_corrector: int = 1, step_size: str = "per_sample", denoise_final: bool = False
    ):
        super().__init__(denoise_final=denoise_final)
        _check_langevin_options(snr, n_corrector, step_size)
        self.snr, self.n_corrector, self.step_size = float(snr), n_corrector, step_size
        self.nfe_per_step = n_corrector

    def options(self) -> dict:
        return {k: v for k, v in super().options().items() if k != "nfe_per_step"}

    def integrate(
        self, model: CountedModel, x: Tensor, ts: Tensor, *, generator: GeneratorArg, callback: Callback | None
    ) -> Tensor:
        return pc_loop(
            model,
            x,
            ts,
            None,
            n_corrector=self.n_corrector,
            snr=self.snr,
            per_sample=self.step_size == "per_sample",
            generator=generator,
            callback=callback,
        )
