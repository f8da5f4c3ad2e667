"""Inpainting test digits with the shipped VP model: how often the result keeps the digit's class.

For each mask (True = known pixel) of MASKS, `scoresde.inpaint` fills the hidden pixels of the first
--per-class test digits of each class (seed --seed; `--solver`, `--steps`), and the shipped clean digits
classifier (`scoresde.classifier`, 98.89 % test accuracy) reads the result, quantized to the 17 data
levels as `scoresde.metrics.digits_quality` does. Printed per mask: the fraction of pixels known, the
fraction of inpainted digits classified as the original's class (the originals themselves: the first
row), the RMS difference to the original on the hidden pixels (in [-1, 1] units; the hidden part is a
guess, so this is not an error to drive to zero) and the wall time.

With --plot-dir DIR, also DIR/inpainting_digits.png: the first test digit of each class (columns), the
original, then per mask the masked input (hidden pixels blue) and the inpainted result.

    python benchmarks/inpainting_digits.py                     # PC, 100 steps (200 NFE), 100 digits
    python benchmarks/inpainting_digits.py --per-class 3 --plot-dir docs    # the figure of docs/guidance.md
    python benchmarks/inpainting_digits.py --per-class 2 --steps 10    # a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# benchmarks/solvers.py would shadow the `solvers` package: keep this folder off the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402

import solvers  # noqa: E402
from scoresde import default_model, inpaint, plots  # noqa: E402
from scoresde.classifier import load_digits_classifier  # noqa: E402
from scoresde.data import digits, to_model_input  # noqa: E402
from scoresde.metrics import quantize_digits  # noqa: E402


def masks(seed: int) -> dict[str, torch.Tensor]:
    """name -> bool (1, 8, 8) mask, True where the pixel is known."""
    known = {name: torch.ones(1, 8, 8, dtype=torch.bool) for name in ("right half hidden", "bottom half hidden",
                                                                      "centre 4x4 hidden")}
    known["right half hidden"][:, :, 4:] = False
    known["bottom half hidden"][:, 4:, :] = False
    known["centre 4x4 hidden"][:, 2:6, 2:6] = False
    gen = torch.Generator().manual_seed(seed)
    known["random pixels hidden"] = torch.rand(1, 8, 8, generator=gen) < 0.25  # each pixel known with p 0.25
    return known


def first_per_class(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `per_class` test digits of each class, class-major: images (10 per_class, 1, 8, 8) in
    [-1, 1] on the 17-level grid, labels (10 per_class,)."""
    test = digits("test")
    idx = torch.cat([torch.nonzero(test.labels == k).flatten()[:per_class] for k in range(10)])
    return to_model_input(test.images[idx], 17), test.labels[idx]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=10, help="test digits per class (default 10: 100 digits)")
    p.add_argument("--solver", default="pc", help="solver name (default pc)")
    p.add_argument("--steps", type=int, default=100, help="solver steps (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and of the random mask (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--plot-dir", default=None, help="also write DIR/inpainting_digits.png (needs the plots extra)")
    args = p.parse_args(argv)
    if not 1 <= args.per_class <= 35:  # the test split has 35-37 digits per class
        p.error(f"--per-class must lie in [1, 35], got {args.per_class}")
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.solver not in solvers.available():
        p.error(f"unknown solver {args.solver!r}; choose one of {sorted(solvers.available())}")
    if args.plot_dir is not None and (problem := plots.check_plot_dir(args.plot_dir, "inpainting_digits.png")):
        p.error(problem)  # fail now, not after the run
    torch.set_num_threads(args.threads)
    model = default_model("vp")
    clean = load_digits_classifier()
    x, y = first_per_class(args.per_class)

    def kept_class(images: torch.Tensor) -> float:
        with torch.no_grad():
            return float((clean(quantize_digits(images, 17, dequantized=True)).argmax(1) == y).double().mean())

    rows = [{"mask": "none (the originals)", "known": 1.0, "kept": kept_class(x), "rms": 0.0, "nfe": 0, "seconds": 0.0}]
    pictures, labels, hidden = [x[::args.per_class]], ["original"], {}
    for name, known in masks(args.seed).items():
        start = time.perf_counter()
        res = inpaint(model, x, known, solver=args.solver, steps=args.steps, seed=args.seed)
        seconds = time.perf_counter() - start
        gap = (res.x.clamp(-1, 1) - x)[:, ~known.expand(x.shape[1:])]
        rows.append({"mask": name, "known": float(known.double().mean()), "kept": kept_class(res.x),
                     "rms": float(gap.pow(2).mean().sqrt()), "nfe": res.nfe, "seconds": seconds})
        print(f"{name}: {rows[-1]['kept']:.3f} ({seconds:.0f} s)", file=sys.stderr, flush=True)
        hidden[len(pictures)] = ~known
        pictures += [x[::args.per_class], res.x[::args.per_class]]
        labels += [name.replace(" hidden", "\nhidden"), "inpainted"]
    print(f"\n{len(y)} test digits ({args.per_class} per class); {args.solver}, {args.steps} steps, seed {args.seed}")
    print("\n| mask | known pixels | classified as the original's class | RMS to the original, hidden pixels | NFE | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mask']} | {r['known']:.2f} | {r['kept']:.2f} | {r['rms']:.3f} | {r['nfe']} | {r['seconds']:.0f} |")
    if args.plot_dir is not None:
        path = plots.plot_image_rows(pictures, os.path.join(args.plot_dir, "inpainting_digits.png"), row_labels=labels,
                                     col_labels=[str(k) for k in range(10)], unknown=hidden,
                                     title=f"scoresde.inpaint, shipped VP model, {args.solver} {args.steps} steps "
                                     "(hidden pixels in blue)")
        print(f"wrote {path}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
