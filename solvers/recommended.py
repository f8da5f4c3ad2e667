"""The recommended deterministic configuration for an SDE and an evaluation budget, from measurements.

    name, options, grid = solvers.recommend(model.sde, 10)
    solvers.get(name, **options)(model, x_T, solvers.grids.make(grid, model.sde, 10))   # 10 evaluations

`scoresde.sample(solver="auto", steps=N)` resolves to the same choice. Every recommended solver costs
one evaluation per step, so N steps use N evaluations (NFE).

Where the table comes from: benchmarks/solvers.py, the analytic mixture in d = 64 (8 components,
256 start states of seed 0), RMS and median per-sample endpoint error against the exact
probability-flow endpoint, no fitted grids, run on 2026-12-02 (torch 2.13 CPU, float64):

    python benchmarks/solvers.py --schedules vp ddpm --solvers dpm_solver++ unipc dpm_solver_multistep deis ipndm \
        --grids uniform_lambda quadratic_t uniform_t karras --nfe 5 8 10 15 20 --no-fit --median --ratios
    python benchmarks/solvers.py --schedules vp --solvers dpm_solver++ unipc ipndm \
        --grids uniform_lambda quadratic_t --nfe 6 12 18 25 50 --no-fit --median --ratios
    python benchmarks/solvers.py --schedules subvp flow vp_cosine ve --solvers dpm_solver++ unipc ipndm \
        dpm_solver_multistep deis --match "ipndm(order=2)" "ipndm(order=3)" \
        "unipc(order=2,variant=bh1,prediction=eps)" "unipc(order=3,variant=bh1,prediction=eps)" \
        "dpm_solver_multistep(order=3)" "deis(order=3)" \
        --grids uniform_lambda quadratic_t uniform_t karras --nfe 5 8 10 15 20 --no-fit --median --ratios

A row was chosen for being best or near best in both RMS and median, on both VP schedules at once for
"vp". docs/solvers.md ("Recommended configurations") has the tables and the check on the shipped digits
VP, sub-VP and VE models (classifier Fréchet distance; `benchmarks/solvers.py --schedules none --digits N`).
The discrete cosine DDPM schedule was not measured (the benchmark's reference solver fails on it); it
uses the "vp_cosine" rows, whose grids are spaced in log-SNR.
"""

from __future__ import annotations

from typing import NamedTuple

from .grids import MAX_STEPS
from .protocol import SDE
from .validate import check_int

__all__ = ["AUTO", "RECOMMENDED", "Recommendation", "family", "recommend"]

AUTO = "auto"  # the name `scoresde.sample(solver=...)` and the CLI's --solver resolve through `recommend`


class Recommendation(NamedTuple):
    """A solver name in `solvers.names()`, its options (a fresh dict) and a grid name in `solvers.grids.GRIDS`."""

    solver: str
    options: dict
    grid: str


# family (`family(sde)`) -> rows (highest NFE of the row, solver, options, grid) by increasing NFE; the last row
# holds above. Comments: RMS / median per-sample error as ratios to DPM-Solver++(3M) on uniform log-SNR.
# "vp": measured on the linear VP schedule and the discrete DDPM schedule, which agree within 0.02 (ddpm in brackets):
#   iPNDM-2, quadratic t:          NFE 5 0.70/0.30 (0.69/0.30)
#   iPNDM-3, quadratic t:          NFE 6 0.46/0.14, 8 0.46/0.17 (0.46/0.16)
#   UniPC-2 bh1 eps, quadratic t:  NFE 10 0.13/0.13 (0.13/0.12), 12 0.10/0.17, 15 0.29/0.25 (0.28/0.25), 18 0.30/0.32
#   UniPC-3 bh1 eps, quadratic t:  NFE 20 0.43/0.18 (0.43/0.17), 25 0.27/0.19, 50 0.16/0.20
#   (iPNDM-3, quadratic t, at 10: 0.12/0.10 too; UniPC-2 was chosen there for the digits model and a second
#   analytic mixture, docs/solvers.md.) UniPC-3 eps on quadratic t is unstable at 10-15 evaluations (1.4-1.9x the
#   baseline's RMS), like every third-order multistep update on grids not uniform in log-SNR.
# "vp_cosine" (the cosine schedule, continuous; the discrete cosine schedule was not measured): quadratic t is
#   bad here (5-8x the baseline at 15-20), so log-SNR-spaced grids:
#   iPNDM-3, uniform log-SNR:      NFE 5 0.90/0.35, 8 0.68/0.19, 10 0.73/0.12
#   DPM-Solver-3M (eps), Karras:   NFE 15 0.57/0.21, 20 0.70/0.35 (nothing measured reached 0.5x at 15-20)
# "subvp":  iPNDM-2, quadratic t: NFE 5 0.21/0.07; iPNDM-3, quadratic t: 8 0.20/0.07, 10 0.40/0.06, 15 0.10/0.10,
#   20 0.09/0.16
# "flow":   iPNDM-3, uniform t:   NFE 5 0.45/0.53, 8 0.19/0.11, 10 0.12/0.11, 15 0.10/0.09, 20 0.24/0.11
# "ve" (log-SNR is linear in t: uniform log-SNR = uniform t; nothing measured reached 0.5x in RMS):
#   iPNDM-3, uniform log-SNR:      NFE 5 0.81/0.24, 8 0.66/0.16, 10 0.84/0.14
#   DPM-Solver-3M (eps), uniform log-SNR (= DEIS-3 here): NFE 15 0.67/0.26, 20 0.80/0.39
# Above 20 evaluations (50 for "vp") nothing was measured: the last row carries on.
_UNIPC_EPS = {"variant": "bh1", "prediction": "eps"}
RECOMMENDED: dict[str, tuple[tuple[int, str, dict, str], ...]] = {
    "vp": (
        (5, "ipndm", {"order": 2}, "quadratic_t"),
        (9, "ipndm", {"order": 3}, "quadratic_t"),
        (19, "unipc", {"order": 2, **_UNIPC_EPS}, "quadratic_t"),
        (MAX_STEPS, "unipc", {"order": 3, **_UNIPC_EPS}, "quadratic_t"),
    ),
    "vp_cosine": (
        (12, "ipndm", {"order": 3}, "uniform_lambda"),
        (MAX_STEPS, "dpm_solver_multistep", {"order": 3}, "karras"),
    ),
    "subvp": (
        (5, "ipndm", {"order": 2}, "quadratic_t"),
        (MAX_STEPS, "ipndm", {"order": 3}, "quadratic_t"),
    ),
    "flow": ((MAX_STEPS, "ipndm", {"order": 3}, "uniform_t"),),
    "ve": (
        (12, "ipndm", {"order": 3}, "uniform_lambda"),
        (MAX_STEPS, "dpm_solver_multistep", {"order": 3}, "uniform_lambda"),
    ),
}


def family(sde: SDE) -> str | None:
    """The table key of `sde`: its `kind` ("vp", "subvp", "ve", "flow"), or "vp_cosine" for a VP process whose
    `schedule` attribute is "cosine" (scoresde's VPSDE and DiscreteVPSDE record their schedule there)."""
    kind = getattr(sde, "kind", None)
    if kind == "vp" and getattr(sde, "schedule", None) == "cosine":
        return "vp_cosine"
    return kind


def recommend(sde: SDE, nfe: int) -> Recommendation:
    """The recommended deterministic (solver, options, grid) for `sde` with a budget of `nfe` evaluations.

    sde: any SDE of the protocol (`family(sde)` selects the rows); nfe: 1..MAX_STEPS, which is also the grid's
    step count (every recommended solver costs one evaluation per step).
    """
    check_int("nfe", nfe, 1, MAX_STEPS)
    key = family(sde)
    if key not in RECOMMENDED:
        raise ValueError(f"no recommendation for an SDE of kind {getattr(sde, 'kind', None)!r}; known kinds: "
                         f"{sorted({'vp', 'subvp', 've', 'flow'})}")
    for high, name, options, grid in RECOMMENDED[key]:
        if nfe <= high:
            return Recommendation(name, dict(options), grid)
    raise AssertionError("unreachable: every family's last row holds up to MAX_STEPS")
