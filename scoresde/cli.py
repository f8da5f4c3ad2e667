"""Command line: `scoresde sample | train | bpd | solvers` (also `python -m scoresde`).

User errors (unknown solver, bad option value, missing file) print one line naming the bad value
and the valid choices, and exit with status 2.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import solvers

EXIT_USAGE = 2


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE, VALUE parsed as a Python literal (number, bool, string, tuple) when it is one."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def _load_model(path: str | None, sde: str, device: str):
    if path is None:
        from .pretrained import default_model

        return default_model(sde, device=device)
    if not Path(path).exists():
        raise UsageError(f"model file {path!r} does not exist")
    from .train import load_model

    return load_model(path, device=device)


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .sampling import sample
    from .train import save_image_grid

    model = _load_model(args.model, args.sde, args.device)
    shape = None if args.shape is None else tuple(args.shape)  # None: the model's image_shape
    options = dict(args.option or [])
    res = sample(
        model, solver=args.solver, steps=args.steps, grid=args.grid, n=args.n, shape=shape, seed=args.seed,
        device=args.device, progress=not args.quiet, **options,
    )
    x = res.x.clamp(-1, 1)
    save_image_grid(x, args.out, scale=args.scale)
    if args.save is not None:
        if args.save.endswith(".npz"):
            np.savez(args.save, x=x.cpu().numpy())
        elif args.save.endswith(".pt"):
            torch.save(x.cpu(), args.save)
        else:
            raise UsageError(f"--save {args.save!r}: use a .npz or .pt file name")
    print(f"wrote {args.out} ({x.shape[0]} samples); NFE {res.nfe}, {res.seconds:.2f} s")
    print("settings: " + json.dumps(res.settings, default=str))
    return 0


def cmd_solvers(args: argparse.Namespace) -> int:
    import inspect

    for name, description in solvers.available().items():
        factory = solvers.registry._all()[name]
        params = inspect.signature(factory).parameters
        opts = ", ".join(
            f"{k}={p.default!r}" for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        )
        kinds = ",".join(sorted(getattr(factory, "kinds", [])))
        kind = "stochastic" if getattr(factory, "stochastic", False) else "deterministic"
        print(f"{name:22s} order {getattr(factory, 'order', '?')}, {kind}, sdes: {kinds}")
        print(f"{'':22s} {description}")
        print(f"{'':22s} options: {opts or '(none)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .sampling import SDES

    parser = argparse.ArgumentParser(prog="scoresde", description="Score-based diffusion models in continuous time.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="draw samples and write a PNG grid")
    p.add_argument("--model", help="checkpoint (.safetensors) written by `scoresde train`; default: the shipped model")
    p.add_argument("--sde", default="vp", choices=sorted(SDES), help="SDE of the shipped default model (default: vp)")
    p.add_argument("--solver", default="pc", help="a name from `scoresde solvers` (default: pc)")
    p.add_argument("--option", action="append", type=_option, metavar="KEY=VALUE", help="solver option, repeatable")
    p.add_argument("--steps", type=_positive_int, help="grid steps (default: the solver's)")
    p.add_argument("--grid", choices=sorted(solvers.grids.GRIDS), help="time grid (default: the solver's)")
    p.add_argument("--n", type=_positive_int, default=64, help="number of samples (default: 64)")
    p.add_argument("--shape", type=_positive_int, nargs="+", metavar="DIM", help="sample shape without the batch")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out", default="samples.png", help="PNG grid to write (default: samples.png)")
    p.add_argument("--scale", type=_positive_int, default=4, help="pixel upscaling of the grid (default: 4)")
    p.add_argument("--save", help="also save the raw samples to a .npz or .pt file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("solvers", help="list every solver with its order, kind, SDEs and options")
    p.set_defaults(func=cmd_solvers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        code = args.func(args)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"scoresde {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.command != "solvers":
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
