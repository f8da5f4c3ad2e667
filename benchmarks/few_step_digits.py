"""Few-step digits models against their teacher: classifier Fréchet distance at 1, 2 and 4 evaluations.

    python benchmarks/few_step_digits.py                              # the shipped few-step models, 2,000 samples
    python benchmarks/few_step_digits.py --model runs/digits_vp_cd/checkpoint.safetensors --n 500
    python benchmarks/few_step_digits.py --grid-dir docs              # also write the sample grids
    python benchmarks/few_step_digits.py --teacher-solvers ""         # the few-step rows only (--teacher-only: the others)
    python benchmarks/few_step_digits.py --model runs/reflow1/checkpoint.safetensors \
        --teacher runs/flow/checkpoint.safetensors                    # a rectified flow beside its flow teacher
    python benchmarks/few_step_digits.py --model runs/flow/checkpoint.safetensors --sampler ddim --grid uniform_t \
        --teacher-solvers ""                                          # a flow model in 1, 2, 4 Euler steps

Rows (issue 19's table, docs/few_step.md): each few-step model (the shipped `default_model("vp", kind=K)`
for K in FEW_STEP_MODELS that are present, or --model files) at --nfes steps of its own sampler
(`scoresde.sampling.model_sampler`: `consistency` for a consistency model, DDIM on uniform_t for a
"reflow" run's file or on its recorded grid for a "pd" run's) or of --sampler on --grid; a consistency
model walks its fitted grid when its file stores one for that step count (benchmarks/fit_consistency_times.py),
and then also the default Karras grid, rho 7, ending at the model's boundary time. Beside them the teacher (the
shipped VP model, or the --teacher file) with --teacher-solvers at --teacher-nfes. Each row draws --n samples from seed --seed (per-sample seeds
seed + i, so rows share their noise) and scores them with `scoresde.metrics.digits_quality`'s measure: the
squared Fréchet distance to the 360 test digits in the penultimate features of the shipped digits
classifier (samples mapped to the 17 levels by dequantization bin: the models learned dequantized data),
beside the floor (min(n, 1437) train images against the same test images, mean of 10 random subsets when
fewer) and the entropy of the predicted-class histogram (log 10 = 2.303 is uniform). The training cost
column reads the model file: its step count, and the CPU minutes recorded in docs/few_step.md are
measured by the training commands there (this script does not train). CPU seconds per row are
time.process_time of the sampling (--threads torch threads).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch

import scoresde
import solvers
from scoresde import data as datasets
from scoresde.metrics import class_entropy, class_histogram, classifier_features, frechet_distance_features, quantize_digits
from scoresde.pretrained import ASSETS, FEW_STEP_MODELS, default_model
from scoresde.train import load_model, save_image_grid

LEVELS = 17


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=None,
                   help="a few-step model file (repeatable; default: the shipped few-step models)")
    p.add_argument("--n", type=int, default=2000, help="samples per row (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed --seed + i (default 0)")
    p.add_argument("--nfes", default="1,2,4", help="few-step evaluations (default 1,2,4)")
    p.add_argument("--sampler", default=None,
                   help="the few-step models' solver, one evaluation per step (default: each model's own)")
    p.add_argument("--grid", default=None, help="with --sampler: its grid (default: the solver's)")
    p.add_argument("--teacher", default=None, help="the teacher's model file (default: the shipped digits_vp)")
    p.add_argument("--teacher-solvers", default="unipc,dpm_solver++,auto",
                   help="teacher solvers (default unipc,dpm_solver++,auto)")
    p.add_argument("--teacher-nfes", default="5,10,20", help="teacher evaluations (default 5,10,20)")
    p.add_argument("--teacher-only", action="store_true", help="only the teacher's rows")
    p.add_argument("--batch-size", type=int, default=500, help="samples per batch (default 500)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--grid-dir", default=None, help="write each few-step model's 64-sample grids here")
    args = p.parse_args(argv)
    args.nfes = [int(v) for v in args.nfes.split(",")]
    args.teacher_nfes = [int(v) for v in args.teacher_nfes.split(",")]
    args.teacher_solvers = [v for v in args.teacher_solvers.split(",") if v]
    for name in args.teacher_solvers:
        if name != "auto" and name not in solvers.available():
            p.error(f"--teacher-solvers: unknown solver {name!r}; choose from {sorted(solvers.available())} or auto")
    if args.sampler is not None:
        if args.sampler not in solvers.available():
            p.error(f"--sampler: unknown solver {args.sampler!r}; choose from {sorted(solvers.available())}")
        per_step = solvers.get(args.sampler).nfe_per_step
        if per_step != 1:
            p.error(f"--sampler: {args.sampler!r} takes {per_step} evaluations per step; the few-step rows need one")
    if args.grid is not None and args.sampler is None:
        p.error("--grid needs --sampler (each model's own sampler walks its own grid)")
    if args.n < 2 or min(args.nfes + args.teacher_nfes) < 1:
        p.error("--n must be at least 2 and every NFE at least 1")
    return args


def score(x: torch.Tensor, ref_feats: torch.Tensor) -> tuple[float, float]:
    """(Fréchet distance to the test features, class entropy) of samples in [-1, 1] from a dequantized model."""
    feats, logits = classifier_features(quantize_digits(x.float(), LEVELS, dequantized=True))
    return frechet_distance_features(feats, ref_feats), class_entropy(class_histogram(logits))


def floor(n: int, ref_feats: torch.Tensor, seed: int) -> float:
    """Train-versus-test distance from min(n, 1437) train images (mean of 10 random subsets when fewer)."""
    train = datasets.to_model_input(datasets.digits("train").images, LEVELS)
    feats, _ = classifier_features(train)
    m = min(n, len(feats))
    if m == len(feats):
        return frechet_distance_features(feats, ref_feats)
    g = torch.Generator().manual_seed(seed)
    return sum(frechet_distance_features(feats[torch.randperm(len(feats), generator=g)[:m]], ref_feats)
               for _ in range(10)) / 10


def row(model, name: str, solver: str | None, steps: int, args, ref_feats, grid: str | None = None) -> dict:
    """One table row: n samples of `model` with `solver` (None: the model's own, `model_sampler`) on `steps` steps of
    `grid` (None: the model's fitted grid for them when it carries one, else the solver's or the model's own grid)."""
    start = time.process_time()
    s = scoresde.sample(model, solver=solver, steps=steps, grid=grid, n=args.n, seed=args.seed,
                        batch_size=args.batch_size)
    cpu = time.process_time() - start
    fd, ent = score(s.x, ref_feats)
    chosen = s.settings.get("solver", solver) if solver in ("auto", None) else solver
    nfe = s.settings["nfe_per_chunk"][0]  # per sample: s.nfe sums the batches' evaluations
    grid_used = s.settings["grid"]
    print(f"  {name} {chosen} NFE {nfe} ({grid_used} grid): FD {fd:.2f} ({cpu:.0f} CPU s)", file=sys.stderr, flush=True)
    return {"name": name, "solver": chosen, "nfe": nfe, "grid": grid_used, "fd": fd, "entropy": ent, "cpu": cpu,
            "x": s.x[:64]}


def few_step_models(args) -> list[tuple[str, object]]:
    if args.model:
        return [(path, load_model(path)) for path in args.model]
    return [(f"{kind} ({files['vp']})", default_model("vp", kind=kind)) for kind, files in FEW_STEP_MODELS.items()
            if (ASSETS / files["vp"]).is_file()]


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    test = datasets.to_model_input(datasets.digits("test").images, LEVELS)
    ref_feats, _ = classifier_features(test)
    rows = []
    for name, model in ([] if args.teacher_only else few_step_models(args)):
        for nfe in args.nfes:
            rows.append(row(model, name, args.sampler, nfe, args, ref_feats, grid=args.grid)
                        | {"step": getattr(model, "step", None), "default": True})
            if rows[-1]["grid"] == "fitted":  # the model's stored times, beside the solver's default (Karras) grid
                used = rows[-1]["solver"]
                rows.append(row(model, name, used, nfe, args, ref_feats, grid=solvers.get(used).default_grid)
                            | {"step": getattr(model, "step", None)})
    teacher = default_model("vp") if args.teacher is None else load_model(args.teacher)
    teacher_name = "teacher (digits_vp)" if args.teacher is None else f"teacher ({args.teacher})"
    for solver in args.teacher_solvers:
        for nfe in args.teacher_nfes:
            steps = nfe if solver == "auto" else max(1, nfe // solvers.get(solver).nfe_per_step)
            rows.append(row(teacher, teacher_name, solver, steps, args, ref_feats) | {"step": teacher.step})
    fl = floor(args.n, ref_feats, args.seed)
    print(f"\n{args.n} samples per row, seed {args.seed}; floor (train vs test, {min(args.n, 1437)} images): {fl:.2f}; "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| model | sampler | NFE | grid | FD | FD / floor | class entropy | training steps | sampling CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['solver']} | {r['nfe']} | {r['grid']} | {r['fd']:.2f} | {r['fd'] / fl:.2f} "
              f"| {r['entropy']:.3f} "
              f"| {r['step']} | {r['cpu']:.0f} |")
    if args.grid_dir:
        os.makedirs(args.grid_dir, exist_ok=True)
        for r in rows:
            if r.get("default"):  # a few-step model's default run (its fitted grid when it has one)
                stem = os.path.splitext(os.path.basename(r["name"].split("(")[-1].rstrip(")")))[0]
                path = os.path.join(args.grid_dir, f"few_step_{stem}_nfe{r['nfe']}.png")
                save_image_grid(r["x"], path, nrow=8, scale=4)
                print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
