"""`scoresde.sample`: draw samples with any registered solver, by name, at once or in chunks of batch_size.

Its arguments are checked in `sampling_args`; `sampling_files.save_samples` streams chunks to a file.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

import solvers
from solvers.base import Callback, Step
from solvers.validate import check_bool

from . import fitted_grids
from .devices import check_device
from .guidance import CFGModel, check_labels
from .latent.model import decode_if_latent
from .sampling_args import (
    MAX_COUNT, adaptive_grid, check_callables, check_count, check_dtype, check_label_ints, check_shape, check_x_T,
    is_auto, make_grid, noise_source, resolve_auto,
)
from .sde_names import SDE_NAMES, make_sde
from .sde import SDE

__all__ = ["SDES", "Samples", "make_generators", "make_sde", "model_sampler", "sample"]

# sample(sde=...) names (scoresde.sde.SDE_TABLE) -> a factory of the process with its default schedule
SDES = {name: functools.partial(make_sde, name) for name in SDE_NAMES}


@dataclass(frozen=True)
class Samples:
    """What `sample` returns.

    x: (n, *shape) samples; nfe: model evaluations (final denoising included); ts: (N + 1,)
    float64 grid walked; seconds: wall time of the solver; settings: everything needed to
    reproduce the run (solver, its options, steps, grid, sde, seed).
    """

    x: Tensor
    nfe: int
    ts: Tensor
    seconds: float
    settings: dict = field(default_factory=dict)


def _sde_config(sde) -> dict | str:
    return sde.config() if hasattr(sde, "config") else repr(sde)


def build_solver(solver: str | solvers.Solver, solver_options: dict, sde) -> solvers.Solver:
    """The solver named `solver` built with `solver_options` (or a built one), checked against sde."""
    if isinstance(solver, str):
        built = solvers.get(solver, **solver_options)
    elif isinstance(solver, solvers.Solver):
        if solver_options:
            raise ValueError(f"solver options {sorted(solver_options)} given with a built solver; fix them when building it")
        built = solver
    else:
        raise ValueError(f"solver must be a name in {solvers.names()} or a solvers.Solver, got {solver!r}")
    built.check_supported(sde)
    return built


def run_settings(solver, steps: int, grid_name: str, ts: Tensor, sde, seed, x: Tensor, device) -> dict:
    """What reproduces a sampling run: solver and options, grid, SDE, seed, batch, dtype, device."""
    return {
        "solver": solver.name,
        "options": solver.options(),
        "steps": steps,
        "grid": grid_name,
        "t_start": float(ts[0]),
        "t_end": float(ts[-1]),
        "sde": _sde_config(sde),
        "seed": seed if not isinstance(seed, Sequence) else list(seed),
        "batch": int(x.shape[0]),
        "dtype": str(x.dtype).removeprefix("torch."),
        "device": str(device),
    }


def make_generators(
    seed: int | Sequence[int] | None, generator, device: torch.device
) -> torch.Generator | list[torch.Generator] | None:
    """One generator from an int seed, one per sample from a list of seeds, or `generator` as given."""
    seeds, gen = noise_source(seed, generator, device, None, None)
    return gen if seeds is None else [torch.Generator(device).manual_seed(s) for s in seeds]


@dataclass(frozen=True)
class _Plan:
    """A checked run of n samples; `_draw(plan, lo, hi)` draws any slice lo:hi of it."""

    model: object  # the model before guidance: labels wrap it per slice
    solver: solvers.Solver
    ts: Tensor  # (N + 1,) float64, CPU
    grid_name: str
    steps: int | None
    n: int
    shape: tuple  # D, without the batch
    x_T: Tensor | None  # (n, *D), or None: drawn from the prior
    seeds: Sequence[int] | None  # one seed per sample (a generator each, made per slice), or None
    generator: object  # without seeds: None, one torch.Generator (whole run only) or one per sample
    seed: object  # as given, for settings
    y: Tensor | None  # labels (n,) or (1,); None: no guidance
    guidance_scale: float | None
    null_label: int | None
    device: torch.device
    dtype: torch.dtype
    callback: Callback | None
    auto: bool = False  # solver="auto" chose solver, options and grid (solvers.recommend)
    fitted: dict = field(default_factory=dict)  # settings on the model's fitted grids (scoresde.fitted_grids.choose)


def model_sampler(model) -> tuple[str, int | None, str | None]:
    """(solver, steps, grid) that `sample(model)` uses when no solver is given; None: the solver's own default.

    A consistency model (one with a callable `consistency`): "consistency". A loaded student of a "pd" run: "ddim" on
    the steps and grid it was distilled to; of a "reflow" run: "ddim" in one uniform step (one Euler step on
    FlowSDE), both read from the file's recorded run config (`pd_sampling`, `reflow_sampling`). Any other model: "pc".
    """
    if callable(getattr(model, "consistency", None)):
        return "consistency", None, None
    from .training.progressive import pd_sampling  # loaded lazily, as default_model
    from .training.reflow import reflow_sampling

    distilled = pd_sampling(model) or reflow_sampling(model)
    return ("pc", None, None) if distilled is None else ("ddim", *distilled)


def _plan(model=None, *, sde=None, solver=None, steps=None, grid=None, n=None, shape=None, x_T=None, t_start=None,
          t_end=None, seed=None, generator=None, device=None, dtype=None, callback=None, y=None,
          guidance_scale=None, null_label=None, batch_size=None, **solver_options) -> _Plan:
    """Check `sample`'s arguments (the same names and defaults) and resolve model, solver, grid and noise."""
    check_x_T(x_T)
    check_dtype(dtype)
    if batch_size is not None:
        check_count("batch_size", batch_size, MAX_COUNT)
    device = None if device is None else check_device(device)
    model, image_shape, null_label, labels = _resolve_model(model, sde, y, guidance_scale, null_label, device)
    check_callables(model, callback)
    if solver is None:  # the model's own sampler, its steps and grid unless given
        solver, own_steps, own_grid = model_sampler(model)
        if not isinstance(grid, Tensor):  # a tensor of times fixes the steps
            steps = own_steps if steps is None else steps
        grid = own_grid if grid is None else grid
    auto, grid_given = is_auto(solver), grid is not None
    if auto:
        solver, solver_options, grid, steps = resolve_auto(model.sde, solver_options, grid, steps)
    solver = build_solver(solver, solver_options, model.sde)
    n, shape, device = _batch(x_T, n, shape, image_shape, labels, device)
    if labels is not None:
        check_labels(labels, n)
    fitted, fitted_settings = fitted_grids.choose(model, solver, steps, t_start, t_end, grid_given=grid_given,
                                                  labels=labels, guidance_scale=guidance_scale)
    if fitted is not None:
        ts, grid_name, steps = fitted.grid(), "fitted", fitted.steps
    elif solver.grid_ends_only and not isinstance(grid, Tensor):
        ts, grid_name, steps = adaptive_grid(solver, model.sde, grid, steps, t_start, t_end)
    else:
        ts, grid_name, steps = make_grid(solver, model.sde, grid, steps, t_start, t_end)
    seeds, gen = noise_source(seed, generator, device, n, batch_size)
    return _Plan(
        model=model, solver=solver, ts=ts, grid_name=grid_name, steps=steps, n=n, shape=shape, x_T=x_T, seeds=seeds,
        generator=gen, seed=seed, y=labels, guidance_scale=guidance_scale, null_label=null_label, device=device,
        dtype=(torch.float32 if x_T is None else x_T.dtype) if dtype is None else dtype, callback=callback, auto=auto,
        fitted=fitted_settings,
    )


def _slice_generator(plan: _Plan, lo: int, hi: int):
    """The generator(s) of samples lo:hi: one per sample from seeds or a list, else the plan's own."""
    if plan.seeds is not None:
        return [torch.Generator(plan.device).manual_seed(s) for s in plan.seeds[lo:hi]]
    if isinstance(plan.generator, (list, tuple)):
        return list(plan.generator[lo:hi])
    return plan.generator


def _draw(plan: _Plan, lo: int, hi: int, progress: bool) -> Samples:
    """Samples lo:hi of the plan (B = hi - lo): prior draw (or x_T rows), the solver, settings."""
    gen = _slice_generator(plan, lo, hi)
    model = plan.model
    if plan.y is not None:
        labels = plan.y[lo:hi] if plan.y.numel() > 1 else plan.y
        scale = 1.0 if plan.guidance_scale is None else plan.guidance_scale
        model = CFGModel(plan.model, labels, scale, null_label=plan.null_label)
    if plan.x_T is None:
        x_T = model.sde.prior_sample((hi - lo, *plan.shape), generator=gen, device=plan.device, dtype=plan.dtype)
    else:
        x_T = plan.x_T[lo:hi].to(device=plan.device, dtype=plan.dtype)
    sol, seconds = run_solver(plan.solver, model, x_T, plan.ts.to(plan.device), gen, plan.callback, progress)
    settings = run_settings(plan.solver, plan.steps, plan.grid_name, plan.ts, model.sde, plan.seed, x_T, plan.device)
    if plan.grid_name in ("custom", "fitted"):
        settings["ts"] = plan.ts.tolist()
    settings.update(plan.fitted)  # "fitted_grid" or "fitted_grid_unused" (scoresde.fitted_grids.choose)
    if plan.auto:
        settings["auto"] = True  # solver, options and grid above are what solver="auto" chose
    if plan.y is not None:
        settings["guidance"] = {
            "y": model.y.tolist(), "scale": model.scale, "null_label": plan.null_label,
            "net_calls": model.net_calls, "net_rows": model.net_rows,
        }
    out = Samples(x=sol.x, nfe=sol.nfe, ts=sol.ts.cpu(), seconds=seconds, settings=settings)
    return decode_if_latent(plan.model, out)  # a latent model (scoresde.latent.LatentModel) returns images


def _chunks(plan: _Plan, batch_size: int | None, progress: bool) -> Iterator[tuple[int, Samples]]:
    """(lo, Samples of lo:lo + B) for chunks of B <= batch_size samples (None: one chunk of all n, as
    `sample` without batch_size draws it), with a tqdm bar over samples."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=plan.n, desc=plan.solver.name, unit="sample")
    try:
        for lo in range(0, plan.n, plan.n if batch_size is None else batch_size):
            part = _draw(plan, lo, plan.n if batch_size is None else min(lo + batch_size, plan.n), progress=False)
            if bar is not None:
                bar.update(part.x.shape[0])
            yield lo, part
    finally:
        if bar is not None:
            bar.close()


@dataclass
class _Tally:
    """What the chunks of a run add up to: NFE per chunk, seconds, guidance network calls and rows."""

    first: Samples | None = None
    nfe_per_chunk: list[int] = field(default_factory=list)
    seconds: float = 0.0
    net_calls: int = 0
    net_rows: int = 0

    def add(self, part: Samples) -> None:
        self.first = part if self.first is None else self.first
        self.nfe_per_chunk.append(part.nfe)
        self.seconds += part.seconds
        guidance = part.settings.get("guidance", {})
        self.net_calls += guidance.get("net_calls", 0)
        self.net_rows += guidance.get("net_rows", 0)

    def settings(self, plan: _Plan, batch_size: int | None) -> dict:
        """The first chunk's settings for the whole run: batch n, batch_size, NFE per chunk, labels and calls."""
        s = {**self.first.settings, "batch": plan.n, "batch_size": batch_size, "nfe_per_chunk": self.nfe_per_chunk}
        if "guidance" in s:
            s["guidance"] = {**s["guidance"], "y": plan.y.tolist(), "net_calls": self.net_calls, "net_rows": self.net_rows}
        return s


def _gather(plan: _Plan, batch_size: int, progress: bool) -> Samples:
    """The whole run drawn in chunks into one (n, *D) tensor; nfe sums the chunks' (settings["nfe_per_chunk"])."""
    x, tally = None, _Tally()
    for lo, part in _chunks(plan, batch_size, progress):
        if x is None:
            x = part.x.new_empty((plan.n, *part.x.shape[1:]))
        x[lo:lo + part.x.shape[0]] = part.x
        tally.add(part)
    return Samples(x=x, nfe=sum(tally.nfe_per_chunk), ts=tally.first.ts, seconds=tally.seconds,
                   settings=tally.settings(plan, batch_size))


def sample(
    model=None,
    *,
    sde: str | SDE | None = None,
    solver: str | solvers.Solver | None = None,
    steps: int | None = None,
    grid: str | Tensor | None = None,
    n: int | None = None,
    shape: Sequence[int] | None = None,
    x_T: Tensor | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    seed: int | Sequence[int] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    y: int | Tensor | None = None,
    guidance_scale: float | None = None,
    null_label: int | None = None,
    batch_size: int | None = None,
    **solver_options,
) -> Samples:
    """Sample from `model` (the shipped default model for `sde` when None) with a named solver.

    model: a Model (e.g. `ScoreModel`, `AnalyticModel`); its `sde` is used, and `sde`, if given,
    must be the same object. solver: None (default) for the model's own sampler, `model_sampler(model)`:
    "consistency" for a consistency model, DDIM on a progressive-distillation student's recorded steps and grid,
    one DDIM (Euler) step for a reflow student (steps and grid still override), else "pc"; a name in
    `solvers.available()` (options as keywords, e.g. ``snr=0.16``), a built solver, or "auto": the best measured deterministic configuration for the
    model's SDE and `steps` evaluations (default 20), `solvers.recommend(model.sde, steps)`, which
    chooses solver, options and grid (so "auto" refuses options and grid; settings record the
    concrete choice and settings["auto"] = True).
    steps: grid steps, 1..1_000_000 (the solver's `default_steps` when None);
    grid: a name in `solvers.grids.GRIDS` (None: the model's fitted grid for this solver, options and steps when it
    carries one and guidance is off or at scale 1, settings["grid"] = "fitted", `scoresde.fitted_grids`; else the
    solver's `default_grid`); the grid runs
    from t_start (T) to t_end (the SDE's t_eps). grid may also be a decreasing (N + 1,) tensor of
    times (e.g. from `solvers.fit_grid`), which fixes steps and ends (settings["grid"] = "custom",
    settings["ts"] the times). Adaptive solvers (`grid_ends_only`: "ode" with an adaptive method,
    "dpm_solver_adaptive") choose their own steps between t_start and t_end: they refuse steps and grid
    names, and settings record grid "ends" and steps None. Give the batch as `x_T` (B, *D) or as `n`
    (default 64, or one per label when y holds several) and `shape` (D, without the batch; default: the model's `image_shape`, which
    shipped and trained models record). seed: an int in [0, 2**63 - 1], or a list of n such ints for one generator per sample
    (a sample then does not depend on the batch for fixed-grid solvers); or pass `generator`(s).
    Adaptive solvers choose one step sequence for the whole batch, so with them a sample still
    depends on its batch-mates: seeds 0..3 in a batch of 4 vs of 64 differed by up to 2.4e-4 (ode,
    dopri5) and 2.4e-2 (dpm_solver_adaptive) on the shipped digits VP model; sample one per call
    (n=1) when that must not happen. Runs under
    torch.no_grad(). device: a device of this machine (`scoresde.devices.check_device`). dtype: the dtype sampling runs in; None (default) means float32 when the prior
    is drawn and x_T's own dtype when x_T is given (an explicit dtype casts x_T to it). x_T must be a
    finite float tensor (NaN or inf raise ValueError). Returns `Samples` (x, nfe, ts, seconds, settings).

    batch_size: draw the n samples in chunks of at most batch_size, so that the solver's memory is
    bounded by batch_size, not n (x (n, *D) is still returned whole; `save_samples` streams to a file).
    An int seed s then means the per-sample seeds s, s+1, ..., s+n-1, exactly `seed=list(range(s, s + n))`,
    so that samples do not depend on batch_size (fixed-grid solvers); a list of seeds, a list of
    generators, x_T and labels y (n,) are split across chunks; one torch.Generator is refused (its draws
    would depend on batch_size). nfe sums the chunks' evaluations (settings["nfe_per_chunk"] has each);
    ts is the first chunk's; `callback` sees each chunk's steps (Step.i restarts, Step.x holds that
    chunk); progress shows one bar over samples.

    Class-conditional models: y (an int or labels (n,)) samples those classes with classifier-free
    guidance of scale guidance_scale = w (default 1: plain conditional sampling): guided
    eps = eps_uncond + w (eps_cond - eps_uncond), through `scoresde.guidance.CFGModel`, with
    null_label the model's "no class" label (K for the U-Net with K classes; default: the model's
    `null_label` attribute, which shipped and pretrained models set) so that both
    predictions come from one batched call on 2n rows. With y and no model, the shipped
    class-conditional model for `sde` is used (`default_model(sde, conditional=True)`). nfe counts guided evaluations, i.e.
    batched network calls; settings["guidance"] records the labels, the scale, and the network
    calls and rows actually used (docs/guidance.md).
    """
    plan = _plan(
        model, sde=sde, solver=solver, steps=steps, grid=grid, n=n, shape=shape, x_T=x_T, t_start=t_start,
        t_end=t_end, seed=seed, generator=generator, device=device, dtype=dtype, callback=callback, y=y,
        guidance_scale=guidance_scale, null_label=null_label, batch_size=batch_size, **solver_options,
    )
    check_bool("progress", progress)
    if batch_size is None:
        return _draw(plan, 0, plan.n, progress)
    return _gather(plan, batch_size, progress)


def _resolve_model(model, sde, y, guidance_scale, null_label, device):
    """(model, its image_shape, null_label, labels): the shipped model when None; labels y checked as
    a 1-D tensor (None without y) against the model by building the guidance wrapper once."""
    if isinstance(sde, str) and sde not in SDES:
        raise ValueError(f"unknown sde {sde!r}; choose one of {sorted(SDES)}")
    if sde is not None and not isinstance(sde, (str, SDE)):
        raise ValueError(f"sde must be None, a name in {sorted(SDES)} or a scoresde.SDE, got {sde!r}")
    if model is None:
        from .training.checkpoints import default_model  # loaded lazily: it reads package files

        model = default_model("vp" if sde is None else sde, conditional=y is not None, device=device)
    elif sde is not None and _sde_config(make_sde(sde)) != _sde_config(model.sde):
        raise ValueError(f"sde {sde!r} differs from the model's {model.sde!r}; omit sde when passing a model")
    image_shape = getattr(model, "latent_shape", getattr(model, "image_shape", None))  # what the solver draws
    if y is None:
        if guidance_scale is not None or null_label is not None:
            raise ValueError("guidance_scale and null_label need class labels y")
        return model, image_shape, null_label, None
    check_label_ints(y, null_label)
    if null_label is None:  # shipped and loaded class-conditional models record theirs
        null_label = getattr(model, "null_label", None)
    guided = CFGModel(model, y, 1.0 if guidance_scale is None else guidance_scale, null_label=null_label)
    return model, image_shape, null_label, guided.y


def _batch(x_T, n, shape, image_shape, labels, device) -> tuple[int, tuple, torch.device]:
    """(n, shape, device) of the run: from x_T, or from n (default 64, or one per label) and shape."""
    if x_T is not None:
        if n is not None or shape is not None:
            raise ValueError("give x_T or (n, shape), not both")
        return x_T.shape[0], tuple(x_T.shape[1:]), x_T.device if device is None else device
    if n is None:  # one sample per label when labels (B,) are given
        n = labels.numel() if labels is not None and labels.numel() > 1 else 64
    shape = image_shape if shape is None else shape
    if shape is None:
        raise ValueError("give x_T, or shape (excluding the batch dimension): this model records no image_shape")
    check_count("n", n, MAX_COUNT)
    return n, check_shape(shape), torch.device("cpu") if device is None else device


def run_solver(solver, model, x_T: Tensor, ts: Tensor, gen, callback, progress: bool, hook=None):
    """(Solution, seconds): the solver under torch.no_grad(), with a tqdm bar when `progress`."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ts) - 1, desc=solver.name, unit="step")

    def on_step(step: Step) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(nfe=step.nfe)
        if callback is not None:
            callback(step)

    start = time.perf_counter()
    try:
        with torch.no_grad():
            sol = solver(model, x_T, ts, generator=gen, callback=on_step, hook=hook)
    finally:
        if bar is not None:
            bar.close()
    return sol, time.perf_counter() - start


build_sampler = build_solver  # the name before version 0.2