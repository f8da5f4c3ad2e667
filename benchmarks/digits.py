"""How good the shipped digits models are: test bits/dim and sample quality, beside classical baselines.

    python benchmarks/digits.py --quick                 # vp only, 500 samples, a few minutes on one CPU thread
    python benchmarks/digits.py                          # everything at 2,000 samples: about 2 h on one CPU thread
    python benchmarks/digits.py --long-sdes vp --long-solvers euler_maruyama --long-n 1000 --repeats 2
                                                         # what docs/training.md reports: ~25 min on one thread

Prints markdown tables (issue 6, "Quality bar"):

1. bits/dim of the 360 test digits (17 levels, uniform dequantization, `--repeats` draws): each shipped
   model through the probability-flow ODE with `scoresde.bits_per_dim`'s defaults (dopri5,
   rtol = atol = 1e-5, one Rademacher probe), mean over images +- its standard error, and NFE per
   pass; beside scikit-learn density models fitted to the dequantized train split: a full-covariance
   Gaussian and the Gaussian mixture chosen on held-out likelihood (below).
2. the Gaussian-mixture sweep: component counts x covariance types fitted to 80 % of the dequantized
   train split, bits/dim on the other 20 % (the choice; the test split is never used to choose), and
   the classifier Fréchet distance of `--n` samples of each.
3. sample quality: for each model and sampler at 10, 20, 50 and 1000 NFE, `--n` samples (seed 0),
   clipped and rounded to the 17 data levels, the squared Fréchet distance to the 360 test images in
   the penultimate features of the shipped digits classifier (`scoresde.metrics.digits_quality`), its
   ratio to the floor, and the entropy of the predicted-class histogram (log 10 = 2.303 is uniform);
   beside the floor (train images against the test images) and the chosen mixture's samples.

Fréchet distances estimated from N samples are biased upwards by about tr(C)/N, so the floor is
computed from min(N, 1437) train images (1,437 is all there is that is not the test set; averaged
over random subsets when fewer), and the bias left between the floor and N samples is printed; the
1000-NFE rows may use fewer samples (`--long-n`), with a floor of their own size.
The chosen mixture was fitted to dequantized data: its samples are mapped back to levels by the
dequantization bins (k = floor((x + 1) K / 2)), as the data were dequantized, not by rounding.
The sample grids (the first 64 samples of each model's row with the lowest FD / floor) go to
`--grid-dir`/samples_{sde}.png.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time

# Python puts this script's folder first on sys.path, where a benchmark named like a package
# (benchmarks/solvers.py) would shadow that package: import the installed packages instead
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

import scoresde
from scoresde import data as datasets
from scoresde.likelihood import dequantization_offset, dequantize
from scoresde.metrics import (
    class_entropy,
    class_histogram,
    classifier_features,
    frechet_distance_features,
    quantize_digits,
)
from scoresde.pretrained import ASSETS, DEFAULT_MODELS
from scoresde.train import save_image_grid

LEVELS = 17
SDES = ("vp", "subvp", "ve")
# (solver, NFE): steps = NFE / nfe_per_step
FULL_CONFIGS = [
    ("dpm_solver++", 10), ("unipc", 10),
    ("dpm_solver++", 20), ("unipc", 20),
    ("dpm_solver++", 50), ("unipc", 50),
    ("euler_maruyama", 1000), ("pc", 1000),
]
QUICK_CONFIGS = [("dpm_solver++", 10), ("unipc", 10), ("dpm_solver++", 20), ("unipc", 20), ("euler_maruyama", 1000)]
# covariance type -> component counts (full covariances overfit beyond ~10 components on 1,150 images)
GMM_SWEEP = {"full": (1, 2, 5, 10, 20), "tied": (5, 10, 20, 40), "diag": (10, 20, 40, 80, 160)}
GMM_REG_COVAR = (1e-6, 1e-3)  # scikit-learn's default, and a ridge near the dequantization noise variance (1.2e-3)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="vp only, 500 samples, fewer samplers, 1 dequantization draw")
    p.add_argument("--sdes", default=None, help="comma-separated shipped models (default: vp,subvp,ve; vp with --quick)")
    p.add_argument("--n", type=int, default=None, help="samples per row (default 2000; 500 with --quick)")
    p.add_argument("--long-sdes", default=None,
                   help="models that get the 1000-NFE rows (default: all of --sdes); 'none' for none")
    p.add_argument("--long-solvers", default=None,
                   help="comma-separated samplers of the 1000-NFE rows (default: euler_maruyama,pc; euler_maruyama with --quick)")
    p.add_argument("--long-n", type=int, default=None,
                   help="samples of the 1000-NFE rows (default --n); their floor is then computed for this size too")
    p.add_argument("--repeats", type=int, default=None, help="dequantization draws for bits/dim (default 3; 1 with --quick)")
    p.add_argument("--skip-bpd", action="store_true", help="skip the score models' bits/dim (the slow ODE part)")
    p.add_argument("--grid-dir", default="docs", help="folder of the samples_{sde}.png grids ('' to write none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch and BLAS CPU threads (on a shared 2-core machine more threads stall)")
    args = p.parse_args(argv)
    args.sdes = [s for s in (args.sdes or ("vp" if args.quick else ",".join(SDES))).split(",") if s]
    for s in args.sdes:
        if s not in SDES:
            p.error(f"unknown sde {s!r}; choose from {list(SDES)}")
    if args.long_sdes is None:
        args.long_sdes = list(args.sdes)
    else:
        args.long_sdes = [] if args.long_sdes == "none" else [s for s in args.long_sdes.split(",") if s]
    args.n = args.n or (500 if args.quick else 2000)
    args.long_n = args.long_n or args.n
    args.repeats = args.repeats or (1 if args.quick else 3)
    configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    if args.long_solvers is not None:
        long = [s for s in args.long_solvers.split(",") if s]
        configs = [c for c in configs if c[1] < 1000] + [(s, 1000) for s in long]
    args.configs = configs
    return args


# --- helpers -------------------------------------------------------------------------------------


def to_levels_from_bins(x: np.ndarray) -> np.ndarray:
    """Continuous values on the dequantized scale -> the 17-level grid {-1 + 2k/16}, k = floor((x + 1) K / 2)."""
    k = np.clip(np.floor((x + 1.0) * LEVELS / 2.0), 0, LEVELS - 1)
    return 2.0 * k / (LEVELS - 1) - 1.0


def mixture_name(r: dict) -> str:
    return f"{r['k']} x {r['cov']}, reg_covar {r['reg']:g}"


def flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(x.shape[0], -1).double().numpy()


def bpd_of_density(logpdf_nats: np.ndarray) -> np.ndarray:
    """Per-image bits/dim of 17-level data from the log-density (nats) of its dequantized version."""
    return -logpdf_nats / (64 * math.log(2.0)) + dequantization_offset(LEVELS)


def mean_se(v: np.ndarray) -> tuple[float, float]:
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


def quality(x: torch.Tensor, ref_feats: torch.Tensor, *, dequantized: bool = False) -> tuple[float, float]:
    """(squared Fréchet distance to the reference features, class-histogram entropy) of images in [-1, 1],
    mapped to levels as scoresde.metrics.digits_quality does (by bin when the model learned dequantized data)."""
    feats, logits = classifier_features(quantize_digits(x.float(), LEVELS, dequantized=dequantized))
    return frechet_distance_features(feats, ref_feats), class_entropy(class_histogram(logits))


# --- parts ---------------------------------------------------------------------------------------


def floor_row(train: torch.Tensor, test_feats: torch.Tensor, n: int, seed: int) -> dict:
    """Train-versus-test distance from min(n, 1437) train images (mean over 10 random subsets when fewer)."""
    train_feats, logits = classifier_features(train)
    m = min(n, train.shape[0])
    if m == train.shape[0]:
        fds = [frechet_distance_features(train_feats, test_feats)]
    else:
        g = torch.Generator().manual_seed(seed)
        fds = [frechet_distance_features(train_feats[torch.randperm(train.shape[0], generator=g)[:m]], test_feats)
               for _ in range(10)]
    # bias of a Fréchet distance from N samples ~ tr(C)/N: what n samples would have instead of m
    tr_c = float(torch.var(train_feats.double(), dim=0).sum())
    return {"fd": float(np.mean(fds)), "m": m, "subsets": len(fds), "entropy": class_entropy(class_histogram(logits)),
            "bias_gap": tr_c * (1.0 / m - 1.0 / n)}


def gmm_sweep(train: torch.Tensor, test: torch.Tensor, test_feats: torch.Tensor, args) -> dict:
    """Fit the mixtures on dequantized data, choose by held-out bits/dim, score test bits/dim and samples."""
    g = torch.Generator().manual_seed(args.seed)
    xd = flat(dequantize(train, LEVELS, generator=g))
    perm = torch.randperm(len(xd), generator=torch.Generator().manual_seed(args.seed)).numpy()
    n_val = len(xd) // 5
    fit_x, val_x = xd[perm[n_val:]], xd[perm[:n_val]]
    sweep = []
    for cov, ks in GMM_SWEEP.items():
        for k, reg in ((k, reg) for k in ks for reg in GMM_REG_COVAR):
            t0 = time.perf_counter()
            gm = GaussianMixture(k, covariance_type=cov, reg_covar=reg, random_state=args.seed, max_iter=500).fit(fit_x)
            val_bpd = float(bpd_of_density(gm.score_samples(val_x)).mean())
            xs, _ = gm.sample(args.n)
            fd, ent = quality(torch.from_numpy(to_levels_from_bins(xs)).float().reshape(-1, 1, 8, 8), test_feats)
            sweep.append({"k": k, "cov": cov, "reg": reg, "val_bpd": val_bpd, "fd": fd, "entropy": ent,
                          "seconds": time.perf_counter() - t0})
    best = min(sweep, key=lambda r: r["val_bpd"])
    # refit the chosen one on the whole dequantized train split; the full-covariance Gaussian likewise
    chosen = GaussianMixture(best["k"], covariance_type=best["cov"], reg_covar=best["reg"], random_state=args.seed,
                             max_iter=500).fit(xd)
    gauss = GaussianMixture(1, covariance_type="full", random_state=args.seed).fit(xd)
    gt = torch.Generator().manual_seed(args.seed + 1)
    draws = [flat(dequantize(test, LEVELS, generator=gt)) for _ in range(args.repeats)]
    bpd = {name: mean_se(np.mean([bpd_of_density(m.score_samples(d)) for d in draws], axis=0))
           for name, m in (("gauss", gauss), ("gmm", chosen))}
    xs, _ = chosen.sample(args.n)
    xs = torch.from_numpy(to_levels_from_bins(xs)).float().reshape(-1, 1, 8, 8)
    fd, ent = quality(xs, test_feats)
    return {"sweep": sweep, "best": best, "bpd": bpd, "fd": fd, "entropy": ent,
            "best_fd_row": min(sweep, key=lambda r: r["fd"])}


def model_bpd(model, test: torch.Tensor, args) -> dict:
    t0 = time.perf_counter()
    res = scoresde.bits_per_dim(model, test, levels=LEVELS, repeats=args.repeats,
                                generator=torch.Generator().manual_seed(args.seed + 1))
    m, se = mean_se(res.bpd.double().numpy())
    return {"bpd": m, "se": se, "nfe": res.nfe / args.repeats, "seconds": time.perf_counter() - t0}


def model_samples(model, sde: str, test_feats: torch.Tensor, args) -> list[dict]:
    import solvers

    rows = []
    for solver, nfe in args.configs:
        if nfe >= 1000 and sde not in args.long_sdes:
            continue
        steps = nfe // solvers.get(solver).nfe_per_step
        n = args.long_n if nfe >= 1000 else args.n
        t0 = time.perf_counter()
        s = scoresde.sample(model, solver=solver, steps=steps, n=n, seed=args.seed)
        fd, ent = quality(s.x, test_feats, dequantized=bool(getattr(model, "config", {}).get("dequantize", False)))
        rows.append({"sde": sde, "solver": solver, "steps": steps, "nfe": s.nfe, "n": n, "fd": fd, "entropy": ent,
                     "seconds": time.perf_counter() - t0, "x": s.x[:64]})
        print(f"  [{sde}] {solver} {steps} steps: NFE {s.nfe}, FD {fd:.2f} ({rows[-1]['seconds']:.0f} s)", file=sys.stderr)
    return rows


# --- report --------------------------------------------------------------------------------------


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    command = "python benchmarks/digits.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with threadpool_limits(args.threads):
        train_data, test_data = datasets.digits("train"), datasets.digits("test")
        train = datasets.to_model_input(train_data.images, LEVELS)
        test = datasets.to_model_input(test_data.images, LEVELS)
        test_feats, _ = classifier_features(test)

        floors = {n: floor_row(train, test_feats, n, args.seed) for n in sorted({args.n, args.long_n}, reverse=True)}
        floor = floors[args.n]
        print(f"floor {floor['fd']:.2f}; fitting the mixtures ...", file=sys.stderr)
        gmm = gmm_sweep(train, test, test_feats, args)
        print(f"mixture: {gmm['best']['k']} x {gmm['best']['cov']}, FD {gmm['fd']:.2f}", file=sys.stderr)

        bpd_rows, sample_rows, models = {}, [], {}
        for sde in args.sdes:
            model = scoresde.default_model(sde)
            models[sde] = model
            if not args.skip_bpd:
                bpd_rows[sde] = model_bpd(model, test, args)
                print(f"  [{sde}] bits/dim {bpd_rows[sde]['bpd']:.3f} ({bpd_rows[sde]['seconds']:.0f} s)", file=sys.stderr)
            sample_rows += model_samples(model, sde, test_feats, args)
    total = time.perf_counter() - start

    # grids: the first 64 samples of each model's row with the lowest FD / floor
    grids = {}
    if args.grid_dir:
        os.makedirs(args.grid_dir, exist_ok=True)
        for sde in args.sdes:
            best = min((r for r in sample_rows if r["sde"] == sde), key=lambda r: r["fd"] / floors[r["n"]]["fd"])
            path = os.path.join(args.grid_dir, f"samples_{sde}.png")
            save_image_grid(best["x"], path, scale=4)
            grids[sde] = (path, best)

    P = print
    P(f"## digits benchmark ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)\n")
    P(f"`{command}` (torch {torch.__version__}, {args.threads} CPU thread(s)); total {total / 60:.1f} min\n")
    for sde, model in models.items():
        mtime = datetime.datetime.fromtimestamp(os.path.getmtime(ASSETS / DEFAULT_MODELS[sde]), datetime.timezone.utc)
        P(f"- shipped `{sde}`: {DEFAULT_MODELS[sde]}, training step {model.step}, loss {model.config['loss']}, "
          f"time sampling {model.config['time_sampling']}, file of {mtime:%Y-%m-%d %H:%M} UTC")
    P()

    P(f"### Test bits/dim (360 test images, 17 levels, uniform dequantization, {args.repeats} draw(s); "
      "mean over images +- standard error)\n")
    P("| model | bits/dim | +- SE | NFE per pass (batch of 360) | seconds |")
    P("|---|---|---|---|---|")
    for sde, r in bpd_rows.items():
        P(f"| {sde} (PF ODE, dopri5 1e-5) | {r['bpd']:.3f} | {r['se']:.3f} | {r['nfe']:.0f} | {r['seconds']:.0f} |")
    for name, label in (("gauss", "Gaussian, full covariance"), ("gmm", f"Gaussian mixture, {mixture_name(gmm['best'])}")):
        m, se = gmm["bpd"][name]
        P(f"| {label} (scikit-learn) | {m:.3f} | {se:.3f} | - | - |")
    P()

    P(f"### Gaussian mixtures (fit: 80 % of the dequantized train split; bits/dim: the other 20 %; "
      f"FD: {args.n} samples of that fit against the test split; the chosen one is then refitted to the whole "
      "train split)\n")
    P("| components | covariance | reg_covar | held-out bits/dim | FD | class entropy | seconds |")
    P("|---|---|---|---|---|---|---|")
    for r in gmm["sweep"]:
        mark = " (chosen)" if r is gmm["best"] else ""
        P(f"| {r['k']} | {r['cov']}{mark} | {r['reg']:g} | {r['val_bpd']:.3f} | {r['fd']:.1f} | {r['entropy']:.3f} | "
          f"{r['seconds']:.1f} |")
    P()

    P(f"### Sample quality ({args.n} samples per row, seed {args.seed}; squared Fréchet distance (FD) to the 360 "
      "test images in the digits classifier's penultimate features)\n")
    P("FD estimated from N images is biased upwards by about tr(C)/N, so the floor uses as many real images as "
      "the rows use samples, up to the 1,437 train images (all the real images outside the test split): ", end="")
    notes = []
    for n, f in floors.items():
        if f["m"] == n:
            notes.append(f"for N = {n}, {f['m']} train images (mean over {f['subsets']} random subsets)")
        else:
            notes.append(f"for N = {n}, all {f['m']} train images, whose bias exceeds that of {n} samples by "
                         f"tr(C) (1/{f['m']} - 1/{n}) = {f['bias_gap']:.2f}: that floor is this much generous")
    P("; ".join(notes) + ". Each row's FD / floor uses the floor of its N.\n")
    P("| model | sampler | steps | NFE | N | FD | FD / floor | class entropy | seconds |")
    P("|---|---|---|---|---|---|---|---|---|")
    for n, f in floors.items():
        P(f"| train split (floor) | - | - | - | {f['m']} | {f['fd']:.2f} | 1.00 | {f['entropy']:.3f} | - |")
    P(f"| Gaussian mixture {mixture_name(gmm['best'])} | - | - | - | {args.n} | {gmm['fd']:.2f} | "
      f"{gmm['fd'] / floor['fd']:.2f} | {gmm['entropy']:.3f} | - |")
    for r in sample_rows:
        P(f"| {r['sde']} | {r['solver']} | {r['steps']} | {r['nfe']} | {r['n']} | {r['fd']:.2f} | "
          f"{r['fd'] / floors[r['n']]['fd']:.2f} | {r['entropy']:.3f} | {r['seconds']:.0f} |")
    P()

    for sde, (path, r) in grids.items():
        P(f"- `{path}`: the first 64 samples of {sde} with {r['solver']}, {r['steps']} steps ({r['nfe']} NFE)")
    bf = gmm["best_fd_row"]
    P(f"- lowest FD of any mixture in the sweep (fitted to 80 % of the train split): {bf['fd']:.2f} ({mixture_name(bf)})")
    if "vp" in bpd_rows:
        P(f"- target, VP bits/dim <= 1.70: {bpd_rows['vp']['bpd']:.3f} -> {'met' if bpd_rows['vp']['bpd'] <= 1.70 else 'NOT met'}")
    vp20 = [r for r in sample_rows if r["sde"] == "vp" and r["nfe"] <= 20 and r["nfe"] > 10]
    if vp20:
        b = min(vp20, key=lambda r: r["fd"])
        P(f"- target, VP at 20 NFE closer to the floor than the mixture: {b['solver']} FD {b['fd']:.2f} vs mixture "
          f"{gmm['fd']:.2f} -> {'met' if b['fd'] < gmm['fd'] else 'NOT met'}"
          f" (against the sweep's lowest-FD mixture: {'met' if b['fd'] < bf['fd'] else 'NOT met'})")
    vp1000 = [r for r in sample_rows if r["sde"] == "vp" and r["nfe"] >= 1000]
    if vp1000:
        b = min(vp1000, key=lambda r: r["fd"])
        fl = floors[b["n"]]["fd"]
        P(f"- target, VP at 1000 NFE within 2x the floor: {b['solver']} FD {b['fd']:.2f} = {b['fd'] / fl:.2f} x floor "
          f"(N = {b['n']}) -> {'met' if b['fd'] <= 2 * fl else 'NOT met'}")


if __name__ == "__main__":
    main()
