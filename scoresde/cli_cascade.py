"""`scoresde cascade`: sample a base model, then a super-resolution stage conditioned on its samples
(`scoresde.latent.cascade.sample_cascade`; docs/latent.md, "Cascades").

The base model is any model file `scoresde.load_model` reads; the SR stage is the file of a run with
`--sr-factor` > 1 (`scoresde.load_sr_stage`); with neither, the shipped 8 -> 32 cascade of the natural-image
patches (`scoresde.default_cascade`). Each stage takes its own solver, steps and options. Like
`scoresde sample`, every flag is checked before any model is loaded or sampled.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import cli_args
from .cli_args import GRID_MAX, UsageError

SAVE_SUFFIXES = (".npz", ".npy", ".pt")


def add_arguments(p: argparse.ArgumentParser) -> None:
    # no import of torch here: `scoresde cascade --help` stays instant
    p.add_argument("--base", help="the base model file (low-resolution images; `scoresde train`); default, with "
                                  "--sr omitted too: the shipped cascade of the 32 x 32 patches (docs/latent.md)")
    p.add_argument("--sr", help="the SR stage's model file (a run with --sr-factor > 1, or a file exported from "
                                "one); give it with --base, or neither")
    for prefix, stage in (("", "base"), ("sr-", "SR")):
        p.add_argument(f"--{prefix}solver", default="auto",
                       help=f"the {stage} stage's solver, a name from `scoresde solvers` (default: auto, the best "
                            "measured deterministic solver for the model's SDE and the steps)")
        p.add_argument(f"--{prefix}steps", type=cli_args.steps, default=20,
                       help=f"the {stage} stage's grid steps (default: 20)")
        p.add_argument(f"--{prefix}option", action="append", type=cli_args.parse_option, metavar="KEY=VALUE",
                       help=f"an option of the {stage} stage's solver, repeatable")
    p.add_argument("--aug-level", type=float, default=0.0, metavar="S",
                   help="the noise-conditioning augmentation level s of the low-resolution samples, a time of the "
                        "SR stage's process in [0, T] (0: none; default: 0)")
    p.add_argument("--n", type=cli_args.positive_int, default=16, help="number of samples (default: 16)")
    p.add_argument("--seed", type=cli_args.seed, default=0,
                   help="random seed (default: 0); the base stage uses it, the augmentation noise seed + 1, the SR "
                        "stage seed + 2")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out", default="cascade.png",
                   help=f"image grid of the first min(n, {GRID_MAX}) SR samples, in the format its suffix names: "
                        f"{', '.join(cli_args.IMAGE_SUFFIXES)} (default: cascade.png)")
    p.add_argument("--low-out", metavar="FILE",
                   help="also a grid of the base stage's samples, drawn at the SR grid's size")
    p.add_argument("--scale", type=cli_args.positive_int, default=4, help="pixel upscaling of the grids (default: 4)")
    p.add_argument("--save", help="also save the raw samples (not clamped): .npz holds x (the SR samples), low (the "
                                  "base samples), w (what the SR stage saw), images (n, H, W, C) uint8 and settings "
                                  "(a JSON string); .npy and .pt hold x")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_cascade)


def _check_paths(args: argparse.Namespace) -> None:
    """Every path before any work: the model files exist, the outputs' suffixes and folders are valid."""
    if (args.base is None) != (args.sr is None):
        given, missing = ("--base", "--sr") if args.sr is None else ("--sr", "--base")
        raise UsageError(f"{given} needs {missing} (a cascade's two files), or give neither for the shipped cascade")
    for flag, path in (("--base", args.base), ("--sr", args.sr)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{flag}: model file {path!r} does not exist")
    cli_args.check_image_suffix(args.out, "--out")
    if args.low_out is not None:
        cli_args.check_image_suffix(args.low_out, "--low-out")
    if args.save is not None:
        cli_args.check_out_file(args.save, "--save", SAVE_SUFFIXES)


def _save(path: str, res) -> None:
    """The samples of `res` (a CascadeSamples) at `path`, written atomically."""
    import numpy as np
    import torch

    from .files import atomic_write
    from .sampling_files import quantize_images

    if path.endswith(".pt"):
        atomic_write(path, lambda tmp: torch.save(res.x.cpu(), tmp))
        return
    x = res.x.cpu().numpy()
    arrays = {"x": x, "low": res.low.cpu().numpy(), "w": res.w.cpu().numpy(), "images": quantize_images(x),
              "settings": np.array(json.dumps(res.settings, default=str))}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would append .npy / .npz to the temporary name
            if path.endswith(".npy"):
                np.save(f, x)
            else:
                np.savez(f, **arrays)

    atomic_write(path, write)


def cmd_cascade(args: argparse.Namespace) -> int:
    from .devices import check_device
    from .latent.cascade import sample_cascade, upsample
    from .training.checkpoints import default_cascade, load_model, load_sr_stage
    from .training.samples import save_image_grid

    check_device(args.device, purpose="sampling")
    _check_paths(args)
    if args.base is None:
        base, sr = default_cascade(device=args.device)
    else:
        base, sr = load_model(args.base, device=args.device), load_sr_stage(args.sr, device=args.device)
    if tuple(base.image_shape) != tuple(sr.low_shape):
        raise UsageError(f"the base model makes images {tuple(base.image_shape)}, the SR stage is conditioned on "
                         f"{tuple(sr.low_shape)} (its factor {sr.factor} of {tuple(sr.image_shape)})")
    progress = not args.quiet
    base_options = {"solver": args.solver, "steps": args.steps, "progress": progress, **dict(args.option or [])}
    sr_options = {"solver": args.sr_solver, "steps": args.sr_steps, "progress": progress,
                  **dict(args.sr_option or [])}
    res = sample_cascade(base, sr, n=args.n, seed=args.seed, aug_level=args.aug_level, base_options=base_options,
                         sr_options=sr_options, device=args.device)
    shown = min(args.n, GRID_MAX)
    save_image_grid(res.x[:shown].clamp(-1, 1), args.out, scale=args.scale)
    print(f"wrote {args.out} ({shown} of {args.n} SR samples, {tuple(sr.image_shape)}); NFE base {res.nfe['base']} "
          f"+ SR {res.nfe['sr']}, {res.seconds:.2f} s")
    if args.low_out is not None:
        save_image_grid(upsample(res.low[:shown], sr.factor).clamp(-1, 1), args.low_out, scale=args.scale)
        print(f"wrote {args.low_out} (the base samples {tuple(sr.low_shape)}, upsampled x{sr.factor})")
    if args.save is not None:
        _save(args.save, res)
        print(f"wrote {args.save}")
    print("settings: " + json.dumps(res.settings, default=str))
    return 0
