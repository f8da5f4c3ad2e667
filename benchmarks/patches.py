"""Classical density baselines on the 16x16 RGB patches (docs/backbones.md): test bits/dim and samples.

The data and units are those of `scoresde.bits_per_dim` on the patch data (`scoresde bpd --data
patches`): 8-bit patches (256 levels) scaled to [-1, 1] and uniformly dequantized by
`scoresde.likelihood.dequantize` (level k -> -1 + 2(k + u)/256), bits/dim = -log2 p / 768 +
log2(256 / 2) (`bpd_from_logp`, `dequantization_offset`), as benchmarks/digits.py does for the digits.

1. Fit: the train split with its mirrored copies (13,104 patches; what `scoresde train --data patches
   --flip` trains on), dequantized once. Choice: the mixtures of the sweep (covariance types x component
   counts) are fitted to the patches that lie in columns [0, 384) of the photographs (and their
   mirrors) and scored on those that start at column 384 or later (train columns [384, 512)): a held-out
   region, like the test split's, with no pixel shared between the two parts. The test split is never
   used to choose.
2. The chosen mixture and a full-covariance Gaussian are refitted on the whole dequantized train split
   and scored on the test split (`--repeats` dequantization draws; mean over patches +- standard error).
3. With `--samples N` (and the patch feature extractor, `scoresde.patch_features`), the squared Fréchet
   distance to the test patches in its features: the floor (N train patches against the test patches)
   and N samples of the chosen mixture, mapped to levels through the dequantization bins; with `--model`, also
   N samples of the score model (`--model-solver` at `--model-sample-steps`, seed `--seed`).

Seconds are CPU seconds of this process (`time.process_time`; BLAS limited to one thread).

    python benchmarks/patches.py --samples 1560       # the sweep, the baselines and the Fréchet distances
    python benchmarks/patches.py --quick              # smoke test on every 10th patch
    python benchmarks/patches.py --mixture 4,full --model scoresde/assets/patches16_vp.safetensors --samples 1560 \
        --model-repeats 1                              # the shipped patch model beside the chosen mixture
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread: CPU s = wall s
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))  # keep this folder's names from shadowing packages
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402

from scoresde.data import patches, to_levels, to_model_input  # noqa: E402
from scoresde.likelihood import bpd_from_logp, dequantization_offset, dequantize  # noqa: E402
from scoresde.patches import patch_grid  # noqa: E402

LEVELS = 256
SIZE = 16
HELD_OUT_COLUMN = 384  # choice: fit on patches inside columns [0, 384), score those starting at >= 384
COVARIANCES = ("full", "tied", "diag", "spherical")
# scikit-learn's default ridge; the dequantization noise alone has variance (2/256)^2 / 12 = 5.1e-6 per pixel
GMM_REG_COVAR = (1e-6,)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: every 10th patch, mixtures 2 x full, 4 x diag")
    for cov, default in (("full", "2,4"), ("tied", ""), ("diag", "16,64,256"), ("spherical", "")):
        p.add_argument(f"--{cov}", default=default, metavar="K,K,...",
                       help=f"component counts of {cov}-covariance mixtures in the sweep (default {default or 'none'})")
    p.add_argument("--repeats", type=int, default=2, help="dequantization draws of the test split (default 2)")
    p.add_argument("--samples", type=int, default=0,
                   help="N for the Fréchet distances in the patch features (default 0: skip)")
    p.add_argument("--mixture", default=None, metavar="K,COV",
                   help="skip the sweep and use this mixture (e.g. 4,full; reg_covar 1e-6), as a past sweep chose it")
    p.add_argument("--model", default=None, metavar="CHECKPOINT",
                   help="also a score model's test bits/dim (scoresde.bits_per_dim), on --model-n test patches")
    p.add_argument("--model-n", type=int, default=1560,
                   help="test patches for --model, evenly spaced over the split (the classical rows use the same)")
    p.add_argument("--model-method", default="dpm_solver_6m",
                   help="bits_per_dim method for --model (default dpm_solver_6m)")
    p.add_argument("--model-steps", type=int, default=30, help="its steps (default 30)")
    p.add_argument("--model-repeats", type=int, default=None,
                   help="dequantization draws for --model's bits/dim (default --repeats)")
    p.add_argument("--model-solver", default="dpm_solver++",
                   help="with --samples: the solver of --model's samples (default dpm_solver++)")
    p.add_argument("--model-sample-steps", type=int, default=20, help="its steps (default 20)")
    p.add_argument("--max-iter", type=int, default=100, help="EM iterations at most (default 100)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(x.shape[0], -1).double().numpy()


def bpd_of_density(logpdf_nats: np.ndarray) -> np.ndarray:
    """Per-patch bits/dim of 8-bit data from the log-density (nats) of its dequantized version, (N,)."""
    dim = 3 * SIZE * SIZE
    return bpd_from_logp(torch.from_numpy(logpdf_nats), dim).numpy() + dequantization_offset(LEVELS)


def mean_se(v: np.ndarray) -> tuple[float, float]:
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


def split_for_choice(quick: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (N,) over the train split with flips (the mirrored copies follow the originals):
    patches inside columns [0, HELD_OUT_COLUMN) (fit) and those starting at HELD_OUT_COLUMN or later."""
    left = patch_grid("train", SIZE).left.repeat(2)
    if quick:
        left = left[::10]
    return left + SIZE <= HELD_OUT_COLUMN, left >= HELD_OUT_COLUMN


def mixture_name(r: dict) -> str:
    return f"{r['k']} x {r['cov']}, reg_covar {r['reg']:g}"


def fit(k: int, cov: str, reg: float, x: np.ndarray, args) -> tuple[GaussianMixture, float]:
    t0 = time.process_time()
    gm = GaussianMixture(k, covariance_type=cov, reg_covar=reg, random_state=args.seed, max_iter=args.max_iter).fit(x)
    return gm, time.process_time() - t0


def sweep(xd: np.ndarray, args) -> list[dict]:
    fit_mask, val_mask = (m.numpy() for m in split_for_choice(args.quick))
    fit_x, val_x = xd[fit_mask], xd[val_mask]
    grid = {"full": (2,), "diag": (4,)} if args.quick else {
        cov: [int(k) for k in getattr(args, cov).split(",") if k.strip()] for cov in COVARIANCES}
    rows = []
    for cov, ks in grid.items():
        for k in ks:
            for reg in GMM_REG_COVAR:
                gm, sec = fit(k, cov, reg, fit_x, args)
                val_bpd = float(bpd_of_density(gm.score_samples(val_x)).mean())
                rows.append({"k": k, "cov": cov, "reg": reg, "val_bpd": val_bpd, "converged": bool(gm.converged_),
                             "seconds": sec})
                print(f"  {mixture_name(rows[-1])}: held-out {rows[-1]['val_bpd']:.3f} bits/dim ({sec:.0f} s)",
                      file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    train = patches("train", SIZE, flips=True).images
    test = patches("test", SIZE).images
    if args.quick:
        train, test = train[::10], test[::10]
    if args.model is not None:  # an evenly spaced subset of the test split, for every row
        test = test[torch.linspace(0, len(test) - 1, min(args.model_n, len(test))).round().long()]
    g = torch.Generator().manual_seed(args.seed)
    xd = flat(dequantize(to_model_input(train, LEVELS, dtype=torch.float64), LEVELS, generator=g))
    fit_mask, val_mask = split_for_choice(args.quick)
    if args.mixture is None:
        rows = sweep(xd, args)
        best = min(rows, key=lambda r: r["val_bpd"])
    else:
        k, cov = args.mixture.split(",")
        if cov not in COVARIANCES:
            raise SystemExit(f"--mixture: unknown covariance type {cov!r}; choose one of {list(COVARIANCES)}")
        rows, best = [], {"k": int(k), "cov": cov, "reg": GMM_REG_COVAR[0]}
    chosen, chosen_sec = fit(best["k"], best["cov"], best["reg"], xd, args)
    gauss, gauss_sec = fit(1, "full", 1e-6, xd, args)
    gt = torch.Generator().manual_seed(args.seed + 1)
    x_test = to_model_input(test, LEVELS, dtype=torch.float64)
    draws = [flat(dequantize(x_test, LEVELS, generator=gt)) for _ in range(args.repeats)]
    bpd = {name: mean_se(np.mean([bpd_of_density(m.score_samples(d)) for d in draws], axis=0))
           for name, m in (("gauss", gauss), ("gmm", chosen))}
    if args.model is not None:
        bpd["model"], model_sec, nfe = score_model_bpd(test, args)

    P = print
    P(f"## Classical density models on 16x16 RGB patches ({platform.machine()}, torch {torch.__version__}, "
      f"one thread, seed {args.seed})\n")
    P(f"Fit: {len(xd)} dequantized train patches (with mirrored copies); test: {len(test)} patches, "
      f"{args.repeats} dequantization draw(s); bits/dim mean over patches +- standard error.\n")
    P("| model | test bits/dim | +- SE | CPU s (fit) |")
    P("|---|---|---|---|")
    P(f"| Gaussian, full covariance | {bpd['gauss'][0]:.3f} | {bpd['gauss'][1]:.3f} | {gauss_sec:.0f} |")
    P(f"| Gaussian mixture, {mixture_name(best)} | {bpd['gmm'][0]:.3f} | {bpd['gmm'][1]:.3f} | {chosen_sec:.0f} |")
    if args.model is not None:
        P(f"| {args.model} ({args.model_method}, {args.model_steps} steps, NFE {nfe}) | {bpd['model'][0]:.3f} | "
          f"{bpd['model'][1]:.3f} | {model_sec:.0f} (bits/dim) |")
    if rows:
        sweep_table(rows, best, fit_mask, val_mask, args)
    if args.samples:
        frechet_rows(chosen, best, train, test, args)


def score_model_bpd(test: torch.Tensor, args) -> tuple[tuple[float, float], float, int]:
    """((mean, SE) over patches, CPU seconds, NFE) of a score model's test bits/dim, `--repeats` draws
    (per-patch seeds args.seed + 1 + i: other draws than the classical rows', the same distribution)."""
    import scoresde

    model = scoresde.load_model(args.model)
    t0 = time.process_time()
    repeats = args.repeats if args.model_repeats is None else args.model_repeats
    res = scoresde.bits_per_dim(model, to_model_input(test, LEVELS), levels=LEVELS, repeats=repeats,
                                method=args.model_method, steps=args.model_steps, seed=args.seed + 1)
    return mean_se(res.bpd.double().numpy()), time.process_time() - t0, res.nfe


def sweep_table(rows: list[dict], best: dict, fit_mask: torch.Tensor, val_mask: torch.Tensor, args) -> None:
    P = print
    P(f"\n### The sweep (fit: {int(fit_mask.sum())} patches in columns [0, {HELD_OUT_COLUMN}); held out: "
      f"{int(val_mask.sum())} patches starting at column >= {HELD_OUT_COLUMN}; max_iter {args.max_iter})\n")
    P("| components | covariance | reg_covar | held-out bits/dim | converged | CPU s |")
    P("|---|---|---|---|---|---|")
    for r in rows:
        mark = " (chosen)" if r is best else ""
        P(f"| {r['k']} | {r['cov']} | {r['reg']:g} | {r['val_bpd']:.3f}{mark} | {'yes' if r['converged'] else 'no'} | "
          f"{r['seconds']:.0f} |")


def frechet_rows(chosen: GaussianMixture, best: dict, train: torch.Tensor, test: torch.Tensor, args) -> None:
    """Fréchet distances in the patch features: the floor and the mixture's samples (N each)."""
    from scoresde.patch_features import patch_frechet_distance

    g = torch.Generator().manual_seed(args.seed + 2)
    n = min(args.samples, len(train) // 2)
    originals = train[: len(train) // 2]  # the floor draws from the train patches, not their mirrors
    t0 = time.process_time()
    floor = patch_frechet_distance(originals[torch.randperm(len(originals), generator=g)[:n]], test)
    floor_sec = time.process_time() - t0
    t0 = time.process_time()
    xs, _ = chosen.sample(n)
    xs = to_levels(torch.from_numpy(xs).float().reshape(-1, 3, SIZE, SIZE), LEVELS, dequantized=True).to(torch.uint8)
    mix = patch_frechet_distance(xs, test)
    mix_sec = time.process_time() - t0
    print(f"\n### Fréchet distance to the {len(test)} test patches in the patch features (N = {n})\n")
    print("| images | N | FD | FD / floor | CPU s |")
    print("|---|---|---|---|---|")
    print(f"| train patches (floor) | {n} | {floor:.3f} | 1.00 | {floor_sec:.0f} |")
    print(f"| Gaussian mixture, {mixture_name(best)}, samples | {n} | {mix:.3f} | {mix / floor:.2f} | {mix_sec:.0f} |")
    if args.model is not None:
        import scoresde

        t0 = time.process_time()
        x = scoresde.sample(scoresde.load_model(args.model), solver=args.model_solver, steps=args.model_sample_steps,
                            n=n, seed=args.seed, batch_size=256).x
        xs = to_levels(x, LEVELS, dequantized=True).to(torch.uint8)
        fd = patch_frechet_distance(xs, test)
        print(f"| {args.model} samples ({args.model_solver}, {args.model_sample_steps} steps) | {n} | {fd:.3f} | "
              f"{fd / floor:.2f} | {time.process_time() - t0:.0f} |")


if __name__ == "__main__":
    main()
