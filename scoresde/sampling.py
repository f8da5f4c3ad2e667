"""`scoresde.sample`: draw samples with any registered solver, by name."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

import solvers
from solvers.base import Callback, Step
from solvers.validate import check_int

from .guidance import CFGModel, check_labels
from .sde_names import SDE_NAMES, make_sde
from .sde import SDE

__all__ = ["SDES", "Samples", "make_generators", "make_sde", "sample"]

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
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if seed is None:
        return generator
    if isinstance(seed, bool):
        raise ValueError(f"seed must be an int or a list of ints, got {seed!r}")
    if isinstance(seed, int):
        return torch.Generator(device).manual_seed(seed)
    seeds = list(seed)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seed must be an int or a list of ints, got {seed!r}")
    return [torch.Generator(device).manual_seed(s) for s in seeds]


def sample(
    model=None,
    *,
    sde: str | SDE | None = None,
    solver: str | solvers.Solver = "pc",
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
    **solver_options,
) -> Samples:
    """Sample from `model` (the shipped default model for `sde` when None) with a named solver.

    model: a Model (e.g. `ScoreModel`, `AnalyticModel`); its `sde` is used, and `sde`, if given,
    must be the same object. solver: a name in `solvers.available()` (options as keywords, e.g.
    ``snr=0.16``) or a built solver. steps: grid steps (the solver's `default_steps` when None);
    grid: a name in `solvers.grids.GRIDS` (the solver's `default_grid` when None); the grid runs
    from t_start (T) to t_end (the SDE's t_eps). grid may also be a decreasing (N + 1,) tensor of
    times (e.g. from `solvers.fit_grid`), which fixes steps and ends (settings["grid"] = "custom",
    settings["ts"] the times). Adaptive solvers (`grid_ends_only`: "ode" with an adaptive method,
    "dpm_solver_adaptive") choose their own steps between t_start and t_end: they refuse steps and grid
    names, and settings record grid "ends" and steps None. Give the batch as `x_T` (B, *D) or as `n`
    (default 64, or one per label when y holds several) and `shape` (D, without the batch; default: the model's `image_shape`, which
    shipped and trained models record). seed: an int, or a list of n ints for one generator per sample
    (a sample then does not depend on the batch for fixed-grid solvers); or pass `generator`(s).
    Adaptive solvers choose one step sequence for the whole batch, so with them a sample still
    depends on its batch-mates: seeds 0..3 in a batch of 4 vs of 64 differed by up to 2.4e-4 (ode,
    dopri5) and 2.4e-2 (dpm_solver_adaptive) on the shipped digits VP model; sample one per call
    (n=1) when that must not happen. Runs under
    torch.no_grad(). dtype: the dtype sampling runs in; None (default) means float32 when the prior
    is drawn and x_T's own dtype when x_T is given (an explicit dtype casts x_T to it). x_T must be a
    finite float tensor (NaN or inf raise ValueError). Returns `Samples` (x, nfe, ts, seconds, settings).

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
    _check_x_T(x_T)
    _check_dtype(dtype)
    model, image_shape, null_label = _resolve_model(model, sde, y, guidance_scale, null_label, device)
    process = model.sde
    solver = build_solver(solver, solver_options, process)
    n, shape, device = _batch(model, x_T, n, shape, image_shape, y, device)
    gen = make_generators(seed, generator, device)
    if y is not None:
        check_labels(model.y, n if x_T is None else x_T.shape[0])
    if solver.grid_ends_only and not isinstance(grid, Tensor):
        ts, grid_name, steps = adaptive_grid(solver, process, grid, steps, t_start, t_end)
    else:
        ts, grid_name, steps = make_grid(solver, process, grid, steps, t_start, t_end)
    if x_T is None:
        x_T = process.prior_sample((n, *shape), generator=gen, device=device, dtype=torch.float32 if dtype is None else dtype)
    else:
        x_T = x_T.to(device=device, dtype=x_T.dtype if dtype is None else dtype)

    sol, seconds = run_solver(solver, model, x_T, ts.to(device), gen, callback, progress)
    settings = run_settings(solver, steps, grid_name, ts, process, seed, x_T, device)
    if grid_name == "custom":
        settings["ts"] = ts.tolist()
    if y is not None:
        settings["guidance"] = {
            "y": model.y.tolist(), "scale": model.scale, "null_label": null_label,
            "net_calls": model.net_calls, "net_rows": model.net_rows,
        }
    return Samples(x=sol.x, nfe=sol.nfe, ts=sol.ts.cpu(), seconds=seconds, settings=settings)


def _check_x_T(x_T) -> None:
    """Raise ValueError unless x_T is None or a finite float tensor (B, *D) (one host read, at the boundary)."""
    if x_T is None:
        return
    if not isinstance(x_T, Tensor) or x_T.ndim < 1 or not x_T.is_floating_point():
        shape = tuple(x_T.shape) if isinstance(x_T, Tensor) else type(x_T).__name__
        raise ValueError(f"x_T must be a float tensor of shape (B, *D), got {shape}")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T contains NaN or infinite values")


def _check_dtype(dtype) -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be None or a floating torch.dtype (e.g. torch.float64), got {dtype!r}")


def _resolve_model(model, sde, y, guidance_scale, null_label, device):
    """(model, its image_shape, null_label): the shipped model when None, wrapped in CFGModel for labels y."""
    if isinstance(sde, str) and sde not in SDES:
        raise ValueError(f"unknown sde {sde!r}; choose one of {sorted(SDES)}")
    if model is None:
        from .training.checkpoints import default_model  # loaded lazily: it reads package files

        model = default_model("vp" if sde is None else sde, conditional=y is not None, device=device)
    elif sde is not None and _sde_config(make_sde(sde)) != _sde_config(model.sde):
        raise ValueError(f"sde {sde!r} differs from the model's {model.sde!r}; omit sde when passing a model")
    image_shape = getattr(model, "image_shape", None)  # before any guidance wrapper
    if y is not None:
        if null_label is None:  # shipped and loaded class-conditional models record theirs
            null_label = getattr(model, "null_label", None)
        model = CFGModel(model, y, 1.0 if guidance_scale is None else guidance_scale, null_label=null_label)
    elif guidance_scale is not None or null_label is not None:
        raise ValueError("guidance_scale and null_label need class labels y")
    return model, image_shape, null_label


def _batch(model, x_T, n, shape, image_shape, y, device) -> tuple[int | None, tuple | None, torch.device]:
    """(n, shape, device) of the batch: from x_T, or from n (default 64, or one per label) and shape."""
    if x_T is not None:
        if n is not None or shape is not None:
            raise ValueError("give x_T or (n, shape), not both")
        return None, None, x_T.device if device is None else torch.device(device)
    if n is None:  # one sample per label when labels (B,) are given
        n = model.y.numel() if y is not None and model.y.numel() > 1 else 64
    shape = image_shape if shape is None else shape
    if shape is None:
        raise ValueError("give x_T, or shape (excluding the batch dimension): this model records no image_shape")
    check_int("n", n, 1)
    return n, shape, torch.device("cpu") if device is None else torch.device(device)


def make_grid(solver, sde, grid, steps, t_start=None, t_end=None) -> tuple[Tensor, str, int]:
    """(ts, grid name, steps): a grid tensor as given ("custom"), or the grid `grid` (the solver's
    default_grid when None) of `steps` steps (its default_steps when None) from t_start to t_end."""
    if isinstance(grid, Tensor):
        # a grid of times (e.g. from solvers.fit_grid) brings its own steps and ends
        if steps is not None or t_start is not None or t_end is not None:
            raise ValueError("a grid tensor fixes steps, t_start and t_end itself; omit them")
        ts = grid.detach().to(device="cpu", dtype=torch.float64)
        return ts, "custom", ts.numel() - 1
    steps = solver.default_steps if steps is None else steps
    grid_name = solver.default_grid if grid is None else grid
    return solvers.grids.make(grid_name, sde, steps, t_start=t_start, t_end=t_end), grid_name, steps


def adaptive_grid(solver, sde, grid, steps, t_start=None, t_end=None) -> tuple[Tensor, str, None]:
    """(ts, "ends", None): the (2,) grid [t_start, t_end] of an adaptive solver (`grid_ends_only`), which
    chooses its own steps; an explicit steps or grid name would be ignored, so it is refused."""
    if steps is not None or grid is not None:
        raise ValueError(
            f"solver {solver.name!r} is adaptive: it chooses its own steps and uses only the grid's ends "
            f"t_start and t_end; omit steps and grid (got steps={steps!r}, grid={grid!r})"
        )
    return solvers.grids.uniform_t(sde, 1, t_start=t_start, t_end=t_end), "ends", None


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
