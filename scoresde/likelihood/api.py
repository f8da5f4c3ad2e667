"""`log_likelihood` and `bits_per_dim`: validation at the boundary, probe and dequantization draws, results.

Both run one core, `_estimate`: `log_likelihood(model, x, **options)` is `bits_per_dim(model, x,
levels=None, repeats=1, **options)`, and bits_per_dim takes log_likelihood's keyword options (its
signature shows them with their defaults).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Sequence
from types import MappingProxyType

import torch
from torch import Tensor

from solvers import grids
from solvers.protocol import GeneratorArg, Model
from solvers.validate import check_bool, check_int, check_name, check_number

from ..sampling_args import check_seed, consecutive_seeds
from ..sde import DiscreteVPSDE
from .divergence import DIVERGENCES, PROBES, Divergence, Probe, draw_probes
from .fixed_budget import EXPONENTIAL_METHODS, integrate_exponential
from .ode import ADAPTIVE_METHODS, FIXED_METHODS, VARIABLES, integrate_torchdiffeq
from .results import (
    Likelihood, bpd_from_logp, check_data, check_levels, checked, dequantize, levels_of, standard_error,
)

__all__ = ["MAX_PROBES", "METHODS", "bits_per_dim", "log_likelihood", "per_sample_generators"]

METHODS = ADAPTIVE_METHODS + FIXED_METHODS + EXPONENTIAL_METHODS
# Hutchinson probes per evaluation: each is a tensor of x's size; past this, divergence="exact" costs less
MAX_PROBES = 1024


def _check_estimator(model, x: Tensor, y, divergence, probe, n_probes) -> None:
    """The divergence estimator's options, and a label y that the model's methods must accept."""
    check_name("divergence", divergence, DIVERGENCES)
    check_name("probe", probe, PROBES)
    check_int("n_probes", n_probes, 1, MAX_PROBES)
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


DEFAULT_TOLERANCE = 1e-5  # rtol and atol of the adaptive methods (Song et al. 2021)
DEFAULT_GRID = "uniform_lambda"  # grid of the fixed-grid and fixed-budget methods


def _check_solver(method: str, rtol, atol, steps, grid) -> tuple[float | None, float | None, str | None]:
    """(rtol, atol, grid) with defaults filled in: tolerances for the adaptive methods, steps and grid
    for the others; an option the method does not use is refused (nothing is silently ignored)."""
    fixed = list(FIXED_METHODS) + list(EXPONENTIAL_METHODS)
    if method in ADAPTIVE_METHODS:
        for name, value in (("steps", steps), ("grid", grid)):
            if value is not None:
                raise ValueError(f"{name} applies to fixed-grid methods {fixed}; {method!r} is adaptive "
                                 f"(set rtol, atol), got {name}={value!r}")
        rtol = DEFAULT_TOLERANCE if rtol is None else rtol
        atol = DEFAULT_TOLERANCE if atol is None else atol
        check_number("rtol", rtol, 0, low_open=True)
        check_number("atol", atol, 0, low_open=True)
        return rtol, atol, None
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is not None:
            raise ValueError(f"{name} applies to the adaptive methods {list(ADAPTIVE_METHODS)}; {method!r} takes "
                             f"steps (and grid), got {name}={value!r}")
    checked(check_int, "steps", steps, 1, grids.MAX_STEPS,
            message=f"method {method!r} needs steps, an integer in [1, {grids.MAX_STEPS}], got {steps!r}")
    if method in EXPONENTIAL_METHODS and steps < 2:
        raise ValueError(f"method {method!r} needs steps >= 2, got {steps!r}")
    grid = DEFAULT_GRID if grid is None else grid
    check_name("grid", grid, sorted(grids.GRIDS))
    return None, None, grid


def _variable(sde, method: str, variable: str | None) -> str:
    """The integration variable, "t" or "lambda"; None picks the method's or the schedule's default."""
    if method in EXPONENTIAL_METHODS:
        if variable is not None:
            raise ValueError(f"variable applies to the torchdiffeq methods; {method!r} always steps in lambda")
        return "lambda"
    if variable is None:
        # the discrete schedule's drift jumps at each of its N knots in t, but not in lambda
        return "lambda" if isinstance(sde, DiscreteVPSDE) else "t"
    if variable not in VARIABLES:
        raise ValueError(f"unknown variable {variable!r}; choose one of {list(VARIABLES)} or None")
    return variable


def _check_settings(
    model, x, *, y, method, rtol, atol, steps, grid, variable, t_eps, divergence, probe, n_probes
) -> dict:
    """Validate every option; returns the settings dict of the result (None where an option does not apply)."""
    check_data(x)
    check_name("method", method, METHODS)
    _check_estimator(model, x, y, divergence, probe, n_probes)
    rtol, atol, grid = _check_solver(method, rtol, atol, steps, grid)
    sde = model.sde
    variable = _variable(sde, method, variable)
    t_eps = float(sde.t_eps_likelihood) if t_eps is None else t_eps
    checked(check_number, "t_eps", t_eps, 0, sde.T, low_open=True, high_open=True,
            message=f"t_eps must be a number in (0, T={sde.T}), got {t_eps!r}")
    adaptive, hutch = method in ADAPTIVE_METHODS, divergence == "hutchinson"
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
        if settings["method"] in EXPONENTIAL_METHODS:
            z, delta, nfe = integrate_exponential(model, x, method=settings["method"], **common)
        else:
            z, delta, nfe = integrate_torchdiffeq(
                model, x, method=settings["method"], rtol=settings["rtol"], atol=settings["atol"],
                variable=settings["variable"], **common
            )
        logp = model.sde.prior_logp(z)[:, None] + delta
    return logp, z, nfe


def per_sample_generators(seed, generator: GeneratorArg, x: Tensor) -> GeneratorArg:
    """The noise source of x's B samples: `generator` as given, or one generator per sample from `seed`.

    seed: an int S gives sample i the generator seeded S + i (the rule of `scoresde.sample(seed=S,
    batch_size=...)`), a list (tuple, range) of B ints the seeds themselves; each sample then draws
    its dequantization and probes from its own generator, so its estimate does not depend on the batch
    it sits in. Generators live on x's device.
    """
    if seed is None:
        return generator
    if generator is not None:
        raise ValueError("give seed or generator, not both")
    check_seed(seed)
    n = x.shape[0]
    if isinstance(seed, int):
        seed = consecutive_seeds(seed, n)
    if len(seed) != n:
        raise ValueError(f"seed: a list needs one seed per sample, got {len(seed)} for {n} samples")
    return [torch.Generator(x.device).manual_seed(s) for s in seed]


def _estimate(model, x, *, levels: int | None, repeats: int, y, generator: GeneratorArg, seed=None,
              progress: bool = False, **options) -> Likelihood:
    """bits_per_dim with every option given; log_likelihood is its case levels=None, repeats=1."""
    if hasattr(model, "latent_shape"):  # a LatentModel (scoresde.latent.model): the figure is its latents'
        res = _estimate(model.latent, model.likelihood_input(x, levels), levels=None, repeats=repeats, y=y,
                        generator=generator, seed=seed, progress=progress, **options)
        return dataclasses.replace(res, settings=MappingProxyType({**res.settings, **model.likelihood_settings()}))
    if levels is not None:
        check_levels(levels)
    check_int("repeats", repeats, 1)
    check_bool("progress", progress)
    settings = _check_settings(model, x, y=y, **options)
    generator = per_sample_generators(seed, generator, x)
    if levels is not None:
        levels_of(x, levels)  # raise before any integration when x is off the grid
    d = x[0].numel()
    rounds, z, nfe = [], None, 0
    bar = _bar(x.shape[0] * repeats) if progress else None
    try:
        for _ in range(repeats):
            x_r = x if levels is None else dequantize(x, levels, generator=generator)
            draws, z_r, nfe_r = _logp_draws(model, x_r, y=y, settings=settings, generator=generator)
            rounds.append(draws)
            z = z_r if z is None else z
            nfe += nfe_r
            if bar is not None:
                bar.update(x.shape[0])
                bar.set_postfix(nfe=nfe)
    finally:
        if bar is not None:
            bar.close()
    offset_nats = 0.0 if levels is None else d * math.log(2.0 / levels)
    all_draws = torch.stack(rounds, 1)  # (B, repeats, K)
    logp = all_draws.mean((1, 2)) + offset_nats
    if levels is not None:
        se = standard_error(all_draws.mean(2))
    elif settings["divergence"] == "hutchinson":
        se = standard_error(all_draws.flatten(1))
    else:
        se = torch.zeros_like(logp)
    settings.update(levels=levels, repeats=repeats, dequantization=None if levels is None else "uniform")
    return Likelihood(logp=logp, bpd=bpd_from_logp(logp, d), z=z, nfe=nfe, logp_se=se,
                      bpd_se=se / (d * math.log(2.0)), settings=MappingProxyType(settings))


def _bar(total: int):
    """A tqdm bar over images (one ODE solve of the batch per dequantization round)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="log-likelihood", unit="image")


def log_likelihood(
    model: Model,
    x: Tensor,
    *,
    y=None,
    method: str = "dopri5",
    rtol: float | None = None,
    atol: float | None = None,
    steps: int | None = None,
    grid: str | None = None,
    variable: str | None = None,
    t_eps: float | None = None,
    divergence: Divergence = "hutchinson",
    probe: Probe = "rademacher",
    n_probes: int = 1,
    generator: GeneratorArg = None,
    seed: int | Sequence[int] | None = None,
    progress: bool = False,
) -> Likelihood:
    """Log-likelihood log p_{t_eps}(x) of continuous data x through the probability-flow ODE.

    x: (B, *D) data (for images, in [-1, 1]), any float dtype and device; the ODE runs in that
    dtype on that device. y: label passed to model.score (conditional models). Returns logp (B,)
    in nats, bpd (B,) = -logp / (d ln 2) with no dequantization offset, the latent z (B, *D), NFE,
    standard errors and the settings.

    method: adaptive torchdiffeq solver (ADAPTIVE_METHODS; rtol, atol, default 1e-5 each), fixed-grid
    torchdiffeq solver (FIXED_METHODS; `steps` intervals of the solvers.grids grid `grid`, uniform in
    log-SNR by default) or "dpm_solver" / "dpm_solver_4m" / "dpm_solver_6m" (fixed budget: steps + 1
    evaluations, see fixed_budget's module doc and docs/likelihood.md).
    t_eps: start time, default model.sde.t_eps_likelihood. divergence: "hutchinson" (n_probes
    probes of kind `probe`, averaged; drawn from `generator`, one torch.Generator or one per
    sample), "exact" (autograd, d backward passes per evaluation) or "analytic" (model.pf_divergence).
    An option the method does not use (rtol/atol with a fixed-grid method, steps/grid with an
    adaptive one) raises ValueError. seed (in place of generator): an int S gives sample i its own generator seeded S + i, a list one
    seed per sample (`per_sample_generators`), so that a sample's result does not depend on the batch
    (with an adaptive method, up to the step sizes the batch shares; docs/likelihood.md).
    progress: a tqdm bar over the images (B per round; bits_per_dim runs `repeats` rounds), with the NFE.
    A `scoresde.latent.model.LatentModel` reports log p(z) of its latents z = s E(x) (per latent dimension,
    settings["space"] = "latent"; no pixel figure: docs/latent.md), and bits_per_dim then needs levels=None.
    """
    return _estimate(
        model, x, levels=None, repeats=1, y=y, method=method, rtol=rtol, atol=atol, steps=steps, grid=grid,
        variable=variable, t_eps=t_eps, divergence=divergence, probe=probe, n_probes=n_probes, generator=generator,
        seed=seed, progress=progress,
    )


def bits_per_dim(model: Model, x: Tensor, *, levels: int | None = 256, repeats: int = 1, **options) -> Likelihood:
    """Bits per dimension of data x (B, *D) in [-1, 1] quantized to `levels` levels.

    levels = K (256 for 8-bit images, 17 for scikit-learn digits): x must lie on the grid
    {-1 + 2k/(K-1)}; each of `repeats` rounds draws a uniform dequantization (`dequantize`) and
    probes from `generator` (or each sample from its own generator, given `seed`), in that order, and
    integrates the ODE. Returned logp (B,) is the lower bound mean_r log p(x + u_r) + d log(2/K) on
    the log-probability of the discrete data, in nats, so bpd = mean_r[-log2 p(x + u_r)] / d +
    log2(K/2) (`dequantization_offset`).
    levels=None: continuous data, no dequantization and no offset (log_likelihood averaged over
    `repeats` probe draws). The other options are those of `log_likelihood`; z is that of the
    first round, nfe counts all rounds, and the standard error spans probes and dequantization
    (NaN with a single dequantization draw).
    """
    try:  # log_likelihood's keyword options, with its defaults
        bound = _LOG_LIKELIHOOD.bind(model, x, **options)
    except TypeError as err:  # a keyword that neither function takes
        raise TypeError(f"bits_per_dim() {err}") from None
    bound.apply_defaults()
    return _estimate(**bound.arguments, levels=levels, repeats=repeats)


def _with_options(func, options_from) -> inspect.Signature:
    """func's signature with its **options replaced by the keyword-only parameters of options_from."""
    sig = inspect.signature(func)
    own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    options = [p for p in inspect.signature(options_from).parameters.values() if p.kind is p.KEYWORD_ONLY]
    return sig.replace(parameters=[*own, *options])


_LOG_LIKELIHOOD = inspect.signature(log_likelihood)
# help() and inspect show bits_per_dim's options by name, with log_likelihood's defaults
bits_per_dim.__signature__ = _with_options(bits_per_dim, log_likelihood)
