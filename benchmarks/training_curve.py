"""Loss and test bits/dim along a short digits training run; with --plot-dir, the figure of docs/training.md.

Trains the `digits` U-Net on dequantized digits as examples/train_digits.py does (VP, eps prediction,
c_noise = log(sigma/alpha), Adam at 1e-3 after 200 warm-up steps, batch 128, EMA 0.999, seed 0; uniform t,
no augmentation; --ch, --res-blocks and --batch-size make it smaller) for --steps steps, stopping every --every steps: the run resumes exactly from its
checkpoint, so the stops do not change it. At each stop the EMA weights are scored by test bits/dim on the
first --n test digits with a cheap fixed budget, `scoresde.bits_per_dim(method="dpm_solver_6m", steps=29)`
(30 evaluations per image; one dequantization draw and probe per image from seed 0, the same at every
stop, so the differences between stops are paired). That budget reads a little off the adaptive dopri5
default (docs/likelihood.md): the curve shows the trend, not the model's exact figure.

Writes to --out (default runs/training_curve): the run (checkpoint.safetensors, metrics.jsonl) and
bpd.json (one entry per evaluated step, kept on a rerun, which skips the steps already done);
prints a table; with --plot-dir DIR also DIR/training_curve.png (`scoresde.plots.plot_training`).

    python benchmarks/training_curve.py                          # 2,000 steps of the digits preset, 8 stops
    python benchmarks/training_curve.py --ch 16 --res-blocks 1 --batch-size 64 --steps 1000 --every 100 --n 40 \
        --plot-dir docs                                          # the figure of docs/training.md
    python benchmarks/training_curve.py --steps 200 --every 100 --n 20 --out /tmp/tc    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# benchmarks/solvers.py would shadow the `solvers` package: keep this folder off the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402

from scoresde import bits_per_dim  # noqa: E402
from scoresde.data import digits, to_model_input  # noqa: E402
from scoresde.files import atomic_write  # noqa: E402
from scoresde.plots import check_png_path, plot_training, read_metrics, require_matplotlib  # noqa: E402
from scoresde.train import CHECKPOINT, TrainConfig, load_model, train  # noqa: E402
from scoresde.training.metrics_log import METRICS  # noqa: E402

BPD_FILE = "bpd.json"
BPD_OPTIONS = {"method": "dpm_solver_6m", "steps": 29}  # 30 evaluations per image


def config(steps: int, out: str, every: int, ch: int, res_blocks: int, batch_size: int) -> TrainConfig:
    return TrainConfig(
        data="digits", net="digits", net_options={"ch": ch, "num_res_blocks": res_blocks}, sde="vp", prediction="eps", c_noise="log_noise", dequantize=True,
        lr=1e-3, warmup_steps=200, grad_clip=1.0, ema_decay=0.999, batch_size=batch_size, steps=steps, seed=0,
        device="cpu", out_dir=out, ckpt_every=every, log_every=25, progress=False,
    )


def test_bpd(checkpoint: Path, n: int) -> tuple[float, float]:
    """Mean bits/dim of the first n test digits under the checkpoint's EMA weights, and its standard error
    over images."""
    model = load_model(checkpoint)
    x = to_model_input(digits("test").images[:n], 17)
    res = bits_per_dim(model, x, levels=17, seed=list(range(n)), **BPD_OPTIONS)
    return float(res.bpd.mean()), float(res.bpd.std() / n ** 0.5)


def run(steps: int, every: int, n: int, out: str, ch: int = 32, res_blocks: int = 2,
        batch_size: int = 128) -> list[tuple[int, float, float]]:
    """Train to `steps`, stopping every `every` steps to score the EMA weights; [(step, bpd, se)]."""
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    done_file = out_path / BPD_FILE
    done = {int(k): tuple(v) for k, v in json.loads(done_file.read_text()).items()} if done_file.is_file() else {}
    for stop in range(every, steps + 1, every):
        t0 = time.perf_counter()
        res = train(config(stop, out, every, ch, res_blocks, batch_size))
        if stop not in done:
            t1 = time.perf_counter()
            done[stop] = test_bpd(out_path / CHECKPOINT, n)
            atomic_write(done_file, lambda tmp: tmp.write_text(json.dumps({str(k): v for k, v in sorted(done.items())})))
            loss = "-" if res.loss is None else f"{res.loss:.4f}"
            print(f"step {stop}: loss {loss}  test bits/dim {done[stop][0]:.3f} ± {done[stop][1]:.3f}  "
                  f"(train {t1 - t0:.0f} s, bits/dim {time.perf_counter() - t1:.0f} s)", flush=True)
    return [(s, b, e) for s, (b, e) in sorted(done.items()) if s <= steps]


def main(argv=None) -> list[tuple[int, float, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    p.add_argument("--every", type=int, default=250, help="steps between bits/dim evaluations (default 250)")
    p.add_argument("--n", type=int, default=120, help="test digits scored (default 120 of 360)")
    p.add_argument("--ch", type=int, default=32, help="U-Net base channels (digits preset: 32)")
    p.add_argument("--res-blocks", type=int, default=2, help="residual blocks per level (digits preset: 2)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    p.add_argument("--out", default="runs/training_curve", help="run folder (default runs/training_curve)")
    p.add_argument("--plot-dir", default=None, help="write training_curve.png into this folder")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    for name in ("steps", "every", "n", "threads", "ch", "res_blocks", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps % args.every:
        p.error(f"--every must divide --steps, got {args.every} and {args.steps}")
    if not 1 <= args.n <= 360:
        p.error(f"--n must lie in [1, 360] (the test digits), got {args.n}")
    plot = None
    if args.plot_dir is not None:
        try:  # fail now, not after the run
            require_matplotlib()
            plot = check_png_path(Path(args.plot_dir) / "training_curve.png")
        except (ImportError, ValueError) as e:
            p.error(str(e))
    torch.set_num_threads(args.threads)
    points = run(args.steps, args.every, args.n, args.out, args.ch, args.res_blocks, args.batch_size)
    print("\n| step | test bits/dim | ± SE |\n|---|---|---|")
    for s, b, e in points:
        print(f"| {s} | {b:.3f} | {e:.3f} |")
    if plot is not None:
        plot_training(read_metrics(Path(args.out) / METRICS), plot, bpd=points,
                      bpd_label=f"test bits/dim ({args.n} digits, dpm_solver_6m, 30 NFE)",
                      title=f"digits U-Net (ch {args.ch}, {args.res_blocks} residual block{'s' * (args.res_blocks > 1)} "
                      "per level), VP, dequantized digits, "
                      f"batch {args.batch_size}: {args.steps} steps (benchmarks/training_curve.py)")
        print(f"wrote {plot}")
    return points


if __name__ == "__main__":
    main()
