"""Endpoint error of the deterministic samplers against an exact-model reference (prints tables; not a test).

Problem: the analytic Gaussian mixture in d = 64 (8 components, equal weights, means uniform in
[-1, 1], isotropic stds spread over [0.05, 0.3]), 256 start states drawn from the prior, integrated
from t = 1 to t = 1e-3 under
  vp:   VPSDE linear (beta 0.1..20),
  ddpm: DiscreteVPSDE, linear betas 1e-4..0.02 over 1000 steps (t_eps = 1/1000).
Reference endpoint: the probability-flow ODE written as d(x / sigma)/dlambda = e^lambda x0(x, t(lambda))
(the exact change of variables behind DPM-Solver++; smooth in lambda even for the piecewise discrete
schedule: for any VP process alpha and sigma are functions of lambda alone, so both schedules give
the same ODE in lambda and differ only in its end points), integrated by torchdiffeq's dopri8
(Dormand-Prince 8(5,3)) at rtol = atol = 1e-10 in float64. `--check-reference` compares it with
itself at 1e-12 and (vp) with dopri5 on dx/dt in t; measured on vp: 2.0e-7 and 2.1e-7 per sample at
most, far below the errors in the tables except the best ones at NFE 100.

Findings (NFE 10 / 15 / 20, RMS relative to DPM-Solver++(3M) on uniform lambda; vp, ddpm alike): a
few of the 256 start states, whose trajectories switch mixture components late, dominate the RMS.
Without fitting, the best are UniPC-2 (bh2) on quadratic_t at NFE 10 (0.47 x), the torchdiffeq
heun3 / rk4 fixed-grid ODE on quadratic_t at 15 (0.52-0.54 x) and 20 (0.45-0.46 x); UniPC-3 on
uniform lambda gives 0.94 / 0.77 / 0.77 x RMS but 1.4 / 2.8 / 3.3 x lower medians.

Fitted grids (`solvers.fit_grid`, rows "| fitted", for NFE 10, 15, 20 unless --fit-nfe / --no-fit):
UniPC-3 (bh2) on a grid fitted to 1024 calibration start states of seed 1 (disjoint from the
seed-0 states the tables score; minibatches of 256, 200 Adam steps at lr 0.02, loss "mean_rms",
starting from `tuned` with kappa 1.5) gives 0.19 / 0.42 / 0.25 x (vp) and 0.19 / 0.42 / 0.20 x
(ddpm); its medians are 28 / 27 / 50 x below the baseline's (vp). Each fit takes 15-25 s on one core. The fits
depend on the calibration draw through the few hard states: --cal-seed 2 gives
0.65 / 0.37 / 0.26 x (vp) and 0.20 / 0.37 / 0.35 x (ddpm); --cal-seed 3 gives 0.65 / 0.43 / 0.32 x
(vp) and 0.20 / 0.43 / 0.34 x (ddpm). So NFE 10 on vp misses the 0.5 x target for two of the three
draws.

Recommended configurations (issue 18; `solvers.recommend`, `sample(solver="auto")`; the table and its
commands are in solvers/recommended.py, the full ratios in docs/solvers.md). With the noise-form solvers and
UniPC in eps form among the presets, the best configuration without fitting per budget (RMS / median as
ratios to DPM-Solver++(3M) on uniform lambda, vp; ddpm within 0.02): iPNDM-2 on quadratic_t at 5
(0.70 / 0.30), iPNDM-3 on quadratic_t at 8 (0.46 / 0.17), UniPC-2 bh1 eps on quadratic_t at 10 and 15
(0.13 / 0.13, 0.29 / 0.25), UniPC-3 bh1 eps on quadratic_t at 20 (0.43 / 0.18): the 0.5 x RMS / 0.25 x
median target is met at 10, 15 and 20 on both schedules without a fitted grid. The other processes
(--schedules subvp flow vp_cosine ve) have rows of their own; on the cosine VP schedule quadratic_t is
5-8 x worse than the baseline at 15-20 evaluations.

Errors: per-sample RMS over the 64 coordinates, e_i; the tables show RMS_i e_i (and the median with
--median) at each NFE budget. A configuration gets the largest grid that fits the budget; when
lower-order final steps make it cheaper, the NFE actually used is shown in brackets.

    python benchmarks/solvers.py                 # everything, fitted grids included (5 minutes on one core)
    python benchmarks/solvers.py --quick         # NFE 10, 15, 20; 64 states; main configurations
    python benchmarks/solvers.py --schedules vp --solvers unipc dpm_solver++ --grids uniform_lambda tuned
    python benchmarks/solvers.py --solvers unipc dpm_solver++ --grids uniform_lambda --nfe 10 15 20 --cal-seed 2
    python benchmarks/solvers.py --solvers dpm_solver++ unipc dpm_solver_multistep deis ipndm --no-fit --median \
        --ratios --grids uniform_lambda quadratic_t uniform_t karras --nfe 5 8 10 15 20   # solvers.recommend's table
    python benchmarks/solvers.py --schedules none --digits 1000 --nfe 10 20   # classifier FD on the digits VP model
    python benchmarks/solvers.py --quick --solvers ddim heun dpm_solver dpm_solver++ unipc ipndm --grids uniform_lambda \
        quadratic_t --nfe 5 8 10 15 20 50 --n 256 --no-fit --plot-dir docs   # docs/solvers_{vp,ddpm}.png
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

# this script shares its name with the package it measures: keep its own folder off the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402
import torchdiffeq  # noqa: E402

import solvers  # noqa: E402
from scoresde import VESDE, AnalyticModel, DiscreteVPSDE, FlowSDE, GaussianMixture, SubVPSDE, VPSDE  # noqa: E402
from scoresde import plots  # noqa: E402
from solvers import grids  # noqa: E402

NFES = (5, 6, 8, 10, 12, 15, 20, 25, 50, 100)
QUICK_NFES = (10, 15, 20)
T_END = 1e-3

# options to sweep per solver name; deterministic solvers not listed run with their defaults
PRESETS: dict[str, list[dict]] = {
    "ddim": [{}],
    "heun": [{}],
    "ode": [{"method": "midpoint"}, {"method": "heun3"}, {"method": "rk4"}],
    "dpm_solver": [{"order": 1}, {"order": 2}, {"order": 3}],
    "dpm_solver++": [
        {"solver_type": "singlestep", "order": 2},
        {"solver_type": "singlestep", "order": 3},
        {"solver_type": "multistep", "order": 2},
        {"solver_type": "multistep", "order": 3},
    ],
    "unipc": [{"order": p, "variant": v} for p in (1, 2, 3) for v in ("bh1", "bh2")]
    + [{"order": p, "variant": v, "prediction": "eps"} for p in (2, 3) for v in ("bh1", "bh2")],
    "dpm_solver_multistep": [{"order": 2}, {"order": 3}],
    "deis": [{"order": 2}, {"order": 3}],
    "ipndm": [{"order": 2}, {"order": 3}, {"order": 4}],
}
QUICK_PRESETS: dict[str, list[dict]] = {
    "ddim": [{}],
    "heun": [{}],
    "dpm_solver": [{"order": 3}],
    "dpm_solver++": [{"solver_type": "multistep", "order": 3}],
    "unipc": [{"order": 3, "variant": "bh1"}, {"order": 3, "variant": "bh2"}],
}
BASELINE = ("dpm_solver++", {"solver_type": "multistep", "order": 3}, "uniform_lambda")


def tuned_lambda(process, steps: int, *, kappa: float = 1.3, t_start: float | None = None, t_end: float | None = None):
    """Benchmark-local grid: lambda_i = lambda_T + (lambda_end - lambda_T) (i/N)^(1/kappa).

    kappa = 1 is uniform_lambda; kappa > 1 takes longer log-SNR steps near t_end (where x0
    varies slowly for this data) and shorter ones at high noise. kappa was picked on a separate
    set of start states (seed 1, see --tune).
    """
    t0 = float(process.T if t_start is None else t_start)
    t1 = float(process.t_eps if t_end is None else t_end)
    lam = process.lambda_(torch.tensor([t0, t1], dtype=torch.float64))
    frac = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64) ** (1.0 / kappa)
    ts = process.t_of_lambda(lam[0] + frac * (lam[1] - lam[0]))
    ts[0], ts[-1] = t0, t1
    return ts


GRID_BUILDERS = {**grids.GRIDS, "tuned": tuned_lambda}
FITTED = ("unipc", {"order": 3, "variant": "bh2"})  # the configuration whose grids are fitted
FIT_NFES = (10, 15, 20)  # budgets with a fitted grid by default
# fitting: a pool of N_CAL calibration states (seed CAL_SEED; the tables score seed 0), minibatches of
# FIT_BATCH (drawn with seed 0), FIT_ITERS Adam steps of learning rate FIT_LR on FIT_LOSS
N_CAL, CAL_SEED, FIT_BATCH, FIT_ITERS, FIT_LR, FIT_LOSS = 1024, 1, 256, 200, 0.02, "mean_rms"


def fitted_grid(model, sampler, steps: int, x_cal: torch.Tensor, ref_cal: torch.Tensor):
    """`solvers.fit_grid` for `sampler` on calibration start states x_cal with their reference
    endpoints ref_cal, starting from tuned_lambda (kappa 1.5). run() draws x_cal with seed 1 (or
    --cal-seed) and scores the grid on the seed-0 start states: it is fitted to the model and data law, not to
    the states it is scored on.
    """
    init = tuned_lambda(model.sde, steps, kappa=1.5, t_end=T_END)
    return solvers.fit_grid(
        sampler, model, x_cal, ref_cal, steps, init=init, iters=FIT_ITERS, lr=FIT_LR,
        batch_size=FIT_BATCH, generator=torch.Generator().manual_seed(0), loss=FIT_LOSS,
    )


# the processes the tables can run on: the two VP schedules of the docstring, and (for solvers.recommend's other
# rows) the cosine VP schedule, sub-VP, VE and flow matching with scoresde's default parameters
SCHEDULES = {
    "vp": VPSDE, "ddpm": DiscreteVPSDE, "vp_cosine": lambda: VPSDE(schedule="cosine"), "subvp": SubVPSDE, "ve": VESDE,
    "flow": FlowSDE,
}


def make_problem(schedule: str, n: int, seed: int = 0) -> tuple[AnalyticModel, torch.Tensor]:
    """The mixture model under `schedule` (a key of SCHEDULES) and n prior draws (float64)."""
    gen = torch.Generator().manual_seed(1234)  # the data law is the same for every run
    d, k = 64, 8
    means = 2 * torch.rand(k, d, generator=gen, dtype=torch.float64) - 1
    stds = torch.linspace(0.05, 0.3, k, dtype=torch.float64)
    data = GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64), means, stds)
    sde = SCHEDULES[schedule]()
    x_T = sde.prior_sample((n, d), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return AnalyticModel(data, sde), x_T


def reference(model: AnalyticModel, x_T: torch.Tensor, *, t_end: float = T_END, rtol: float = 1e-10) -> torch.Tensor:
    """x at t_end from the probability-flow ODE in y = x / sigma against lambda (dopri8, float64)."""
    sde = model.sde
    lam = sde.lambda_(torch.tensor([sde.T, t_end], dtype=torch.float64))

    def rhs(lam_now, y):
        # dopri8's first-step heuristic may probe just past the interval (VE: past lambda(0)): stay inside it
        t = sde.t_of_lambda(lam_now.clamp(lam[0], lam[1]).reshape(1))
        sigma = sde.sigma(t)
        # d(x / sigma)/dlambda = e^lambda x0 (Lu et al. 2022b, the data-prediction form of the ODE)
        return torch.exp(lam_now) * model.x0(sigma * y, t.expand(y.shape[0]))

    y_T = x_T / sde.sigma(torch.tensor([sde.T], dtype=torch.float64))
    y = torchdiffeq.odeint(rhs, y_T, lam, method="dopri8", rtol=rtol, atol=rtol)[-1]
    return y * sde.sigma(torch.tensor([t_end], dtype=torch.float64))


def reference_in_t(model: AnalyticModel, x_T: torch.Tensor, *, t_end: float = T_END) -> torch.Tensor:
    """The same endpoint from dx/dt = f - g^2 score / 2 in t (dopri5, rtol = atol = 1e-10)."""
    sde = model.sde

    def rhs(t_now, x):
        # torchdiffeq's first-step heuristic may probe just past the interval: stay inside [0, T]
        t = t_now.clamp(0.0, sde.T).reshape(1).expand(x.shape[0])
        return sde.pf_drift(x, t, model.score(x, t))

    ts = torch.tensor([sde.T, t_end], dtype=torch.float64)
    # step_t: end a step exactly at t_end instead of interpolating from a step past it
    return torchdiffeq.odeint(rhs, x_T, ts, method="dopri5", rtol=1e-10, atol=1e-10, options={"step_t": ts})[-1]


def label(name: str, options: dict) -> str:
    if not options:
        return name
    return name + "(" + ",".join(f"{k}={v}" for k, v in options.items()) + ")"


def configurations(names: list[str] | None, quick: bool) -> list[tuple[str, dict]]:
    """(name, options) of every deterministic fixed-grid sampler requested."""
    presets = QUICK_PRESETS if quick else PRESETS
    chosen = []
    for name in sorted(solvers.available()):
        if names is not None and name not in names:
            continue
        for options in presets.get(name, [{}] if not quick or names is not None else []):
            sampler = solvers.get(name, **options)
            if sampler.stochastic or sampler.nfe_per_step == 0:
                continue  # stochastic samplers and adaptive steppers have no fixed-grid NFE
            chosen.append((name, options))
    return chosen


def nfe_of(sampler, model, grid_name: str, steps: int) -> int:
    """NFE of `sampler` on a grid of `steps` steps, from a one-sample dry run."""
    x = model.sde.prior_sample((1, model.data.dim), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return sampler(model, x, GRID_BUILDERS[grid_name](model.sde, steps, t_end=T_END)).nfe


def steps_for_budget(sampler, model, grid_name: str, budget: int, cache: dict) -> int | None:
    """The largest step count whose NFE fits the budget (None when even one step does not)."""
    best = None
    steps = max(1, budget // max(1, sampler.nfe_per_step))
    while steps <= budget:
        key = steps
        if key not in cache:
            cache[key] = nfe_of(sampler, model, grid_name, steps)
        if cache[key] <= budget:
            best = steps
            steps += 1
        else:
            break
    return best


def per_sample_errors(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (x - ref).pow(2).flatten(1).mean(1).sqrt()


def run(schedule: str, configs, grid_names, nfes, n: int, *, fit_nfes=(), cal_seed: int = CAL_SEED):
    """results[(label, grid)][nfe] = (rms, median, nfe_used); also FITTED on grids fitted for each of
    fit_nfes on calibration states drawn with cal_seed."""
    model, x_T = make_problem(schedule, n)
    t0 = time.time()
    ref = reference(model, x_T)
    print(f"# {schedule}: reference (dopri8 in lambda, rtol=atol=1e-10) took {time.time() - t0:.1f} s", flush=True)
    results = {}
    for name, options in configs:
        sampler = solvers.get(name, **options)
        for grid_name in grid_names:
            cache: dict = {}
            row = {}
            for budget in nfes:
                steps = steps_for_budget(sampler, model, grid_name, budget, cache)
                if steps is None:
                    continue
                ts = GRID_BUILDERS[grid_name](model.sde, steps, t_end=T_END)
                sol = sampler(model, x_T, ts)
                e = per_sample_errors(sol.x, ref)
                row[budget] = (float(e.pow(2).mean().sqrt()), float(e.median()), sol.nfe)
            results[(label(name, options), grid_name)] = row
    if fit_nfes:
        name, options = FITTED
        sampler = solvers.get(name, **options)
        _, x_cal = make_problem(schedule, N_CAL, seed=cal_seed)
        ref_cal = reference(model, x_cal)
        row = {}
        for budget in fit_nfes:
            t0 = time.time()
            ts = fitted_grid(model, sampler, budget, x_cal, ref_cal)  # UniPC: one evaluation per step
            sol = sampler(model, x_T, ts)
            e = per_sample_errors(sol.x, ref)
            row[budget] = (float(e.pow(2).mean().sqrt()), float(e.median()), sol.nfe)
            lam = model.sde.lambda_(ts)
            print(f"# {schedule}: grid fitted for NFE {budget} ({time.time() - t0:.0f} s), lambda = "
                  + " ".join(f"{v:.2f}" for v in lam.tolist()), flush=True)
        results[(label(name, options), "fitted")] = row
    return results


def print_table(title: str, results: dict, nfes, column: int) -> None:
    width = max(len(f"{a} | {b}") for a, b in results) + 2
    print(f"\n## {title}")
    print("config | grid".ljust(width) + "".join(f"{'NFE ' + str(k):>16}" for k in nfes))
    for (lab, grid_name), row in results.items():
        print(f"{lab} | {grid_name}".ljust(width) + table_cells(row, nfes, column, "{:.2e}", 16))


def table_cells(row: dict, nfes, column: int, fmt: str, width: int) -> str:
    """One table row's cells: row[nfe][column] formatted, "[n]" when the run used n NFE instead, "-" if absent."""
    cells = []
    for k in nfes:
        if k not in row:
            cells.append(f"{'-':>{width}}")
            continue
        v, used = row[k][column], row[k][2]
        text = fmt.format(v) if math.isfinite(v) else "nan"
        if used != k:
            text += f"[{used}]"
        cells.append(f"{text:>{width}}")
    return "".join(cells)


def print_target(schedule: str, results: dict, nfes) -> None:
    """Best configuration per NFE versus DPM-Solver++(3M) on the uniform-lambda grid."""
    base_key = (label(BASELINE[0], BASELINE[1]), BASELINE[2])
    if base_key not in results:
        return
    print(f"\n## {schedule}: best configuration vs {base_key[0]} | {base_key[1]} (RMS)")
    for k in nfes:
        if k not in results[base_key]:
            continue
        base = results[base_key][k][0]
        best_key, best = min(((key, row[k][0]) for key, row in results.items() if k in row), key=lambda kv: kv[1])
        print(f"NFE {k:>3}: baseline {base:.2e}; best {best:.2e} = {best / base:.2f} x baseline  <- {best_key[0]} | {best_key[1]}")


def print_ratios(schedule: str, results: dict, nfes) -> None:
    """Every row's RMS and median as ratios to DPM-Solver++(3M) on uniform lambda ("rms / median")."""
    base_key = (label(BASELINE[0], BASELINE[1]), BASELINE[2])
    if base_key not in results:
        return
    base = results[base_key]
    width = max(len(f"{a} | {b}") for a, b in results) + 2
    print(f"\n## {schedule}: RMS / median per-sample error as ratios to {base_key[0]} | {base_key[1]}")
    print("config | grid".ljust(width) + "".join(f"{'NFE ' + str(k):>14}" for k in nfes))
    for (lab, grid_name), row in results.items():
        cells = []
        for k in nfes:
            if k not in row or k not in base:
                cells.append(f"{'-':>14}")
                continue
            rms, med = row[k][0] / base[k][0], row[k][1] / base[k][1]
            text = f"{rms:.2f}/{med:.2f}" if math.isfinite(rms) and math.isfinite(med) else "nan"
            cells.append(f"{text:>14}")
        print(f"{lab} | {grid_name}".ljust(width) + "".join(cells))


def tune(schedule: str, n: int, nfes, kappas) -> None:
    """Sweep the tuned grid's kappa for UniPC-3 on held-out start states (seed 1)."""
    model, x_T = make_problem(schedule, n, seed=1)
    ref = reference(model, x_T)
    print(f"\n## {schedule}: kappa sweep for the tuned grid (UniPC-3 bh2 / bh1, seed-1 start states, RMS)")
    for variant in ("bh2", "bh1"):
        sampler = solvers.get("unipc", order=3, variant=variant)
        for kappa in kappas:
            errs = []
            for k in nfes:
                ts = tuned_lambda(model.sde, k, kappa=kappa, t_end=T_END)
                errs.append(float(per_sample_errors(sampler(model, x_T, ts).x, ref).pow(2).mean().sqrt()))
            print(f"{variant} kappa={kappa:<5}" + "".join(f"  NFE {k}: {e:.2e}" for k, e in zip(nfes, errs)))


def adaptive_sweep(schedule: str, n: int) -> None:
    model, x_T = make_problem(schedule, n)
    ref = reference(model, x_T)
    print(f"\n## {schedule}: adaptive DPM-Solver (rtol = atol = tol)")
    ts = grids.uniform_lambda(model.sde, 1, t_end=T_END)
    for order in (2, 3):
        for tol in (1e-2, 1e-3, 1e-4):
            sol = solvers.get("dpm_solver_adaptive", order=order, rtol=tol, atol=tol)(model, x_T, ts)
            e = per_sample_errors(sol.x, ref)
            print(f"order {order} tol {tol:.0e}: NFE {sol.nfe:4d}  RMS {float(e.pow(2).mean().sqrt()):.2e}  median {float(e.median()):.2e}")


# the digits check (--digits N): (label, solver, options, grid); the row that solvers.recommend picks is marked "auto"
DIGITS_CONFIGS = [
    ("auto (solvers.recommend)", "auto", {}, None),
    ("DPM-Solver++(3M), uniform lambda", "dpm_solver++", {"order": 3}, "uniform_lambda"),
    ("DPM-Solver++ defaults (2M, uniform lambda)", "dpm_solver++", {}, "uniform_lambda"),
    ("UniPC defaults (3, bh2, x0, uniform lambda)", "unipc", {}, "uniform_lambda"),
    ("iPNDM-3, quadratic t", "ipndm", {"order": 3}, "quadratic_t"),
    ("UniPC-2 bh1 eps, quadratic t", "unipc", {"order": 2, "variant": "bh1", "prediction": "eps"}, "quadratic_t"),
    ("UniPC-3 bh1 eps, quadratic t", "unipc", {"order": 3, "variant": "bh1", "prediction": "eps"}, "quadratic_t"),
    ("iPNDM-4, quadratic t", "ipndm", {"order": 4}, "quadratic_t"),
    ("DPM-Solver-2M (eps), uniform lambda", "dpm_solver_multistep", {"order": 2}, "uniform_lambda"),
    ("DPM-Solver-3M (eps), uniform lambda", "dpm_solver_multistep", {"order": 3}, "uniform_lambda"),
]


def digits_check(n: int, steps_list, *, sde: str = "vp", seed: int = 0, match=None, batch_size: int = 250) -> None:
    """Classifier Fréchet distance (scoresde.metrics.digits_quality, against the 360 test digits) of n samples
    (seeds seed..seed+n-1) of the shipped digits model of `sde` for each of DIGITS_CONFIGS (those whose label
    contains one of `match`, when given) at each step count."""
    import scoresde
    from scoresde.metrics import digits_floor, digits_quality

    model = scoresde.default_model(sde)
    dequantized = bool(getattr(model, "config", {}).get("dequantize", False))
    print(f"\n## digits {sde} model: classifier FD of {n} samples (seed {seed}) to the 360 test digits; "
          f"floor (train vs test) {digits_floor():.2f}")
    print("config | steps | NFE | FD | seconds")
    for steps in steps_list:
        rec = solvers.recommend(model.sde, steps)
        for lab, name, options, grid in DIGITS_CONFIGS:
            if match and not any(m in lab for m in match):
                continue
            full = solvers.get(rec.solver if name == "auto" else name, **options).options()
            auto = name == rec.solver and grid == rec.grid and all(full[k] == v for k, v in rec.options.items())
            t0 = time.time()
            s = scoresde.sample(model, solver=name, steps=steps, grid=grid, n=n, seed=seed, batch_size=batch_size,
                                **options)
            fd = digits_quality(s.x, dequantized=dequantized).fd
            nfe = s.nfe // len(s.settings["nfe_per_chunk"])  # per sample
            print(f"{lab}{' (auto)' if auto else ''} | {steps} | {nfe} | {fd:.2f} | "
                  f"{time.time() - t0:.0f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", nargs="+", choices=[*SCHEDULES, "none"], default=["vp", "ddpm"])
    parser.add_argument("--match", nargs="+", default=None,
                        help="keep only the configurations whose label contains one of these strings (the baseline "
                        "always; with --digits, the digits rows likewise)")
    parser.add_argument("--solvers", nargs="+", default=None, help="names from solvers.available() (default: all deterministic)")
    parser.add_argument("--grids", nargs="+", choices=sorted(GRID_BUILDERS), default=None)
    parser.add_argument("--nfe", nargs="+", type=int, default=None)
    parser.add_argument("--n", type=int, default=None, help="start states (default 256; 64 with --quick)")
    parser.add_argument("--median", action="store_true", help="also print the median per-sample error")
    parser.add_argument("--ratios", action="store_true", help="also print RMS / median ratios to the baseline")
    parser.add_argument("--quick", action="store_true", help="NFE 10, 15, 20; 64 states; main configurations")
    parser.add_argument("--adaptive", action="store_true", help="also sweep dpm_solver_adaptive tolerances")
    parser.add_argument("--tune", action="store_true", help="sweep the tuned grid's kappa on held-out states")
    parser.add_argument("--fit-nfe", nargs="+", type=int, default=None,
                        help=f"NFE budgets to fit a grid for, for {label(*FITTED)} on calibration states of seed "
                        f"{CAL_SEED} (default: those of {list(FIT_NFES)} among --nfe; 10-40 s each)")
    parser.add_argument("--no-fit", action="store_true", help="skip the fitted grids")
    parser.add_argument("--cal-seed", type=int, default=CAL_SEED,
                        help=f"seed of the {N_CAL} calibration states (not 0: seed 0 draws the scored states)")
    parser.add_argument("--digits", type=int, default=None, metavar="N",
                        help="also sample N images from the shipped digits model (--digits-sde) per config and step "
                        "count (--nfe) and print the classifier Fréchet distance (only these with --schedules none)")
    parser.add_argument("--digits-sde", choices=["vp", "subvp", "ve"], default="vp",
                        help="the shipped digits model of --digits (default vp)")
    parser.add_argument("--digits-seed", type=int, default=0, help="seed of the first digits sample (default 0)")
    parser.add_argument("--check-reference", action="store_true", help="compare the reference with dopri5 in t")
    parser.add_argument("--plot-dir", default=None, help="also write DIR/solvers_SCHEDULE.png, RMS error against NFE "
                        "(scoresde.plots.plot_error_vs_nfe; needs the plots extra)")
    args = parser.parse_args(argv)
    if args.plot_dir is not None and (problem := plots.check_plot_dir(args.plot_dir, "solvers.png")):
        parser.error(problem)  # fail now, not after the run
    if args.solvers is not None:
        unknown = sorted(set(args.solvers) - set(solvers.available()))
        if unknown:
            parser.error(f"unknown solver(s) {unknown}; choose from {sorted(solvers.available())}")
    if args.nfe is not None and any(k < 1 for k in args.nfe):
        parser.error(f"--nfe values must be >= 1, got {args.nfe}")
    if args.n is not None and args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    torch.set_num_threads(1)
    nfes = tuple(args.nfe) if args.nfe else (QUICK_NFES if args.quick else NFES)
    if args.fit_nfe is not None and (args.no_fit or any(k < 2 or k not in nfes for k in args.fit_nfe)):
        parser.error(f"--fit-nfe takes values >= 2 among the NFE budgets {list(nfes)}, without --no-fit; got {args.fit_nfe}")
    if args.cal_seed == 0:
        parser.error("--cal-seed 0 draws the scored start states; choose another seed")
    n = args.n or (64 if args.quick else 256)
    grid_names = args.grids or (["uniform_lambda", "karras", "tuned"] if args.quick else sorted(GRID_BUILDERS))
    configs = configurations(args.solvers, args.quick)
    if args.match:
        configs = [c for c in configs if c == BASELINE[:2] or any(m in label(*c) for m in args.match)]
    if args.no_fit:
        fit_nfes = ()
    else:
        fit_nfes = tuple(args.fit_nfe) if args.fit_nfe is not None else tuple(k for k in FIT_NFES if k in nfes)
    print(f"# {len(configs)} configurations x {len(grid_names)} grids; NFE {list(nfes)}; {n} start states; d = 64")
    for schedule in [s for s in args.schedules if s != "none"]:
        if args.check_reference:
            model, x_T = make_problem(schedule, n)
            ref = reference(model, x_T)
            gap_tol = per_sample_errors(ref, reference(model, x_T, rtol=1e-12)).max()
            print(f"# {schedule}: max per-sample gap of the reference to itself at rtol = atol = 1e-12: {float(gap_tol):.1e}")
            if schedule == "vp":
                # (the discrete schedule's drift jumps at its 1000 knots, so dopri5 in t crawls there;
                # in lambda both VP schedules give the same ODE, as alpha and sigma depend on lambda only)
                gap_t = per_sample_errors(ref, reference_in_t(model, x_T)).max()
                print(f"# {schedule}: max per-sample gap of the reference to dopri5 in t: {float(gap_t):.1e}")
        if args.tune:
            tune(schedule, n, nfes, (1.0, 1.15, 1.3, 1.5, 1.75, 2.0))
        results = run(schedule, configs, grid_names, nfes, n, fit_nfes=fit_nfes, cal_seed=args.cal_seed)
        print_table(f"{schedule}: RMS of per-sample endpoint error", results, nfes, 0)
        if args.median:
            print_table(f"{schedule}: median per-sample endpoint error", results, nfes, 1)
        print_target(schedule, results, nfes)
        if args.ratios:
            print_ratios(schedule, results, nfes)
        if args.adaptive:
            adaptive_sweep(schedule, n)
        if args.plot_dir is not None:
            out = plots.plot_error_vs_nfe(results, os.path.join(args.plot_dir, f"solvers_{schedule}.png"),
                                          title=f"{schedule}: RMS endpoint error, Gaussian mixture d = 64, {n} start states")
            print(f"# wrote {out}")
        sys.stdout.flush()
    if args.digits:
        digits_check(args.digits, nfes, sde=args.digits_sde, seed=args.digits_seed, match=args.match)


if __name__ == "__main__":
    main()
