"""Command line: `scoresde sample | train | bpd | solvers` (also `python -m scoresde`).

User errors (unknown solver, bad option value, missing file) print one line naming the bad value
and the valid choices, and exit with status 2. `main` builds only the arguments of the command it
runs, so `scoresde --help` imports neither torch nor the rest of the package.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

EXIT_USAGE = 2


MAX_INT = 2**31 - 1  # counts and sizes (--n, --batch-size, ...): beyond this torch overflows
MAX_STEPS = 1_000_000  # grid steps
MAX_SEED = 2**63 - 1  # seeds: 0..2**63-1, what torch.Generator.manual_seed takes as a signed 64-bit int


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (`prog: error: message`) and exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _bounded_int(text: str, low: int, high: int) -> int:
    """An integer in low..high from `text`, else an ArgumentTypeError naming the range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value} (valid range {low}..{high})")
    if value > high:
        raise argparse.ArgumentTypeError(f"expected an integer <= {high}, got {value} (valid range {low}..{high})")
    return value


def _positive_int(text: str) -> int:
    return _bounded_int(text, 1, MAX_INT)


def _steps(text: str) -> int:
    return _bounded_int(text, 1, MAX_STEPS)


def _seed(text: str) -> int:
    return _bounded_int(text, 0, MAX_SEED)


def _count(text: str) -> int:
    """An integer field of a config (a count or size; the config checks its least value)."""
    return _bounded_int(text, 0, MAX_INT)


def parse_option(text: str) -> tuple[str, object]:
    """KEY=VALUE, VALUE parsed as a Python literal (number, bool, string, tuple) when it is one."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def _labels(text: str) -> list[int]:
    """--y: comma-separated class labels, e.g. 3 or 0,1,2."""
    try:
        labels = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer labels, e.g. 3 or 0,1,2; got {text!r}") from None
    if any(v < 0 for v in labels):
        raise argparse.ArgumentTypeError(f"labels must be >= 0, got {text!r}")
    return labels


def _check_device(device: str, purpose: str) -> str:
    from .devices import check_device

    check_device(device, purpose=purpose)  # a ValueError naming the valid devices
    return device


def _check_labels(labels: list[int], model) -> None:
    """--y against the model's classes 0..K-1 (K, its null label, means no class)."""
    k = getattr(model, "null_label", None)
    if k is None:
        raise UsageError(f"--y {','.join(map(str, labels))}: this model is not class-conditional (it has no classes)")
    bad = [v for v in labels if not 0 <= v <= k]
    if bad:
        raise UsageError(f"--y {bad[0]}: labels must lie in 0..{k - 1} (the model's {k} classes), or be {k} for no class")


def _check_out_dir(path: str, flag: str) -> None:
    if Path(path).exists() and not Path(path).is_dir():
        raise UsageError(f"{flag} {path!r} is a file, not a folder; choose a folder (it is created if missing)")


def _load_model(path: str | None, sde: str, device: str, *, conditional: bool = False):
    if path is None:
        from .training.checkpoints import default_model

        try:
            return default_model(sde, conditional=conditional, device=device)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if not Path(path).exists():
        raise UsageError(f"model file {path!r} does not exist")
    from .training.checkpoints import load_model

    return load_model(path, device=device)


GRID_MAX = 64  # `scoresde sample --out`: the PNG grid shows at most the first GRID_MAX samples


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .sampling import sample
    from .sampling_files import save_samples
    from .training.samples import save_image_grid

    if args.guidance_scale is not None and args.y is None:
        raise UsageError("--guidance-scale needs class labels --y")
    _check_device(args.device, "sampling")
    for flag, path in (("--out", args.out), ("--save", args.save)):
        if path is not None and Path(path).is_dir():
            raise UsageError(f"{flag} {path!r} is a folder; give a file name")
    if args.save is not None and not args.save.endswith((".npy", ".npz", ".pt")):
        raise UsageError(f"--save {args.save!r}: use a .npy, .npz or .pt file name")
    model = _load_model(args.model, args.sde, args.device, conditional=args.y is not None)
    if args.y is not None:
        _check_labels(args.y, model)
    kwargs = dict(
        model=model, solver=args.solver, steps=args.steps, grid=args.grid, shape=None if args.shape is None else tuple(args.shape),
        seed=args.seed, device=args.device, progress=not args.quiet, **dict(args.option or []),
    )  # shape None: the model's image_shape
    if args.y is not None:  # labels repeat cyclically to fill the n samples
        kwargs.update(y=torch.tensor(args.y)[torch.arange(args.n) % len(args.y)], guidance_scale=args.guidance_scale)
    if args.save is not None and args.save.endswith((".npy", ".npz")):  # streamed: memory bounded by --batch-size
        res = save_samples(args.save, n=args.n, batch_size=args.batch_size, keep_first=GRID_MAX, **kwargs)
        first = res.first
    else:  # in memory, in chunks of --batch-size
        res = sample(n=args.n, batch_size=args.batch_size, **kwargs)
        first = res.x[:GRID_MAX]
        if args.save is not None:  # .pt, checked above
            torch.save(res.x.cpu(), args.save)
    save_image_grid(first.clamp(-1, 1), args.out, scale=args.scale)
    shown = f"{args.n} samples" if args.n <= GRID_MAX else f"the first {GRID_MAX} of {args.n} samples"
    print(f"wrote {args.out} ({shown}); NFE {res.nfe}, {res.seconds:.2f} s")
    print("settings: " + json.dumps(res.settings, default=str))
    return 0


def cmd_solvers(args: argparse.Namespace) -> int:
    import inspect

    import solvers

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


def _add_config_flags(p: argparse.ArgumentParser, cls) -> None:
    """One flag per field of the frozen dataclass `cls` (typed, with choices for Literal fields)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, flag = hints[f.name], "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: dict = {"dest": f.name, "default": default}
        if typing.get_origin(hint) is typing.Literal:
            kwargs.update(choices=list(typing.get_args(hint)))
        elif hint is bool:
            kwargs.update(action=argparse.BooleanOptionalAction)
        elif hint in (int, int | None):  # bounded, so that no value overflows torch's 64-bit integers
            kwargs.update(type=_seed if f.name == "seed" else _count)
        elif hint in (float, str):
            kwargs.update(type=hint)
        elif hint in (float | None, str | None):
            kwargs.update(type=typing.get_args(hint)[0])
        elif hint == tuple[str, ...]:  # comma-separated names, e.g. --augment xflip,translate: the config splits them
            kwargs.update(type=str)
        else:  # dicts and tuples as Python literals, e.g. --net-options "{'ch': 16}"
            kwargs.update(type=_literal)
        kwargs["help"] = f"(default: {default!r})"
        p.add_argument(flag, **kwargs)


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"expected a Python literal, got {text!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from .training.config import TrainConfig
    from .training.loop import setup_distributed, train

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**fields)  # checks every value and names the valid choices
    if config.device != "auto":
        _check_device(config.device, "training")
    _check_out_dir(config.out_dir, "--out-dir")
    ckpt = Path(config.out_dir) / "checkpoint.safetensors"
    if ckpt.exists() and not args.resume:
        raise UsageError(f"{ckpt} exists; pass --resume to continue it or choose another --out-dir")
    if args.resume and not ckpt.exists():
        raise UsageError(f"--resume: no checkpoint at {ckpt}")
    setup_distributed()
    res = train(config)
    print(f"step {res.step}: loss {res.loss:.4f}; checkpoint {ckpt}")
    return 0


def cmd_bpd(args: argparse.Namespace) -> int:
    import math

    import torch

    from . import data as data_mod
    from .likelihood import bits_per_dim
    from .likelihood.ode import ADAPTIVE_METHODS

    _check_device(args.device, "bits/dim")
    _check_bpd_flags(args, ADAPTIVE_METHODS)
    model = _load_model(args.model, args.sde, args.device)
    image_size, channels = args.image_size, 3
    if args.data == "folder":  # images resized to the model's size and channels unless --image-size says otherwise
        shape = getattr(model, "image_shape", None)
        if image_size is None and shape is None:
            raise UsageError("--data folder: this model does not record its image size; pass --image-size")
        channels = 3 if shape is None else shape[0]
        image_size = shape[-1] if image_size is None else image_size
    elif image_size is not None:
        raise UsageError(f"--image-size is for --data folder only (data {args.data!r} has a fixed size)")
    images = data_mod.load(args.data, root=args.data_root, split=args.split, image_size=image_size, channels=channels)
    n = len(images) if args.n is None else min(args.n, len(images))
    x_int = images.images[:n]
    x = data_mod.to_model_input(x_int, images.levels, dtype=torch.float32).to(args.device)
    gen = torch.Generator(args.device).manual_seed(args.seed)
    values, nfes = [], []
    start = time.perf_counter()
    for i in range(0, n, args.batch_size):
        res = bits_per_dim(
            model, x[i:i + args.batch_size], levels=images.levels, repeats=args.repeats, n_probes=args.probes,
            rtol=args.rtol, atol=args.atol, method=args.method, steps=args.steps, generator=gen,
        )
        values.append(res.bpd.cpu())
        nfes.append(res.nfe)
    bpd = torch.cat(values).double()
    se = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    settings = dict(res.settings)
    print(f"bits/dim {float(bpd.mean()):.4f} ± {se:.4f} (standard error over {n} images); "
          f"mean NFE {sum(nfes) / len(nfes):.1f}; {time.perf_counter() - start:.1f} s")
    print("settings: " + json.dumps({**settings, "data": args.data, "split": args.split, "n": n}, default=str))
    return 0


def _check_bpd_flags(args: argparse.Namespace, adaptive: tuple[str, ...]) -> None:
    """Flags that the chosen data or method would ignore are refused (nothing is silently ignored)."""
    if args.data == "digits" and args.data_root is not None:
        raise UsageError(f"--data-root is for --data cifar10 or folder (data 'digits' comes with scikit-learn), got {args.data_root!r}")
    for flag, value in (("--rtol", args.rtol), ("--atol", args.atol)):
        if value is not None and args.method not in adaptive:
            raise UsageError(f"{flag} applies to the adaptive methods {list(adaptive)}, not to --method {args.method!r} (set --steps)")
    args.rtol = 1e-5 if args.rtol is None else args.rtol
    args.atol = 1e-5 if args.atol is None else args.atol


def _add_sample_arguments(p: argparse.ArgumentParser) -> None:
    import solvers

    from .sde_names import SDE_NAMES

    p.add_argument("--model", help="checkpoint (.safetensors) written by `scoresde train`; default: the shipped model")
    p.add_argument("--sde", default="vp", choices=sorted(SDE_NAMES), help="SDE of the shipped default model (default: vp)")
    p.add_argument("--solver", default="pc", help="a name from `scoresde solvers` (default: pc)")
    p.add_argument("--option", action="append", type=parse_option, metavar="KEY=VALUE", help="solver option, repeatable")
    p.add_argument("--steps", type=_steps, help=f"grid steps, 1..{MAX_STEPS} (default: the solver's)")
    p.add_argument("--grid", choices=sorted(solvers.grids.GRIDS), help="time grid (default: the solver's)")
    p.add_argument("--n", type=_positive_int, default=64, help="number of samples (default: 64)")
    p.add_argument("--shape", type=_positive_int, nargs="+", metavar="DIM", help="sample shape without the batch")
    p.add_argument("--seed", type=_seed, default=0, help="random seed, 0..2**63-1 (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out", default="samples.png",
                   help=f"PNG grid to write, of the first min(n, {GRID_MAX}) samples (default: samples.png)")
    p.add_argument("--scale", type=_positive_int, default=4, help="pixel upscaling of the grid (default: 4)")
    p.add_argument("--batch-size", type=_positive_int, metavar="B",
                   help="samples per solver call, bounding its memory; with it --seed S gives sample i the seed S + i, "
                        "so the samples do not depend on B (a run without it draws all --n from one generator "
                        "seeded S) (default: all --n at once)")
    p.add_argument("--save", help="also save the raw samples (not clamped) as array x: .npy or .npz are streamed "
                                  "chunk by chunk (memory bounded by --batch-size, file written atomically); .pt "
                                  "holds all n samples in memory")
    p.add_argument("--y", type=_labels, metavar="LABELS",
                   help="class labels, e.g. 3 or 0,1,...,9, repeated to fill --n; default model: the shipped "
                        "class-conditional one (vp)")
    p.add_argument("--guidance-scale", type=float, metavar="W",
                   help="classifier-free guidance scale w (1: plain conditional; default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .training.config import TrainConfig

    _add_config_flags(p, TrainConfig)
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out-dir")
    p.set_defaults(func=cmd_train)


def _add_bpd_arguments(p: argparse.ArgumentParser) -> None:
    from .sde_names import SDE_NAMES

    p.add_argument("--model", help="checkpoint written by `scoresde train`; default: the shipped model")
    p.add_argument("--sde", default="vp", choices=sorted(SDE_NAMES), help="SDE of the shipped default model (default: vp)")
    p.add_argument("--data", default="digits", choices=["digits", "cifar10", "folder"], help="data set (default: digits)")
    p.add_argument("--data-root", help="folder of the data (cifar10, folder)")
    p.add_argument("--image-size", type=_positive_int, help="--data folder: resize images to this size (default: the model's)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="split (default: test)")
    p.add_argument("--n", type=_positive_int, help="first n images only (default: all)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="images per ODE solve (default: 128)")
    p.add_argument("--probes", type=_positive_int, default=1, help="Hutchinson probes (default: 1)")
    p.add_argument("--repeats", type=_positive_int, default=1, help="dequantization repeats (default: 1)")
    p.add_argument("--method", default="dopri5", help="torchdiffeq method, or dpm_solver for the fixed budget (default: dopri5)")
    p.add_argument("--steps", type=_steps, help=f"steps of a fixed-grid or fixed-budget method, 1..{MAX_STEPS}")
    p.add_argument("--rtol", type=float, help="relative tolerance of an adaptive method (default: 1e-5)")
    p.add_argument("--atol", type=float, help="absolute tolerance of an adaptive method (default: 1e-5)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of probes and dequantization, 0..2**63-1 (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=cmd_bpd)


def _add_solvers_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_solvers)


# command -> (its help line, the function that adds its arguments)
COMMANDS = {
    "sample": ("draw samples and write a PNG grid", _add_sample_arguments),
    "train": ("train a score network (multi-GPU: torchrun --nproc_per_node N -m scoresde train ...)", _add_train_arguments),
    "bpd": ("bits/dim of a data split through the probability-flow ODE", _add_bpd_arguments),
    "solvers": ("list every solver with its order, kind, SDEs and options", _add_solvers_arguments),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or only of `command` (the other commands then take no arguments:
    what their arguments' choices need, torch included, is not imported)."""
    parser = _Parser(prog="scoresde", description="Score-based diffusion models in continuous time.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_line, add_arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=help_line)
        if command is None or command == name:
            add_arguments(p)
    return parser


# What a bad flag value or file raises once parsed: validators raise ValueError (TypeError for a
# value of the wrong type, e.g. a --option literal), files OSError. Anything else is a bug and keeps
# its traceback.
USER_ERRORS = (UsageError, ValueError, TypeError, OSError)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else ""  # "": no command's arguments (e.g. --help)
    args = build_parser(command).parse_args(argv)
    start = time.perf_counter()
    try:
        code = args.func(args)
    except USER_ERRORS as e:
        print(f"scoresde {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    if args.command != "solvers":
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
