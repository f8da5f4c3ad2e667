"""The arguments of `scoresde.sample`, checked at the boundary: each bad value raises a ValueError that
names the argument and what is valid (counts, seeds, generators, x_T, dtype, shape, a grid tensor), and the
grid a run walks (`make_grid`, `adaptive_grid`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import solvers
from solvers.base import check_grid
from solvers.grids import MAX_STEPS  # grid steps, 1..1_000_000 (the CLI's MAX_STEPS)
from solvers.recommended import AUTO, recommend

__all__ = [
    "AUTO", "AUTO_STEPS", "MAX_COUNT", "MAX_SEED", "MAX_STEPS", "adaptive_grid", "check_callables", "check_count",
    "check_dtype", "check_generator", "check_label_ints", "check_seed", "check_shape", "check_x_T", "custom_grid",
    "is_auto", "make_grid", "noise_source", "resolve_auto",
]

MAX_COUNT = 2**31 - 1  # n and batch_size: beyond this torch's sizes overflow (the CLI's MAX_INT)
AUTO_STEPS = 20  # solver="auto" without steps: 20 steps (20 evaluations)
MAX_SEED = 2**63 - 1  # seeds 0..2**63-1: torch.Generator.manual_seed takes a signed 64-bit int (the CLI's MAX_SEED)


def check_count(name: str, value, high: int) -> int:
    """value itself, unless it is not an integer in [1, high] ("n must be an integer >= 1 and <= ...")."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"{name} must be an integer >= 1 and <= {high}, got {value!r}")
    return value


def _is_seed(s) -> bool:
    return isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED


def check_seed(seed) -> None:
    """Raise ValueError unless seed is None, an int in [0, 2**63 - 1], or a list (tuple, range) of such ints."""
    if seed is None or _is_seed(seed):
        return
    if isinstance(seed, (list, tuple, range)):
        values = [seed[0], seed[-1]] if isinstance(seed, range) and len(seed) else seed  # a range: its ends
        bad = [s for s in values if not _is_seed(s)]
        if bad:
            raise ValueError(f"seed must be an int in [0, 2**63 - 1] or a list of them; the list holds {bad[0]!r}")
        return
    raise ValueError(f"seed must be an int in [0, 2**63 - 1] or a list of them, got {seed!r}")


def check_generator(generator) -> None:
    """Raise ValueError unless generator is None, a torch.Generator or a list (tuple) of them."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
        return
    raise ValueError(f"generator must be None, a torch.Generator or a list of them (one per sample), got {generator!r}")


def consecutive_seeds(seed: int, n: int, context: str = "") -> range:
    """The per-sample seeds seed, seed+1, ..., seed+n-1 that an int seed stands for (sample i gets seed + i,
    so a sample's draw does not depend on the batch it sits in); ValueError past 2**63 - 1."""
    if seed + n - 1 > MAX_SEED:
        raise ValueError(f"seed: {context}seed {seed} gives samples the seeds {seed}..{seed + n - 1}, "
                         f"past 2**63 - 1; choose seed <= {MAX_SEED - n + 1}")
    return range(seed, seed + n)


def noise_source(seed, generator, device, n: int | None, batch_size: int | None) -> tuple[Sequence[int] | None, object]:
    """(per-sample seeds or None, generator(s)) for n samples (None: not checked); with batch_size an
    int seed s means the per-sample seeds s..s+n-1."""
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    check_seed(seed)
    check_generator(generator)
    if isinstance(seed, int) and batch_size is not None:
        seed = consecutive_seeds(seed, n, "with batch_size, ")
    per_sample = seed if seed is not None and not isinstance(seed, int) else generator
    if n is not None and isinstance(per_sample, (list, tuple, range)) and len(per_sample) != n:
        what = "seed" if seed is not None else "generator"
        raise ValueError(f"{what}: a list needs one entry per sample, got {len(per_sample)} for {n} samples")
    if isinstance(generator, torch.Generator) and batch_size is not None:
        raise ValueError("generator: one torch.Generator with batch_size would make samples depend on batch_size; "
                         "pass seed (an int s means per-sample seeds s, s+1, ...) or one generator per sample")
    if seed is None:
        return None, generator
    return (None, torch.Generator(device).manual_seed(seed)) if isinstance(seed, int) else (seed, None)


def check_x_T(x_T) -> None:
    """Raise ValueError unless x_T is None or a finite float tensor (B, *D), B >= 1, holding data (one host read)."""
    if x_T is None:
        return
    if not isinstance(x_T, Tensor):
        raise ValueError(f"x_T must be a float tensor of shape (B, *D), got {type(x_T).__name__}")
    if x_T.ndim < 1 or x_T.shape[0] < 1 or not x_T.is_floating_point():
        raise ValueError(f"x_T must be a float tensor of shape (B, *D) with B >= 1, got a {x_T.dtype} tensor of "
                         f"shape {tuple(x_T.shape)}")
    if x_T.device.type == "meta":
        raise ValueError("x_T is on the meta device (shapes without data); pass a tensor with values")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T contains NaN or infinite values")


def check_dtype(dtype) -> None:
    """Raise ValueError unless dtype is None or a floating torch.dtype."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be None or a floating torch.dtype (e.g. torch.float64), got {dtype!r}")


def check_shape(shape) -> tuple[int, ...]:
    """shape (D, without the batch) as a tuple of positive ints, else ValueError."""
    ok = isinstance(shape, (list, tuple, torch.Size))
    ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_COUNT for d in shape)
    if not ok:
        raise ValueError(f"shape must be a tuple of ints >= 1 (the sample shape without the batch), got {shape!r}")
    return tuple(shape)


def custom_grid(grid: Tensor, sde) -> Tensor:
    """A grid tensor as a float64 CPU copy, checked: 1-d, float, strictly decreasing, inside [0, T]."""
    if grid.device.type == "meta" or not grid.is_floating_point():
        raise ValueError(f"grid must be a decreasing 1-d float tensor of times, got a {grid.dtype} tensor on {grid.device}")
    ts = grid.detach().to(device="cpu", dtype=torch.float64)
    try:
        check_grid(ts, sde)
    except ValueError as e:
        raise ValueError(f"grid: {e}") from None
    return ts


def check_label_ints(y, null_label) -> None:
    """Raise ValueError for an int label y or null_label outside [0, 2**63 - 1] (torch's int64), before
    it becomes a tensor; the other label checks are `scoresde.guidance.check_labels`'s."""
    for name, value in (("y", y), ("null_label", null_label)):
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_SEED:
            raise ValueError(f"{name} must be a label in [0, 2**63 - 1], got {value!r}")


def check_callables(model, callback) -> None:
    """Raise ValueError unless model has an `sde` and callable eps / x0 / score / v (the Model protocol) and
    callback is None or callable."""
    lacks = [k for k in ("eps", "x0", "score", "v") if not callable(getattr(model, k, None))]
    if not hasattr(model, "sde") or lacks:
        raise ValueError(f"model must be a Model (an `sde` and methods eps, x0, score, v), got {type(model).__name__}")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be None or a function of a solvers.Step, got {callback!r}")


def is_auto(solver) -> bool:
    """True for solver="auto" (a name, not a built solver)."""
    return isinstance(solver, str) and solver == AUTO


def resolve_auto(sde, solver_options: dict, grid, steps) -> tuple[str, dict, str, int]:
    """solver="auto": (solver name, options, grid name, steps) that `solvers.recommend(sde, steps)` chooses
    (steps default AUTO_STEPS; every recommended solver costs one evaluation per step). "auto" chooses the
    options and the grid itself, so solver options and a grid are refused: name a solver to set them."""
    if solver_options:
        raise ValueError(f"solver='auto' chooses the solver's options itself, got options {sorted(solver_options)}; "
                         "name a solver (solvers.recommend(sde, steps) shows the choice) to set them")
    if grid is not None:
        given = grid if isinstance(grid, str) else "a tensor"
        raise ValueError(f"solver='auto' chooses the grid itself, got grid={given!r}; omit grid or name a solver")
    steps = check_count("steps", AUTO_STEPS if steps is None else steps, MAX_STEPS)
    name, options, grid_name = recommend(sde, steps)
    return name, options, grid_name, steps


def make_grid(solver, sde, grid, steps, t_start=None, t_end=None) -> tuple[Tensor, str, int]:
    """(ts, grid name, steps): a grid tensor as given ("custom"), or the grid `grid` (the solver's
    default_grid when None) of `steps` steps (its default_steps when None) from t_start to t_end."""
    if isinstance(grid, Tensor):
        # a grid of times (e.g. from solvers.fit_grid) brings its own steps and ends
        if steps is not None or t_start is not None or t_end is not None:
            raise ValueError("a grid tensor fixes steps, t_start and t_end itself; omit them")
        return custom_grid(grid, sde), "custom", grid.numel() - 1
    if grid is not None and not isinstance(grid, str):
        raise ValueError(f"grid must be a name in {sorted(solvers.grids.GRIDS)} or a decreasing 1-d tensor of "
                         f"times, got {type(grid).__name__} {grid!r}")
    steps = check_count("steps", solver.default_steps if steps is None else steps, MAX_STEPS)
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
