"""How many predictor-corrector steps the quick start needs: sample quality and CPU time against steps.

    python benchmarks/quickstart.py --steps 1000 &                 # the reference row: ~1.5 h on one idle thread
    python benchmarks/quickstart.py --steps 50,100,200,500         # the cheap rows, while it runs
    python benchmarks/quickstart.py --table                         # the table from every finished row

Each row is `scoresde.sample(sde="vp", solver="pc", steps=S, n=--n, seed=--seed)` (the README's
quick-start job, `scoresde sample --sde vp --solver pc --steps S`) on the same per-sample seeds
(--seed + i for sample i, so every row starts from the same noise whatever --chunk is), drawn in
chunks of --chunk samples that are saved to --cache as they finish: a killed row resumes from its
last finished chunk, and rows can run in separate processes. A finished row is scored with
`scoresde.metrics.digits_quality`: the squared Fréchet distance to the 360 test digits in the
penultimate features of the shipped digits classifier (samples mapped to the 17 data levels by
dequantization bin, since the model learned dequantized data), and the entropy of its predicted-class
histogram (log 10 = 2.303 is uniform). Fréchet distances from N samples are biased upwards by about
tr(C)/N, so the floor beside them is the distance from N train images (mean over 10 random subsets;
1,437 exist) to the same 360 test images: a sampler cannot be expected to go below it.
While rows are unfinished the table scores every row on the samples all of them have (the first m
seeds), so a partial table is a fair comparison at a smaller N (with a floor of that N).
CPU seconds (time.process_time, all threads of the process) and wall seconds are summed over chunks;
--threads (default 1) sets torch's intra-op threads. The load average is printed with the table:
wall seconds on a busy machine are not idle figures; CPU seconds are closer to them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Python puts this script's folder first on sys.path, where a benchmark named like a package
# (benchmarks/solvers.py) would shadow that package: import the installed packages instead
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np
import torch

import scoresde
from scoresde import data as datasets
from scoresde.files import atomic_write
from scoresde.metrics import classifier_features, digits_quality, frechet_distance_features

DEFAULT_STEPS = "50,100,200,500,1000"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default=DEFAULT_STEPS, help=f"comma-separated PC step counts to draw (default {DEFAULT_STEPS})")
    p.add_argument("--table", action="store_true", help="draw nothing: print the table of the finished rows in --cache")
    p.add_argument("--n", type=int, default=1000, help="samples per row (default 1000)")
    p.add_argument("--chunk", type=int, default=100, help="samples per saved chunk (default 100)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed --seed + i (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--cache", default=os.path.join("runs", "quickstart"),
                   help="folder of the finished chunks (default runs/quickstart, git-ignored)")
    args = p.parse_args(argv)
    try:
        args.steps = sorted({int(s) for s in args.steps.split(",") if s})
    except ValueError:
        p.error(f"--steps must be comma-separated integers, got {args.steps!r}")
    for name in ("n", "chunk", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.steps or min(args.steps) < 1:
        p.error(f"--steps must hold positive step counts, got {args.steps}")
    return args


def row_dir(args, steps: int) -> str:
    return os.path.join(args.cache, f"pc_steps{steps}_seed{args.seed}")


def chunk_path(args, steps: int, start: int) -> str:
    return os.path.join(row_dir(args, steps), f"chunk_{start:06d}_{min(start + args.chunk, args.n):06d}.npz")


def draw_row(model, steps: int, args) -> None:
    """Draw the row's samples after its finished ones, in chunks of --chunk, saving each chunk (samples, nfe,
    cpu and wall seconds, load) as it finishes."""
    os.makedirs(row_dir(args, steps), exist_ok=True)
    finished = load_row(args, steps)
    # resume after the samples already drawn, whatever --chunk drew them
    for start in range(finished["n"] if finished else 0, args.n, args.chunk):
        path = chunk_path(args, steps, start)
        m = min(args.chunk, args.n - start)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        res = scoresde.sample(model, solver="pc", steps=steps, n=m, seed=args.seed + start)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        meta = {"nfe": res.nfe, "cpu": cpu, "wall": wall, "threads": torch.get_num_threads(),
                "load": os.getloadavg()[0], "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}

        def write(tmp, x=res.x.numpy(), meta=meta):
            with open(tmp, "wb") as f:
                np.savez(f, x=x, meta=json.dumps(meta))

        atomic_write(path, write)
        print(f"[pc {steps} steps] samples {start}..{start + m - 1}: NFE {res.nfe}, {cpu:.0f} s CPU, {wall:.0f} s wall, "
              f"load {meta['load']:.1f} ({meta['finished']})", file=sys.stderr, flush=True)


def load_row(args, steps: int) -> dict | None:
    """The row's finished samples from sample 0 on (chunks of any --chunk, up to the first gap) and their
    summed times; None when it has none."""
    folder = row_dir(args, steps)
    spans = []
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        parts = name[:-len(".npz")].split("_") if name.startswith("chunk_") and name.endswith(".npz") else []
        if len(parts) == 3:
            spans.append((int(parts[1]), int(parts[2]), os.path.join(folder, name)))
    xs, metas, done = [], [], 0
    for start, stop, path in sorted(spans):
        if start != done or stop > args.n:
            continue
        with np.load(path) as f:
            xs.append(torch.from_numpy(f["x"]))
            metas.append(json.loads(str(f["meta"])))
        done = stop
    if not xs:
        return None
    return {"steps": steps, "x": torch.cat(xs), "n": done, "nfe_per_sample": metas[0]["nfe"],
            "cpu": sum(m["cpu"] for m in metas), "wall": sum(m["wall"] for m in metas),
            "load": max(m["load"] for m in metas), "threads": metas[0]["threads"]}


def floor(n: int, seed: int) -> float:
    """Fréchet distance of min(n, 1437) train digits to the test digits (mean over 10 subsets when fewer)."""
    levels = 17
    train = datasets.to_model_input(datasets.digits("train").images, levels)
    test = datasets.to_model_input(datasets.digits("test").images, levels)
    train_feats, _ = classifier_features(train)
    test_feats, _ = classifier_features(test)
    m = min(n, train.shape[0])
    if m == train.shape[0]:
        return frechet_distance_features(train_feats, test_feats)
    g = torch.Generator().manual_seed(seed)
    return float(np.mean([frechet_distance_features(train_feats[torch.randperm(train.shape[0], generator=g)[:m]],
                                                    test_feats) for _ in range(10)]))


def table(args, dequantized: bool) -> list[str]:
    """The markdown table: every row scored on the samples all rows have finished (the first m seeds)."""
    steps = sorted(_finished_or_requested(args))
    rows = [r for r in (load_row(args, s) for s in steps) if r is not None]
    missing = [s for s in steps if s not in {r["steps"] for r in rows}]
    m = min((r["n"] for r in rows), default=0)
    if m < 2:
        return [f"no samples in {args.cache} yet for every row (rows with none: {missing})"]
    fl = floor(m, args.seed)
    lines = [f"PC sampler (`scoresde.sample(sde=\"vp\", solver=\"pc\", steps=S)`, shipped digits VP model), "
             f"the {m} samples of seeds {args.seed}..{args.seed + m - 1}; classifier FD to the 360 test digits; "
             f"floor ({min(m, 1437)} train digits vs test) {fl:.2f}",
             "",
             "| steps | NFE | FD | FD / floor | class entropy | CPU s | CPU ms per NFE at batch 64 | wall s | threads | max load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = digits_quality(r["x"][:m], dequantized=dequantized)
        # times are the row's own (all r["n"] samples drawn so far), per NFE and 64 samples
        per64 = 1000 * r["cpu"] / r["nfe_per_sample"] / (r["n"] / 64)
        lines.append(f"| {r['steps']} | {r['nfe_per_sample']} | {q.fd:.2f} | {q.fd / fl:.2f} | {q.entropy:.3f} | "
                     f"{r['cpu'] * m / r['n']:.0f} | {per64:.0f} | {r['wall'] * m / r['n']:.0f} | {r['threads']} | "
                     f"{r['load']:.1f} |")
    partial = {r["steps"]: r["n"] for r in rows if r["n"] < args.n}
    if partial or missing:
        lines += ["", f"unfinished (of {args.n} samples): samples drawn so far {partial or '-'}; "
                      f"rows with none {missing or '-'}; CPU and wall s above are for {m} samples"]
    return lines


def _finished_or_requested(args) -> set[int]:
    """Step counts asked for, plus any row with chunks in the cache for this seed."""
    found = set(args.steps)
    if os.path.isdir(args.cache):
        for name in os.listdir(args.cache):
            if name.startswith("pc_steps") and name.endswith(f"_seed{args.seed}"):
                found.add(int(name[len("pc_steps"):].split("_")[0]))
    return found


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = scoresde.default_model("vp")
    dequantized = bool(getattr(model, "config", {}).get("dequantize", False))
    if not args.table:
        for steps in args.steps:
            draw_row(model, steps, args)
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs at "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("\n".join(table(args, dequantized)))


if __name__ == "__main__":
    main()
