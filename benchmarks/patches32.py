"""Cascaded 8 -> 32 sampling and latent diffusion against direct 32 x 32 sampling on the natural-image patches,
at equal training compute and equal total network evaluations (issue 21's tables; docs/latent.md).

    python benchmarks/patches32.py                                   # the cascade rows (hours on one CPU thread)
    python benchmarks/patches32.py --vae runs/latent/vae.safetensors # and the latent rows (a trained patch VAE)
    python benchmarks/patches32.py --base-steps 20 --sr-steps 20 --n 64 --nfes 4 --out-dir runs/patches32_smoke
    python benchmarks/patches32.py --device cuda --base-steps 20000 --sr-steps 20000   # on a GPU

Runs of `scoresde.train` on the 32 x 32 patches (`data="patches"`, `image_size=32`, dequantized, with
mirrored copies; the `digits` U-Net preset with `--net-options` and attention at half the run's input
resolution (4 x 4 for the 8 x 8 base and latents, 16 x 16 at 32 x 32), VP, eps, Adam with warm-up, EMA):

- base: the patches average-pooled 4 x 4 (`downsample=4`: 8 x 8 images), `--base-steps` steps;
- SR stage: 8 -> 32 (`sr_factor=4`, noise-conditioning augmentation s ~ U(0, `--sr-aug-max`)), `--sr-steps`;
- direct: the 32 x 32 patches, trained in chunks of `--chunk` steps until its training time reaches the
  base's plus the SR stage's (CPU seconds of this process on the CPU, wall-clock seconds on a GPU), so both
  sides get the same training compute;
- latent (with `--vae FILE`, a patch VAE with its scale factor, `benchmarks/latent.py`): the same U-Net on the
  VAE's latents of the 32 x 32 patches (`vae=FILE`), trained in chunks to the same time as the direct run
  (the base's plus the SR stage's). The VAE's own training is not in that budget (it is trained once and shared by every latent model,
  as in latent diffusion); its CPU minutes are the VAE benchmark's and are printed beside the table.

Runs live in `--out-dir` and resume (the training seconds spent so far are kept in `budget.json` there).
`--train` picks the runs this process trains and `--no-eval` skips the table, so two processes can share two
cores: `--train base --no-eval` beside `--train sr --no-eval`, then `--train direct --no-eval` beside
`--train latent --no-eval`, then `--train none` for the table. The direct and latent runs train until their
time reaches the base's plus the SR stage's, so they wait for those two, unless `--budget-minutes` sets it.
Then, for each total evaluation count K in `--nfes`, the cascade samples the base with DPM-Solver++ at
ceil(K / 2) steps and the SR stage at floor(K / 2) (augmentation level `--aug-level`), the direct model
with DPM-Solver++ at K steps, and so does the latent model (then its decoder), `--n` samples each (seed 0). Scores against the 350 test patches, in the
features of the shipped patch extractor (`scoresde.patch_features`): the Frechet distance of the 16 x 16
tiles (`tiled_frechet_distance`: local statistics) and of the patches pooled 2 x 2 to 16 x 16 (the whole
layout at half resolution), beside the floor (350 train patches drawn at random; equal N on both sides
when --n is 350) and the sampling seconds per image. Prints one markdown table and the machine line.
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import json
import math
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import scoresde  # noqa: E402
from scoresde.data import patches, to_levels  # noqa: E402
from scoresde.files import atomic_write  # noqa: E402
from scoresde.latent.cascade import sample_cascade  # noqa: E402
from scoresde.patch_features import patch_frechet_distance, tiled_frechet_distance  # noqa: E402
from scoresde.train import TrainConfig, load_checkpoint, train  # noqa: E402


RUNS = ("base", "sr", "direct", "latent")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="runs/patches32")
    p.add_argument("--base-steps", type=int, default=4000)
    p.add_argument("--sr-steps", type=int, default=4000)
    p.add_argument("--chunk", type=int, default=100,
                   help="steps per training call: each records its time in budget.json, and the direct and latent "
                        "runs check their budget after each (default 100)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="the direct and latent runs' training time (default: the base's plus the SR stage's, once "
                        "both are trained); set, they can train beside those")
    p.add_argument("--net-options", default="{'ch': 32}", help="U-Net options of all three runs (a Python dict)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--prediction", default="eps", help="the networks' prediction (eps, v, x0; default eps)")
    p.add_argument("--prediction-32", default=None,
                   help="the prediction of the runs whose networks output 32 x 32 images, the SR stage and the direct "
                        "model (default: --prediction)")
    p.add_argument("--sr-aug-max", type=float, default=0.25)
    p.add_argument("--aug-level", type=float, default=0.05, help="augmentation level when sampling (default 0.05)")
    p.add_argument("--nfes", default="20,40", help="total evaluations per sample (default 20,40)")
    p.add_argument("--n", type=int, default=350, help="samples per row (default 350, the test split's size)")
    p.add_argument("--vae", default=None, help="a patch VAE file: adds the latent model's rows (default none)")
    p.add_argument("--train", default=None,
                   help="runs this process trains or resumes, in this order: a comma list of " + ", ".join(RUNS)
                        + " (latent needs --vae), or none (default: all, latent when --vae is given)")
    p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                   help="sample and print the table (needs every run trained; default on)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.train is None:
        args.train = [r for r in RUNS if r != "latent" or args.vae]
    else:
        args.train = [] if args.train == "none" else args.train.split(",")
    unknown = [r for r in args.train if r not in RUNS]
    if unknown:
        p.error(f"--train: unknown run(s) {unknown}; choose from {', '.join(RUNS)}, or none")
    if "latent" in args.train and not args.vae:
        p.error("--train latent needs --vae FILE (the patch VAE the latent model runs on)")
    return args


def _seconds(device: str) -> float:
    """The clock of the training budget: this process's CPU seconds on the CPU, wall-clock seconds elsewhere."""
    if device == "cpu":
        return time.process_time()
    torch.cuda.synchronize()
    return time.perf_counter()


class Budget:
    """Training seconds per run, kept in out_dir/budget.json so that resumed runs add to them. Processes
    training different runs in the same folder share the file: each update re-reads it under a lock."""

    def __init__(self, out: Path):
        self.path = out / "budget.json"

    @property
    def spent(self) -> dict[str, float]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def train(self, name: str, config: TrainConfig, device: str) -> None:
        start = _seconds(device)
        train(config)
        seconds = _seconds(device) - start
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            spent = self.spent
            spent[name] = spent.get(name, 0.0) + seconds
            atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(spent, indent=1)))


def train_all(args) -> tuple[dict[str, Path], dict[str, float], dict[str, int], float | None]:
    """Train (or resume) the runs of args.train; returns every run's checkpoint, training seconds and steps, and
    the direct and latent runs' time budget (None while it is not known)."""
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(out)
    common = TrainConfig(data="patches", image_size=32, flip=True, dequantize=True, net="digits",
                         net_options=ast.literal_eval(args.net_options), batch_size=args.batch, lr=args.lr,
                         warmup_steps=200, ema_decay=0.999, ckpt_every=args.chunk, log_every=50, progress=False,
                         device=args.device, prediction=args.prediction)
    common32 = replace(common, net_options={"attn_resolutions": (16,), **common.net_options},
                       prediction=args.prediction_32 or args.prediction)
    common8 = replace(common, net_options={"attn_resolutions": (4,), **common.net_options})
    runs = {"base": replace(common8, downsample=4, steps=args.base_steps, out_dir=str(out / "base")),
            "sr": replace(common32, sr_factor=4, sr_aug_max=args.sr_aug_max, steps=args.sr_steps, out_dir=str(out / "sr"))}
    runs["direct"] = replace(common32, out_dir=str(out / "direct"))
    if args.vae:
        runs["latent"] = replace(common8, vae=args.vae, out_dir=str(out / "latent"))
    for name in ("base", "sr"):
        if name in args.train:
            train_steps(budget, name, runs[name], args)
    target = budget_seconds(args, runs, budget)
    for name in ("direct", "latent"):
        if name in args.train:
            if target is None:
                raise SystemExit(f"the {name} run trains to the base's plus the SR stage's time: finish those first "
                                 "(--train base,sr), or set the time with --budget-minutes")
            train_to_budget(budget, name, runs[name], target, args)
    paths = {name: _checkpoint(c) for name, c in runs.items()}
    steps = {name: _step(c) for name, c in runs.items()}
    return paths, budget.spent, steps, target


def _checkpoint(config: TrainConfig) -> Path:
    return Path(config.out_dir) / "checkpoint.safetensors"


def _step(config: TrainConfig) -> int:
    """The step a run's checkpoint holds (0 before its first chunk)."""
    path = _checkpoint(config)
    return load_checkpoint(path).step if path.is_file() else 0


def budget_seconds(args, runs: dict[str, TrainConfig], budget: Budget) -> float | None:
    """The training seconds of the direct and latent runs: --budget-minutes, else the base's plus the SR stage's
    once both have run all their steps (None before)."""
    if args.budget_minutes is not None:
        return 60.0 * args.budget_minutes
    if any(_step(runs[name]) < runs[name].steps for name in ("base", "sr")):
        return None
    return budget.spent["base"] + budget.spent["sr"]


def train_steps(budget: Budget, name: str, config: TrainConfig, args) -> None:
    """Train (or resume) run `name` to config.steps in chunks of args.chunk steps, each chunk's time recorded
    (a run killed mid-chunk resumes from the last chunk's checkpoint and redoes that chunk)."""
    done = _step(config)
    while done < config.steps:
        done = min(done + args.chunk, config.steps)
        budget.train(name, replace(config, steps=done), args.device)


def train_to_budget(budget: Budget, name: str, config: TrainConfig, seconds: float, args) -> None:
    """Train (or resume) run `name` in chunks of args.chunk steps until its training time reaches `seconds`."""
    done = _step(config)
    while budget.spent.get(name, 0.0) < seconds:
        done += args.chunk
        budget.train(name, replace(config, steps=done), args.device)


def _pooled(images: torch.Tensor) -> torch.Tensor:
    """uint8 patches (N, 3, 32, 32) averaged 2 x 2 and rounded: (N, 3, 16, 16) uint8."""
    return F.avg_pool2d(images.double(), 2).round().to(torch.uint8)


def scores(images: torch.Tensor, test: torch.Tensor) -> tuple[float, float]:
    """(tiled FD, pooled FD) of uint8 patches (N, 3, 32, 32) against the uint8 test patches."""
    return tiled_frechet_distance(images, test), patch_frechet_distance(_pooled(images), _pooled(test))


def sample_scores(x: torch.Tensor, test: torch.Tensor) -> tuple[float, float]:
    """`scores` of samples x (N, 3, 32, 32) in [-1, 1] of models trained on dequantized patches."""
    return scores(to_levels(x.cpu(), 256, dequantized=True).to(torch.uint8), test)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    paths, spent, steps, target = train_all(args)
    if not args.eval:
        return
    wanted = {"base": args.base_steps, "sr": args.sr_steps}
    untrained = [name for name in paths if steps[name] < wanted.get(name, 1)
                 or name in ("direct", "latent") and (target is None or spent.get(name, 0.0) < target)]
    if untrained:
        raise SystemExit(f"the table needs every run trained; not yet: {', '.join(untrained)} (--train)")
    test = patches("test", 32).images
    train_images = patches("train", 32).images
    pick = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(2))[:len(test)]
    floor = scores(train_images[pick], test)
    base = scoresde.load_model(paths["base"], device=args.device)
    sr = scoresde.load_sr_stage(paths["sr"], device=args.device)
    direct = scoresde.load_model(paths["direct"], device=args.device)
    latent = scoresde.load_model(paths["latent"], device=args.device) if "latent" in paths else None
    device = args.device if args.device == "cpu" else torch.cuda.get_device_name(torch.device(args.device))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch "
          f"thread(s); device {device}; torch {torch.__version__}")
    print(f"net_options {args.net_options}, batch {args.batch}, lr {args.lr}; SR augmentation s ~ U(0, "
          f"{args.sr_aug_max}), sampled at {args.aug_level}; {args.n} samples per row; floor (350 train patches): "
          f"tiled {floor[0]:.2f}, pooled {floor[1]:.2f}")
    if latent is not None:
        print(f"latent rows: VAE {args.vae} (latents {tuple(latent.latent_shape)}, scale factor {latent.scale_factor:.4f}; "
              f"its training is outside the budget)")
    print()
    unit = "CPU min" if args.device == "cpu" else "GPU min (wall)"
    print(f"| model | training steps | training {unit} | NFE | tiled FD | pooled FD | sampling s / image |")
    print("|---|---|---|---|---|---|---|")
    for K in (int(k) for k in args.nfes.split(",")):
        kb, ks = math.ceil(K / 2), K // 2
        start = time.perf_counter()
        res = sample_cascade(base, sr, n=args.n, seed=0, aug_level=args.aug_level, device=args.device,
                             base_options={"solver": "dpm_solver++", "steps": kb},
                             sr_options={"solver": "dpm_solver++", "steps": ks})
        cascade_s = (time.perf_counter() - start) / args.n
        start = time.perf_counter()
        x = scoresde.sample(direct, solver="dpm_solver++", steps=K, n=args.n, seed=0, device=args.device).x
        direct_s = (time.perf_counter() - start) / args.n
        rows = [("cascade 8 -> 32", f"{steps['base']} + {steps['sr']}", (spent["base"] + spent["sr"]) / 60,
                 f"{kb} + {ks}", sample_scores(res.x, test), cascade_s),
                ("direct 32 x 32", f"{steps['direct']}", spent["direct"] / 60, f"{K}", sample_scores(x, test), direct_s)]
        if latent is not None:
            start = time.perf_counter()
            z = scoresde.sample(latent, solver="dpm_solver++", steps=K, n=args.n, seed=0, device=args.device).x
            latent_s = (time.perf_counter() - start) / args.n
            rows.append((f"latent {tuple(latent.latent_shape)}", f"{steps['latent']}", spent["latent"] / 60, f"{K}",
                         sample_scores(z, test), latent_s))
        for name, n_steps, minutes, nfe, (tiled, pooled), sec in rows:
            print(f"| {name} | {n_steps} | {minutes:.1f} | {nfe} | {tiled:.2f} | {pooled:.2f} | {sec:.4f} |", flush=True)


if __name__ == "__main__":
    main()
