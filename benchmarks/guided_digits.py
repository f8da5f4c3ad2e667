"""Guided digits: classifier-free guidance and classifier guidance, scored by the clean digits classifier.

    python benchmarks/guided_digits.py                          # the shipped class-conditional VP model
    python benchmarks/guided_digits.py --model PATH --quick     # 10 per class, dpm_solver++ only
    python benchmarks/guided_digits.py --quick --no-fd --cfg-scales 0,1,2,4 --cg-scales 0,1,4 --plot-dir docs

For a class-conditional digits model (`--model`, a file of `scoresde.pretrained.export_model`; default
the shipped scoresde/assets/digits_vp_cond.safetensors) it draws `--n-per-class` samples of each of
the 10 classes (seed `--seed`, the same prior noise for every row) with

- classifier-free guidance (`scoresde.sample(..., y=labels, guidance_scale=w, null_label=K)`,
  K = the model's number of classes) at every w in `--cfg-scales` (w = 1: plain conditional
  sampling, w = 0: unconditional);
- classifier guidance (`scoresde.noisy_classifier.classifier_guidance`) with the noisy classifier
  `--classifier` (default the shipped VP one) at every s in `--cg-scales`, on an unconditional model:
  `--uncond-model` if given, else the conditional model's unconditional branch (y = null label);

for every solver in `--solvers` (name:steps, or a bare name for its default steps). The samples
are clipped and mapped to the 17 data levels as `scoresde.metrics.digits_quality` does (by
dequantization bin for a model trained on dequantized data), and
classified by the shipped clean digits classifier (`scoresde.classifier`, 98.89 % test accuracy).
Printed as a markdown table, per row: NFE (guided evaluations), network rows per sample, wall
time, the fraction of samples classified as the requested class (with its lowest per-class value),
and unless `--no-fd` the squared classifier Fréchet distance to the 360 test images (with the
train-vs-test floor `scoresde.metrics.digits_floor` for reference; N = 500 samples carry a bias of
about tr(C)/N above it).

With --plot-dir DIR, also DIR/guided_KIND_SOLVER.png per guidance kind (cfg, cg) and solver ("++" written
"pp"): one row per scale, one column per class, the first sample of each class (the same prior noise in
every row).

Guided samplers overshoot: large scales trade diversity (Fréchet distance) for class fidelity
(docs/guidance.md, "What law does guidance sample?").
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Python puts this script's folder first on sys.path, where a benchmark named like a package
# (benchmarks/solvers.py) would shadow that package: import the installed packages instead
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402

import scoresde  # noqa: E402
from scoresde import plots  # noqa: E402
import solvers  # noqa: E402
from scoresde.classifier import load_digits_classifier  # noqa: E402
from scoresde.metrics import digits_floor, digits_quality, quantize_digits  # noqa: E402
from scoresde.noisy_classifier import classifier_guidance, load_noisy_classifier  # noqa: E402
from scoresde.pretrained import ASSETS, load_pretrained  # noqa: E402

DEFAULT_MODEL = ASSETS / "digits_vp_cond.safetensors"
LEVELS = 17


def scales(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"scales must be >= 0, got {text!r}")
    return values


def solver_specs(text: str) -> list[tuple[str, int | None]]:
    """'dpm_solver++:20,pc:500,ode' -> [("dpm_solver++", 20), ("pc", 500), ("ode", None)]."""
    specs = []
    for item in (s for s in text.split(",") if s):
        name, _, steps = item.partition(":")
        if name not in solvers.available():
            raise argparse.ArgumentTypeError(f"unknown solver {name!r}; choose one of {sorted(solvers.available())}")
        if steps and (not steps.isdigit() or int(steps) < 1):
            raise argparse.ArgumentTypeError(f"steps of {name!r} must be a positive integer, got {steps!r}")
        specs.append((name, int(steps) if steps else None))
    return specs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help=f"class-conditional model file (default: {DEFAULT_MODEL})")
    p.add_argument("--uncond-model", default=None,
                   help="unconditional model file for classifier guidance (default: the conditional model with y = null)")
    p.add_argument("--classifier", default=None, help="noisy classifier file (default: the shipped one for the model's SDE)")
    p.add_argument("--n-per-class", type=int, default=50, help="samples per class (default 50: 500 per row)")
    p.add_argument("--cfg-scales", type=scales, default=[1.0, 2.0, 3.0, 4.0], help="CFG scales w (default 1,2,3,4)")
    p.add_argument("--cg-scales", type=scales, default=[0.0, 1.0, 2.0, 4.0],
                   help="classifier guidance scales s (default 0,1,2,4; 0 = unguided unconditional)")
    p.add_argument("--solvers", type=solver_specs, default=solver_specs("dpm_solver++:20,pc:500,ode"),
                   help="name[:steps],... (default dpm_solver++:20,pc:500,ode)")
    p.add_argument("--quick", action="store_true", help="10 per class and dpm_solver++:20 only (a smoke run)")
    p.add_argument("--no-fd", action="store_true", help="skip the classifier Fréchet distances")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--plot-dir", default=None, help="also write DIR/guided_KIND_SOLVER.png (needs the plots extra)")
    args = p.parse_args(argv)
    if args.plot_dir is not None and (problem := plots.check_plot_dir(args.plot_dir, "guided.png")):
        p.error(problem)  # fail now, not after the run
    if args.n_per_class < 1:
        p.error(f"--n-per-class must be >= 1, got {args.n_per_class}")
    if args.quick:
        args.n_per_class = min(args.n_per_class, 10)
        args.solvers = [("dpm_solver++", 20)]
    return args


def null_label_of(model) -> int:
    """The null label K of a class-conditional U-Net ScoreModel (labels 0..K-1 are classes): its
    `null_label` attribute where loading set one, else the U-Net's class count."""
    k = getattr(model, "null_label", None)
    if k is None:
        k = getattr(getattr(getattr(model, "net", None), "config", None), "num_classes", None)
    if k is None:
        raise ValueError("--model must be class-conditional (a U-Net trained with TrainConfig(conditional=True)); "
                         "this one has no classes")
    return k


def trained_dequantized(model) -> bool:
    """Whether the model learned dequantized data (its TrainConfig `dequantize`, recorded on loading)."""
    return bool(getattr(model, "config", {}).get("dequantize", False))


def score(x: torch.Tensor, y: torch.Tensor, clean, fd: bool, dequantized: bool) -> dict:
    """Fraction classified as requested (overall and the lowest per class) and the Fréchet distance."""
    with torch.no_grad():
        pred = torch.cat([clean(xb) for xb in quantize_digits(x.float(), LEVELS, dequantized=dequantized).cpu().split(1000)]).argmax(1)
    hit = (pred == y.cpu()).double()
    per_class = torch.stack([hit[y.cpu() == k].mean() for k in y.unique()])
    out = {"fraction": float(hit.mean()), "worst_class": float(per_class.min())}
    out["fd"] = digits_quality(x.float().cpu(), classifier=clean, dequantized=dequantized).fd if fd else None
    return out


def run_row(kind: str, scale: float, solver: str, steps: int | None, model, y, args, clean, classifier=None) -> dict:
    shape = model.image_shape
    adaptive = solvers.get(solver).grid_ends_only  # e.g. "ode" with dopri5: chooses its own steps, refuses `steps`
    steps = None if adaptive else steps
    start = time.perf_counter()
    if kind == "cfg":
        res = scoresde.sample(model, solver=solver, steps=steps, n=len(y), shape=shape, seed=args.seed,
                              device=args.device, y=y, guidance_scale=scale, null_label=null_label_of(model))
        rows = res.settings["guidance"]["net_rows"] / len(y)
        calls = res.settings["guidance"]["net_calls"]
    else:
        guided = classifier_guidance(model, classifier, y, scale)
        res = scoresde.sample(guided, solver=solver, steps=steps, n=len(y), shape=shape, seed=args.seed, device=args.device)
        rows, calls = guided.net_calls, guided.classifier_calls  # B rows per model call; classifier passes
    seconds = time.perf_counter() - start
    row = {"kind": kind, "scale": scale, "solver": solver, "steps": "adaptive" if adaptive else res.settings["steps"], "nfe": res.nfe,
           "rows_per_sample": rows, "calls": calls, "seconds": seconds}
    row.update(score(res.x, y, clean, not args.no_fd, trained_dequantized(model)))
    row["samples"] = res.x[::args.n_per_class].cpu()  # the first sample of each class (y is class-major)
    return row


def print_table(rows: list[dict], floor: float | None, n: int) -> None:
    print(f"\n{n} samples per row ({n // 10} per class); fraction = classified as the requested class by the clean classifier")
    if floor is not None:
        print(f"classifier Fréchet distance floor (train vs test images): {floor:.2f}")
    fd_head = " FD |" if floor is not None else ""
    print(f"\n| guidance | scale | solver | steps | NFE | net rows / sample | fraction | worst class | seconds |{fd_head}")
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if floor is not None else ""))
    for r in rows:
        kind = "classifier-free" if r["kind"] == "cfg" else "classifier"
        net = f"{r['rows_per_sample']:.0f}" if r["kind"] == "cfg" else f"{r['rows_per_sample']} (+{r['calls']} clf)"
        fd = f" {r['fd']:.2f} |" if r["fd"] is not None else ""
        print(f"| {kind} | {r['scale']:g} | {r['solver']} | {r['steps']} | {r['nfe']} | {net} | "
              f"{r['fraction']:.3f} | {r['worst_class']:.2f} | {r['seconds']:.1f} |{fd}")


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not os.path.isfile(args.model):
        raise SystemExit(f"guided_digits.py: error: no model at {args.model!r}; pass --model PATH (a class-conditional "
                         "model written by scoresde.pretrained.export_model)")
    model = load_pretrained(args.model, device=args.device)
    try:
        null_label_of(model)  # refuse an unconditional --model early
    except ValueError as e:
        raise SystemExit(f"guided_digits.py: error: {e}") from None
    uncond = model if args.uncond_model is None else load_pretrained(args.uncond_model, device=args.device)
    if uncond.image_shape != model.image_shape or uncond.sde.config() != model.sde.config():
        raise SystemExit(f"guided_digits.py: error: --uncond-model ({uncond.image_shape}, {uncond.sde!r}) differs from "
                         f"--model ({model.image_shape}, {model.sde!r})")
    sde_name = model.config.get("sde", "vp") if isinstance(getattr(model, "config", None), dict) else "vp"
    classifier = load_noisy_classifier(args.classifier, sde=sde_name, device=args.device)
    clean = load_digits_classifier()
    y = torch.arange(10).repeat_interleave(args.n_per_class).to(args.device)
    rows = []
    for solver, steps in args.solvers:
        for w in args.cfg_scales:
            rows.append(run_row("cfg", w, solver, steps, model, y, args, clean))
            print(f"cfg w={w:g} {solver}: {rows[-1]['fraction']:.3f} ({rows[-1]['seconds']:.1f} s)", file=sys.stderr)
        for s in args.cg_scales:
            rows.append(run_row("cg", s, solver, steps, uncond, y, args, clean, classifier))
            print(f"classifier s={s:g} {solver}: {rows[-1]['fraction']:.3f} ({rows[-1]['seconds']:.1f} s)", file=sys.stderr)
    floor = None if args.no_fd else digits_floor(classifier=clean)
    print_table(rows, floor, len(y))
    if args.plot_dir is not None:
        plot_rows(rows, args.plot_dir)
    return rows


def plot_rows(rows: list[dict], plot_dir: str) -> None:
    """DIR/guided_KIND_SOLVER.png: one image row per scale, one column per class."""
    names = {"cfg": ("classifier-free guidance", "w"), "cg": ("classifier guidance", "s")}
    for kind, solver in dict.fromkeys((r["kind"], r["solver"]) for r in rows):
        group = [r for r in rows if (r["kind"], r["solver"]) == (kind, solver)]
        title, letter = names[kind]
        path = os.path.join(plot_dir, f"guided_{kind}_{solver.replace('+', 'p')}.png")
        plots.plot_image_rows([r["samples"] for r in group], path,
                              row_labels=[f"{letter} = {r['scale']:g}" for r in group],
                              col_labels=[str(k) for k in range(group[0]["samples"].shape[0])],
                              title=f"{title}, {solver} ({group[0]['nfe']} NFE)")
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
