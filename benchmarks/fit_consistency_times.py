"""Choose the intermediate times of multistep consistency sampling for a few-step digits model, and store them.

Multistep consistency sampling (`solvers.Consistency`) re-noises its one-step sample to each intermediate time
of its grid; the default Karras grid puts those times at high noise (with 2 steps the VP grid's middle point has
noise level nu = sigma / alpha of about 6, where the data's scale is 0.5), where a re-noised sample is nearly
prior noise again and a second evaluation buys little. Song et al. 2023 (arXiv:2303.01469, Sec. 6) search the
intermediate times instead; this script does the same on a small family: intermediate noise levels

    nu_k = nu_1 * r^(k - 1),  k = 1 .. steps - 1   (geometric, decreasing; r is unused for 2 steps)

over a grid of (nu_1, r), mapped to VP times. Calibration scores each candidate by the classifier Fréchet distance
of CAL_N samples (per-sample seeds CAL_SEED + i) to the *train* images; the chosen grid is then checked on the
evaluation of benchmarks/few_step_digits.py (2,000 samples, seeds 0..1999, distance to the *test* images) beside
the default Karras grid. Calibration never sees the test images or the evaluation's seeds.

    python benchmarks/fit_consistency_times.py                       # the shipped CD model: table only
    python benchmarks/fit_consistency_times.py --write               # store the chosen grids in the model file

--write stores each chosen grid that beats the Karras grid on the held-out evaluation as a fitted grid of the
model file (`scoresde.fitted_grids`: `scoresde.sample(model, solver="consistency", steps=k)` and the CLI then walk
it by default; an explicit grid wins), with the tensors bit-identical. One CPU thread unless --threads.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402

import scoresde  # noqa: E402
from scoresde import fitted_grids  # noqa: E402
from scoresde.files import read_safetensors  # noqa: E402
from scoresde.metrics import digits_quality  # noqa: E402
from scoresde.pretrained import ASSETS, FEW_STEP_MODELS  # noqa: E402
from scoresde.train import load_model  # noqa: E402
from solvers.consistency import Consistency, times_grid  # noqa: E402

CAL_SEED = 1_000_000  # calibration samples use seeds CAL_SEED + i; the evaluation uses 0..n-1
NU_1 = (0.3, 0.45, 0.6, 0.75, 0.9, 1.2)
RATIOS = (0.35, 0.5, 0.65)


def noise_levels_to_times(sde, nus: list[float]) -> list[float]:
    """VP (any affine SDE) times whose noise level sigma / alpha = exp(-lambda) is each of `nus`."""
    lam = -torch.log(torch.tensor(nus, dtype=torch.float64))
    return sde.t_of_lambda(lam).tolist()


def candidates(sde, steps: int) -> list[tuple[tuple[float, float | None], list[float]]]:
    """((nu_1, r), intermediate times) for every candidate of `steps` steps (steps - 1 intermediate times)."""
    out = []
    for nu1, r in itertools.product(NU_1, RATIOS if steps > 2 else (None,)):
        nus = [nu1 * (r or 1.0) ** k for k in range(steps - 1)]
        out.append(((nu1, r), noise_levels_to_times(sde, nus)))
    return out


def fd(model, grid, n: int, seed: int, reference: str, steps: int | None = None) -> float:
    """Classifier Fréchet distance to the `reference` split of n consistency samples (seeds seed + i) on `grid`
    (a tensor, or a grid name with `steps`)."""
    s = scoresde.sample(model, solver="consistency", grid=grid, steps=steps, n=n, seed=seed, batch_size=500)
    return digits_quality(s.x.float(), reference, dequantized=True).fd


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ASSETS / FEW_STEP_MODELS["cd"]["vp"]), help="a few-step model file")
    p.add_argument("--steps", type=int, nargs="+", default=[2, 3, 4], help="step counts (default 2 3 4)")
    p.add_argument("--cal-n", type=int, default=1000, help="calibration samples per candidate (default 1000)")
    p.add_argument("--n", type=int, default=2000, help="held-out evaluation samples (default 2000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true", help="store the grids that beat Karras in the model file")
    args = p.parse_args(argv)
    if min(args.steps) < 2:
        p.error("--steps: every step count must be at least 2 (one step has no intermediate time)")
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    entries, rows = [], []
    for steps in args.steps:
        start = time.process_time()
        scored = []
        for params, times in candidates(model.sde, steps):
            grid = times_grid(model.sde, times, t_end=model.t_eps)
            scored.append((fd(model, grid, args.cal_n, CAL_SEED, "train"), params, grid))
            print(f"  steps {steps} nu_1 {params[0]} r {params[1]}: calibration FD {scored[-1][0]:.2f}",
                  file=sys.stderr, flush=True)
        cal, (nu1, r), grid = min(scored, key=lambda s: s[0])
        held = fd(model, grid, args.n, 0, "test")
        karras = fd(model, "karras", args.n, 0, "test", steps)
        cpu = time.process_time() - start
        rows.append((steps, nu1, r, grid, cal, held, karras, cpu))
        if held < karras:
            fit = {"method": "search over geometric intermediate noise levels nu_1 * r^k "
                             "(benchmarks/fit_consistency_times.py)", "nu_1": nu1, "r": r,
                   "calibration": {"seed": CAL_SEED, "n": args.cal_n, "reference": "digits train", "fd": cal},
                   "held_out": {"seed": 0, "n": args.n, "reference": "digits test", "fd": held, "fd_karras": karras}}
            entries.append(fitted_grids.FittedGrid("consistency", Consistency().options(), steps,
                                                   tuple(grid.tolist()), fit))
    print(f"\n{os.path.basename(args.model)}: calibration {args.cal_n} samples vs train images; held-out {args.n} "
          f"samples (seeds 0..{args.n - 1}) vs test images; {torch.get_num_threads()} thread(s)\n")
    print("| steps (NFE) | nu_1 | r | intermediate times | calibration FD | held-out FD | held-out FD, Karras grid "
          "| search CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for steps, nu1, r, grid, cal, held, karras, cpu in rows:
        inner = ", ".join(f"{t:.3f}" for t in grid[1:-1].tolist())
        print(f"| {steps} | {nu1} | {r if r is not None else '-'} | {inner} | {cal:.2f} | {held:.2f} | {karras:.2f} "
              f"| {cpu:.0f} |")
    if args.write:
        before, _ = read_safetensors(args.model, fmt=fitted_grids.MODEL_FORMAT, what="pretrained model")
        fitted_grids.store_fitted_grids(args.model, entries)
        after, _ = read_safetensors(args.model, fmt=fitted_grids.MODEL_FORMAT, what="pretrained model")
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        print(f"\nstored {len(entries)} grid(s) in {args.model} (tensors bit-identical)")


if __name__ == "__main__":
    main()
