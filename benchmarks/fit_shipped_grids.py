"""Fit the time grids that the shipped digits models carry (issue 18), check them on held-out start states, store them.

For each shipped model and step count N, the solver is the recommended one, `solvers.recommend(model.sde, N)`,
and `solvers.fit_grid` fits its N-step grid, starting from the recommended grid, to reference endpoints of
calibration start states (prior draws from a generator seeded CAL_SEED); the reference is a tight solve
(`--ref-steps` steps of third-order UniPC on a uniform log-SNR grid; its own error is estimated against twice
as many steps on a few held-out states). The fitted grid is then compared with the recommended (un-fitted) grid
on held-out start states (generator seeded HELD_SEED): ratios of the RMS over states and of the median of the
per-state RMS endpoint errors. The evaluations (benchmarks/solvers.py --digits, benchmarks/digits.py, the FD
check below) draw samples with per-sample seeds 0..N-1 and never use these two generators.

The class-conditional model is fitted as `sample(y=...)` runs it without guidance scale: the conditional
prediction (guidance scale 1), calibration and held-out state i with label i mod 10.

    python benchmarks/fit_shipped_grids.py --models vp subvp ve vp_cond --steps 5 8 10 15 20 --write
    python benchmarks/fit_shipped_grids.py --fd 2000 --fd-steps 10 50 --fd-unfitted   # classifier FD, shipped VP model

--write stores the fitted grids in the model files (`store_fitted_grids`: atomic, metadata only) and checks
that their tensors are bit-identical to what was there before. One CPU thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# benchmarks/solvers.py shares its name with the package: keep this folder off the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402

import solvers  # noqa: E402
from scoresde import fitted_grids  # noqa: E402
from scoresde.files import read_safetensors  # noqa: E402
from scoresde.guidance import CFGModel  # noqa: E402
from scoresde.training.checkpoints import (  # noqa: E402
    ASSETS, CONDITIONAL_MODELS, DEFAULT_MODELS, PRETRAINED_FORMAT, default_model,
)

CAL_SEED = 2026_12_18_1  # calibration start states (one generator)
HELD_SEED = 2026_12_18_2  # held-out start states (one generator)
MODELS = {"vp": ("vp", False), "subvp": ("subvp", False), "ve": ("ve", False), "vp_cond": ("vp", True)}
REFERENCE = ("unipc", {"order": 3}, "uniform_lambda")


def model_file(key: str):
    sde, conditional = MODELS[key]
    return ASSETS / (CONDITIONAL_MODELS if conditional else DEFAULT_MODELS)[sde]


def labelled(model, n: int, conditional: bool):
    """The model that solves n states: itself, or when conditional its prediction for labels i mod 10 (scale 1)."""
    return CFGModel(model, torch.arange(n) % 10, 1.0, null_label=model.null_label) if conditional else model


def start_states(model, n: int, seed: int, conditional: bool):
    """(the model to solve with, x_T (n, *D)): prior draws of one generator, labels i mod 10 when conditional."""
    x = model.sde.prior_sample((n, *model.image_shape), generator=torch.Generator().manual_seed(seed))
    return labelled(model, n, conditional), x


def reference(model, x_T, steps: int):
    name, options, grid = REFERENCE
    with torch.no_grad():
        return solvers.get(name, **options)(model, x_T, solvers.grids.make(grid, model.sde, steps)).x


def per_state_errors(x, ref):
    """(B,) RMS error of each state."""
    return (x - ref).pow(2).flatten(1).mean(1).sqrt()


def fit_model(key: str, steps_list, args) -> list:
    """Fit, check and print one model's grids; returns its FittedGrid entries."""
    sde_name, conditional = MODELS[key]
    if conditional and args.batch_size is not None:  # the labels are fixed per calibration row
        raise SystemExit(f"{key}: --batch-size is not supported for the class-conditional model; fit on the full batch")
    base = default_model(sde_name, conditional=conditional)
    model_cal, x_cal = start_states(base, args.n_cal, CAL_SEED, conditional)
    model_held, x_held = start_states(base, args.n_held, HELD_SEED, conditional)
    t0 = time.time()
    ref_cal, ref_held = reference(model_cal, x_cal, args.ref_steps), reference(model_held, x_held, args.ref_steps)
    k = min(4, args.n_held)  # the reference's own error: against twice the steps on k held-out states
    fine = reference(labelled(base, k, conditional), x_held[:k], 2 * args.ref_steps)
    ref_err = float(per_state_errors(ref_held[:k], fine).pow(2).mean().sqrt())
    print(f"\n## {key} ({model_file(key).name}): {args.n_cal} calibration / {args.n_held} held-out states; reference "
          f"{REFERENCE[0]} {REFERENCE[1]} {REFERENCE[2]} {args.ref_steps} steps, its RMS error {ref_err:.1e} "
          f"(vs {2 * args.ref_steps} steps); {time.time() - t0:.0f} s", flush=True)
    print("steps | solver | options | init grid | held-out RMS fitted / init | ratio | median ratio | fit s")
    entries = []
    for steps in steps_list:
        rec = solvers.recommend(base.sde, steps)
        solver = solvers.get(rec.solver, **rec.options)
        t0 = time.time()
        minibatch = {} if args.batch_size is None else {
            "batch_size": args.batch_size, "generator": torch.Generator().manual_seed(0)}
        ts = solvers.fit_grid(solver, model_cal, x_cal, ref_cal, steps, init=rec.grid, iters=args.iters, lr=args.lr,
                              loss="mean_rms", **minibatch)
        seconds = time.time() - t0
        with torch.no_grad():
            e_fit = per_state_errors(solver(model_held, x_held, ts).x, ref_held)
            e_init = per_state_errors(solver(model_held, x_held, solvers.grids.make(rec.grid, base.sde, steps)).x,
                                      ref_held)
        rms = (float(e_fit.pow(2).mean().sqrt()), float(e_init.pow(2).mean().sqrt()))
        ratio, median = rms[0] / rms[1], float(e_fit.median() / e_init.median())
        print(f"{steps} | {rec.solver} | {rec.options} | {rec.grid} | {rms[0]:.2e} / {rms[1]:.2e} | {ratio:.2f} | "
              f"{median:.2f} | {seconds:.0f}", flush=True)
        fit = {"init": rec.grid, "calibration": {"seed": CAL_SEED, "n": args.n_cal}, "iters": args.iters,
               "batch_size": args.batch_size, "lr": args.lr, "loss": "mean_rms", "labels": "i mod 10, guidance scale 1" if conditional else None,
               "reference": f"{REFERENCE[0]} {REFERENCE[1]} {REFERENCE[2]} {args.ref_steps} steps",
               "held_out": {"seed": HELD_SEED, "n": args.n_held, "rms_ratio": round(ratio, 4),
                            "median_ratio": round(median, 4)},
               "script": "benchmarks/fit_shipped_grids.py"}
        entries.append(fitted_grids.FittedGrid(rec.solver, solver.options(), steps, tuple(ts.tolist()), fit))
        if args.write:  # after each grid, so that an interrupted run keeps what it fitted
            # only a grid that beats the recommended one on the held-out states is stored (else any stored is removed)
            write(key, entries[-1:] if ratio < 1.0 else [], drop=entries[-1:])
    return entries


def write(key: str, entries: list, drop: list = ()) -> None:
    """Store entries in the model file, replacing stored ones of the same solver, options and steps as entries or
    drop, and check that its tensors are bit-identical to before."""
    path = model_file(key)
    before, _ = read_safetensors(path, fmt=PRETRAINED_FORMAT, what="pretrained model")
    sde_name, conditional = MODELS[key]
    old = default_model(sde_name, conditional=conditional).fitted_grids
    new_keys = {(e.solver, repr(fitted_grids._plain(e.options)), e.steps) for e in (*entries, *drop)}
    kept = [e for e in old if (e.solver, repr(fitted_grids._plain(e.options)), e.steps) not in new_keys]
    fitted_grids.store_fitted_grids(path, sorted([*kept, *entries], key=lambda e: e.steps))
    after, _ = read_safetensors(path, fmt=PRETRAINED_FORMAT, what="pretrained model")
    same = before.keys() == after.keys() and all(
        before[k].dtype == after[k].dtype and before[k].shape == after[k].shape
        and torch.equal(before[k].reshape(-1).view(torch.uint8), after[k].reshape(-1).view(torch.uint8))
        for k in before)
    if not same:
        raise SystemExit(f"{path}: tensors changed on rewrite")
    n = len(default_model(sde_name, conditional=conditional).fitted_grids)
    print(f"wrote {path.name}: {n} fitted grids; {len(after)} tensors bit-identical to before", flush=True)


def prune(key: str) -> None:
    """Remove the stored grids of a model file whose held-out RMS ratio (fit["held_out"]) is not below 1."""
    sde_name, conditional = MODELS[key]
    grids = default_model(sde_name, conditional=conditional).fitted_grids
    worse = [g for g in grids if not g.fit.get("held_out", {}).get("rms_ratio", 0.0) < 1.0]
    print(f"{key}: pruning {len(worse)} grid(s) no better than the recommended grid on held-out states: "
          f"steps {[g.steps for g in worse]}")
    if worse:
        write(key, [], drop=worse)


def fd_check(n: int, steps_list, seed: int = 0, batch_size: int = 250, unfitted: bool = False) -> None:
    """Classifier FD (scoresde.metrics.digits_quality) of n samples (per-sample seeds seed..seed+n-1) of the
    shipped VP model with solver="auto" (the fitted grid where one is stored) and, where a fitted grid was
    used, the recommended grid without it."""
    import scoresde
    from scoresde.metrics import digits_quality

    model = default_model("vp")
    dequantized = bool(model.config.get("dequantize", False))
    print(f"\n## classifier FD of {n} samples (seeds {seed}..{seed + n - 1}), shipped VP model")
    print("steps | grid | FD | seconds")
    for steps in steps_list:
        t0 = time.time()
        s = scoresde.sample(model, solver="auto", steps=steps, n=n, seed=seed, batch_size=batch_size)
        print(f"{steps} | {s.settings['grid']} | {digits_quality(s.x, dequantized=dequantized).fd:.2f} | "
              f"{time.time() - t0:.0f}", flush=True)
        if unfitted and s.settings["grid"] == "fitted":
            rec = solvers.recommend(model.sde, steps)
            t0 = time.time()
            s = scoresde.sample(model, solver=rec.solver, steps=steps, grid=rec.grid, n=n, seed=seed,
                                batch_size=batch_size, **rec.options)
            print(f"{steps} | {rec.grid} (un-fitted) | {digits_quality(s.x, dequantized=dequantized).fd:.2f} | "
                  f"{time.time() - t0:.0f}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=[])
    p.add_argument("--steps", nargs="+", type=int, default=[10, 5, 8, 15, 20])
    p.add_argument("--n-cal", type=int, default=16, help="calibration start states (default 16)")
    p.add_argument("--n-held", type=int, default=32, help="held-out start states (default 32)")
    p.add_argument("--ref-steps", type=int, default=60, help="steps of the reference solve (default 60)")
    p.add_argument("--iters", type=int, default=12, help="fit_grid iterations (default 12)")
    p.add_argument("--batch-size", type=int, default=None, help="fit on minibatches of this many states (default: all)")
    p.add_argument("--lr", type=float, default=0.15, help="fit_grid learning rate (default 0.15)")
    p.add_argument("--write", action="store_true", help="store the grids in the model files")
    p.add_argument("--fd", type=int, default=None, metavar="N", help="classifier FD of N samples (VP model)")
    p.add_argument("--fd-steps", nargs="+", type=int, default=[10, 50])
    p.add_argument("--fd-unfitted", action="store_true", help="also the recommended grid where a fitted one was used")
    p.add_argument("--prune", nargs="+", choices=sorted(MODELS), default=[],
                   help="remove these models' stored grids that are no better than the recommended grid held out")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for key in args.models:
        fit_model(key, args.steps, args)
    for key in args.prune:
        prune(key)
    if args.fd:
        fd_check(args.fd, args.fd_steps, unfitted=args.fd_unfitted)


if __name__ == "__main__":
    main()
