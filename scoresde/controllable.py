"""Inpainting and colorization by replacement (Song et al. 2021, arXiv:2011.13456, App. I).

Known coordinates are conditioned on by replacing them, at every grid time t_i (the first
included), with a fresh sample of their forward marginal,

    x_t[known] <- alpha(t) x_known + sigma(t) z,    z ~ N(0, I) drawn anew at every step,

and letting an unchanged base solver move the whole state one grid interval (a predictor–corrector
solver also replaces after its predictor and after each corrector step). The output carries the
known values exactly. Colorization is the same in the orthonormal colour basis
z = COLOR_BASIS x (per pixel, over the channel dimension 1), where the gray channel is known:
the basis is orthogonal, so z_t = alpha z_0 + sigma (COLOR_BASIS eps) has the same Gaussian noise
law and replacement there is exact bookkeeping.

Replacement approximates the conditional law: the known part at time t is drawn from its forward
law given the known data alone, independently of the unknown part's trajectory, whereas the exact
conditional process would carry the two jointly; the unknown part feels the known values only
through the score of p_t(x). The error is measured on a correlated Gaussian in docs/guidance.md
(under-conditioned results); corrector (Langevin) steps reduce it.

The replacement is the solver's between-steps hook (`solvers.Solver.__call__(..., hook=...)`): it
runs at every grid time, and solvers that evaluate the model again at a step's end time (the PC and
Langevin correctors, UniPC's corrector, Heun's second stage) pass that state through it first, so
every solver keeps its full order: multistep methods (DPM-Solver++ 2M/3M, UniPC) carry their stored
predictions across steps, since each was made at a state whose known part was set by the hook.
With `noise="fixed"` one z is drawn once and the known part follows the smooth path
alpha(t) known + sigma(t) z; the replacement dynamics are then an ODE in the unknown part, which a
deterministic solver integrates at its order (tests/scoresde/test_guidance.py measures UniPC-3 and
DPM-Solver++(3M)). Singlestep methods (DPM-Solver-2/3, DPM-Solver++ 2S/3S) evaluate at intermediate
times inside a step that the hook does not see, and stay first order under replacement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

import solvers
from solvers.protocol import GeneratorArg, bcast, randn_like, time_like
from solvers.validate import check_name

from .sampling import Samples, build_solver, make_generators, make_grid, run_settings, run_solver
from .sampling_args import is_auto, resolve_auto

__all__ = ["COLOR_BASIS", "colorize", "from_basis", "inpaint", "Replacement", "replace_known", "to_basis"]

# Orthonormal colour basis, rows: gray (R + G + B) / sqrt(3) and two chroma directions.
COLOR_BASIS = torch.tensor(
    [
        [1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
        [-2 / math.sqrt(6), 1 / math.sqrt(6), 1 / math.sqrt(6)],
        [0.0, 1 / math.sqrt(2), -1 / math.sqrt(2)],
    ],
    dtype=torch.float64,
)


def to_basis(x: Tensor, basis: Tensor) -> Tensor:
    """z[:, i] = sum_j basis[i, j] x[:, j]: mix the channels (dim 1) of x (B, C, *S); basis (C, C)."""
    return torch.einsum("ij,bj...->bi...", basis.to(x), x)


def from_basis(z: Tensor, basis: Tensor) -> Tensor:
    """Inverse of `to_basis` for an orthogonal basis: x = basis^T z over dim 1."""
    return torch.einsum("ji,bj...->bi...", basis.to(z), z)


def replace_known(
    x: Tensor, known: Tensor, mask: Tensor, alpha: Tensor, sigma: Tensor, z: Tensor, basis: Tensor | None = None
) -> Tensor:
    """Set the known coordinates of x_t to alpha known + sigma z (Song et al. 2021, App. I).

    x, known, z (B, *D); mask bool, broadcastable to x, True where known; alpha, sigma (B,) or (1,).
    With `basis` (C, C) orthogonal, known, mask and z live in the coordinates to_basis(x, basis).
    """
    if basis is not None:
        x = to_basis(x, basis)
    # Song et al. 2021, App. I: x_t(known) ~ p_t(x_t | x_known) = N(alpha x_known, sigma^2 I)
    x = torch.where(mask, bcast(alpha, x) * known + bcast(sigma, x) * z, x)
    return x if basis is None else from_basis(x, basis)


def _check_finite(name: str, x: Tensor, where: str = "") -> None:
    """ValueError if x holds NaN or inf: one host read on any device (a GPU tensor is checked too)."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (shapes without data); pass a tensor with values")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values{where}")


def _check_problem(known: Tensor, mask: Tensor, basis: Tensor | None) -> tuple[Tensor, Tensor | None]:
    if not isinstance(known, Tensor) or known.ndim < 2 or not known.is_floating_point():
        got = f"shape {tuple(known.shape)}, dtype {known.dtype}" if isinstance(known, Tensor) else type(known).__name__
        raise ValueError(f"known must be a float tensor of shape (B, *D), got {got}")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = f"{mask.dtype} tensor" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor (True where known), got {got}")
    if mask.shape not in (known.shape, known.shape[1:], (1, *known.shape[1:])):
        raise ValueError(
            f"mask must have shape {tuple(known.shape)}, {tuple(known.shape[1:])} or (1, "
            f"{', '.join(map(str, known.shape[1:]))}) to match known, got {tuple(mask.shape)}"
        )
    # only the known entries are read: NaN may mark the others
    _check_finite("known", known.masked_fill(~mask.to(known.device), 0), " where mask is True")
    if basis is not None:
        C = known.shape[1]
        try:
            basis = torch.as_tensor(basis, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"basis must be a ({C}, {C}) matrix acting on the {C} channels (dim 1), "
                             f"got {type(basis).__name__}") from None
        if basis.shape != (C, C):
            raise ValueError(f"basis must be a ({C}, {C}) matrix acting on the {C} channels (dim 1), got {tuple(basis.shape)}")
        if not torch.allclose(basis @ basis.T, torch.eye(C, dtype=torch.float64), atol=1e-6):
            raise ValueError("basis must be orthogonal (basis @ basis.T = I): replacement needs the noise to stay N(0, I)")
    return mask.to(known.device), basis


def _check_run(known: Tensor, seed, callback) -> None:
    """A list of seeds has one per sample; a callback is callable."""
    if isinstance(seed, Sequence) and not isinstance(seed, str) and len(seed) != known.shape[0]:
        raise ValueError(f"seed: a list needs one seed per sample, got {len(seed)} for the {known.shape[0]} rows of known")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be None or a function of each step, got {callback!r}"[:300])


def _check_x_T(x_T, known: Tensor) -> None:
    if not isinstance(x_T, Tensor) or not x_T.is_floating_point() or x_T.shape != known.shape:
        got = f"a {x_T.dtype} tensor of shape {tuple(x_T.shape)}" if isinstance(x_T, Tensor) else type(x_T).__name__
        raise ValueError(f"x_T must have the shape of known {tuple(known.shape)} and a float dtype, got {got}")
    _check_finite("x_T", x_T)


def inpaint(
    model,
    known: Tensor,
    mask: Tensor,
    *,
    solver: str | solvers.Solver = "pc",
    steps: int | None = None,
    grid: str | None = None,
    basis: Tensor | None = None,
    x_T: Tensor | None = None,
    seed: int | Sequence[int] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: solvers.base.Callback | None = None,
    noise: str = "fresh",
    **solver_options,
) -> Samples:
    """Sample x given its known coordinates by replacement (Song et al. 2021, App. I).

    known (B, *D): the known values (read where mask is True; B samples are drawn, in known's
    dtype and on its device); mask: bool of shape (B, *D), (*D) or (1, *D), True where known; basis:
    optional orthogonal (C, C) matrix, in which case known and mask are in the coordinates
    to_basis(x, basis) (see `colorize`). solver, steps, grid, seed, generator and solver options as
    in `scoresde.sample`, including solver="auto" (its recommended grid; a model's fitted grids are for
    unconditional sampling and are not used here). At every grid time (the first included) the known part is replaced by
    alpha(t) known + sigma(t) z (the solver's hook; see the module docstring), with z ~ N(0, I)
    drawn anew each time from the generator (noise="fresh", Song et al.) or drawn once
    (noise="fixed": a smooth path for the known part, so ODE solvers keep their order); the final
    state takes the known values exactly (after the solver's denoising step, if it has one). nfe
    counts model evaluations as in `sample`. Runs under torch.no_grad(). Returns `Samples`.
    """
    mask, basis = _check_problem(known, mask, basis)
    _check_run(known, seed, callback)
    sde = model.sde
    auto = is_auto(solver)
    if auto:  # solvers.recommend(sde, steps) chooses solver, options and grid, as in `sample`
        solver, solver_options, grid, steps = resolve_auto(sde, solver_options, grid, steps)
    solver = build_solver(solver, solver_options, sde)
    device = known.device
    gen = make_generators(seed, generator, device)
    ts, grid_name, steps = make_grid(solver, sde, grid, steps)
    if x_T is None:
        x = sde.prior_sample(known.shape, generator=gen, device=device, dtype=known.dtype)
    else:
        _check_x_T(x_T, known)
        x = x_T.to(device=device, dtype=known.dtype)
    hook = Replacement(known, mask, sde, basis=basis, generator=gen, noise=noise)
    sol, seconds = run_solver(solver, model, x, ts.to(device), gen, callback, False, hook)
    one = torch.ones(1, dtype=known.dtype, device=device)
    x = replace_known(sol.x, known, mask, one, 0 * one, torch.zeros_like(known), basis)  # known part exactly
    settings = run_settings(solver, steps, grid_name, ts, sde, seed, known, device)
    settings["conditioning"] = "replacement" if basis is None else "replacement in a channel basis"
    settings["replacement_noise"] = noise
    if auto:
        settings["auto"] = True
    return Samples(x=x, nfe=sol.nfe, ts=ts.cpu(), seconds=seconds, settings=settings)


NOISES = ("fresh", "fixed")


class Replacement:
    """The replacement hook x_t[known] <- alpha(t) known + sigma(t) z (Song et al. 2021, App. I).

    known (B, *D), mask (bool, broadcastable), basis as in `replace_known`. noise="fresh" draws z
    from `generator` at every call; "fixed" draws it once, here, so the known part follows the smooth
    path alpha(t) known + sigma(t) z. Called by a solver as hook(x, t) with t a 0-d grid time.
    """

    def __init__(self, known: Tensor, mask: Tensor, sde, *, basis: Tensor | None = None,
                 generator: GeneratorArg = None, noise: str = "fresh"):
        check_name("noise", noise, NOISES)
        self.known, self.mask, self.sde, self.basis, self.generator = known, mask, sde, basis, generator
        self.z = randn_like(known, generator) if noise == "fixed" else None

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        t = time_like(t, x)
        z = randn_like(self.known, self.generator) if self.z is None else self.z
        return replace_known(x, self.known, self.mask, self.sde.alpha(t), self.sde.sigma(t), z, self.basis)


def colorize(model, gray: Tensor, **options) -> Samples:
    """Colour images given their gray levels, by replacement in the orthonormal colour basis.

    gray (B, 1, *S): the channel mean (R + G + B) / 3 in data units; model: data (B, 3, *S). The
    known coordinate is the gray channel of to_basis(x, COLOR_BASIS), sqrt(3) gray. Options as in
    `inpaint` (solver, steps, grid, seed, generator, callback, solver options).
    """
    if not isinstance(gray, Tensor) or gray.ndim < 2 or gray.shape[1] != 1 or not gray.is_floating_point():
        got = tuple(gray.shape) if isinstance(gray, Tensor) else type(gray).__name__
        raise ValueError(f"gray must be a float tensor of shape (B, 1, *S), got {got}")
    _check_finite("gray", gray)
    if "basis" in options:
        raise ValueError("colorize fixes basis=COLOR_BASIS; call inpaint for another basis")
    known = torch.cat([math.sqrt(3) * gray, torch.zeros_like(gray), torch.zeros_like(gray)], dim=1)
    mask = torch.zeros(known.shape[1:], dtype=torch.bool, device=gray.device)
    mask[0] = True
    return inpaint(model, known, mask, basis=COLOR_BASIS, **options)
