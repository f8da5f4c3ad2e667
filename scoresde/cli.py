"""Command line: `scoresde sample | train | bpd | solvers | doctor | cascade` (also `python -m scoresde`).

User errors (unknown solver, bad option value, missing file, an output path that cannot be
written) print one line naming the bad value and the valid choices, and exit with status 2, before
any work (the checks live in `cli_args`). `main` builds only the arguments of the command it runs,
so `scoresde --help` and `scoresde sample --help` import neither torch nor the rest of the package.
Long commands show a tqdm bar (rate, time left) on stderr unless --quiet. A reader that closes the
pipe early (`scoresde solvers | head`) ends the command quietly with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import cli_args, cli_cascade
from .cli_args import (  # noqa: F401  (generate.py imports the underscored names from here)
    EXIT_USAGE, GRID_CHOICES, GRID_MAX, MAX_INT, MAX_SEED, MAX_STEPS, SDE_CHOICES, UsageError, parse_option,
)

_Parser = cli_args.Parser
_positive_int, _steps, _seed, _count = cli_args.positive_int, cli_args.steps, cli_args.seed, cli_args.count
_labels, _literal, _check_out_dir = cli_args.labels, cli_args.literal, cli_args.check_out_dir

# the shipped few-step kinds (checkpoints.FEW_STEP_MODELS, named here so that --help imports no torch; a test
# checks they agree): sampled with solver "consistency" by default
FEW_STEP_KINDS = ("cd", "ect")


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


def _load_model(path: str | None, sde: str, device: str, *, conditional: bool = False, kind: str = "diffusion",
                data: str = "digits"):
    if path is None:
        from .training.checkpoints import default_model

        try:
            return default_model(sde, conditional=conditional, kind=kind, data=data, device=device)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if kind != "diffusion":
        raise UsageError(f"--kind {kind} chooses a shipped model; it does not apply with --model {path}")
    if not Path(path).exists():
        raise UsageError(f"model file {path!r} does not exist")
    from .training.checkpoints import load_model

    return load_model(path, device=device)


def _grid_images(first, n: int, labels: list[int] | None):
    """(images in grid order, images per row or None, how many samples they show) of the --out grid.

    With several --y labels, one row per label: sample i has label i mod L, so row r holds samples r,
    r + L, ... of the first min(n, GRID_MAX), and a row with fewer samples ends in blank (-1) cells.
    Otherwise the first min(n, GRID_MAX) samples, about as many per row as rows."""
    shown = min(n, GRID_MAX)
    if labels is None or len(labels) < 2 or len(labels) > GRID_MAX:
        return first[:shown], None, shown
    rows, cols = min(len(labels), shown), -(-shown // len(labels))
    grid = first.new_full((rows * cols, *first.shape[1:]), -1.0)
    for r in range(rows):
        for c in range(cols):
            if c * len(labels) + r < shown:
                grid[r * cols + c] = first[c * len(labels) + r]
    return grid, cols, shown


def _check_sample_paths(args: argparse.Namespace) -> None:
    """--out, --save and --image-dir before any work: suffixes, existing folders."""
    cli_args.check_image_suffix(args.out, "--out")
    if args.save is not None:
        cli_args.check_out_file(args.save, "--save", (".npy", ".npz", ".pt"))
    if args.image_dir is not None:
        _check_out_dir(args.image_dir, "--image-dir")


def _solver_argument(args: argparse.Namespace) -> dict:
    """sample()'s solver arguments: a name with its --option values, or a module:Class built with them."""
    options = dict(args.option or [])
    if args.solver is None:  # the model's own sampler (scoresde.sampling.model_sampler)
        return {"solver": None, **options}
    if ":" not in args.solver:
        return {"solver": args.solver, **options}
    cls = cli_args.solver_class(args.solver)
    return {"solver": cls(**options)}  # a TypeError names an unknown option


def _times_grid(args: argparse.Namespace, model):
    """The grid [T, *--times, t_end] (t_end: the consistency model's boundary time, else the SDE's t_eps)."""
    from solvers.consistency import boundary_time, times_grid

    if args.steps is not None or args.grid is not None:
        raise UsageError("--times sets the grid and its steps (len + 1): leave out --steps and --grid")
    try:
        return times_grid(model.sde, args.times, t_end=boundary_time(model))
    except ValueError as e:
        raise UsageError(f"--times: {e}") from None


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .sampling_files import save_samples
    from .training.samples import save_image_grid

    if args.guidance_scale is not None and args.y is None:
        raise UsageError("--guidance-scale needs class labels --y")
    if args.model is not None and args.data != "digits":
        raise UsageError(f"--data {args.data} chooses a shipped model; it does not apply with --model {args.model}")
    _check_device(args.device, "sampling")
    _check_sample_paths(args)
    solver = _solver_argument(args)
    model = _load_model(args.model, args.sde, args.device, conditional=args.y is not None, kind=args.kind,
                        data=args.data)
    steps, grid = args.steps, args.grid  # solver None: sample() takes the model's own sampler, steps and grid
    if args.y is not None:
        _check_labels(args.y, model)
    if args.times is not None:
        grid = _times_grid(args, model)
    kwargs = dict(
        model=model, steps=steps, grid=grid, shape=None if args.shape is None else tuple(args.shape),
        seed=args.seed, device=args.device, progress=not args.quiet, **solver,
    )  # shape None: the model's image_shape
    if args.y is not None:  # labels repeat cyclically to fill the n samples
        kwargs.update(y=torch.tensor(args.y)[torch.arange(args.n) % len(args.y)], guidance_scale=args.guidance_scale)
    pt = args.save is not None and args.save.endswith(".pt")  # .pt: all n in memory; .npy, .npz: streamed
    res = save_samples(None if pt else args.save, n=args.n, batch_size=args.batch_size, image_dir=args.image_dir,
                       keep_first=args.n if pt else GRID_MAX, **kwargs)
    if pt:
        from .files import atomic_write

        atomic_write(args.save, lambda tmp: torch.save(res.first.cpu(), tmp))
    grid, per_row, shown = _grid_images(res.first, args.n, args.y)
    save_image_grid(grid.clamp(-1, 1), args.out, nrow=per_row, scale=args.scale)
    shown = f"{args.n} samples" if shown == args.n else f"the first {shown} of {args.n} samples"
    layout = "" if per_row is None else ", one row per label of --y"
    print(f"wrote {args.out} ({shown}{layout}); NFE {res.nfe}, {res.seconds:.2f} s")
    if args.image_dir is not None:
        print(f"wrote {args.n} PNG files {Path(args.image_dir) / '000000.png'} ... to {args.image_dir}")
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
    """One flag per field of the frozen dataclass `cls` (typed, with choices for Literal fields), grouped
    and described by the sections of its docstring ("Data: ...", "Model: ...")."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    described = cli_args.field_help(cls)
    groups = {title: p.add_argument_group(title, text.replace("`", ""))
              for title, text in cli_args.docstring_sections(cls).items()}
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
        title, words = described.get(f.name, (None, ""))
        if title is not None and not words:  # listed by name only: its section's text above describes it
            words = f"see {title.split()[0]} above"
        kwargs["help"] = (f"{words} " if words else "").replace("%", "%%") + f"(default: {default!r})"
        (groups[title] if title is not None else p).add_argument(flag, **kwargs)


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from .training.config import TrainConfig
    from .training.loop import setup_distributed, train

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    if args.quiet:
        fields["progress"] = False
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
    if res.loss is None:  # the checkpoint had already reached --steps: no step ran
        print(f"step {res.step}: the run had already reached its last step (--steps {config.steps}), nothing to "
              f"train; raise --steps to continue it; checkpoint {ckpt}")
    else:
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
    if args.data in ("cifar10", "folder") and args.data_root is None:  # before any model is loaded
        raise UsageError(f"--data {args.data} needs root: pass --data-root (the folder of its files)")
    # without --model: the shipped patch model for --data patches, else the shipped digits model (resized to, for a folder)
    model = _load_model(args.model, args.sde, args.device, data="patches" if args.data == "patches" else "digits")
    image_size, channels = args.image_size, 3
    if args.data == "folder":  # images resized to the model's size and channels unless --image-size says otherwise
        shape = getattr(model, "image_shape", None)
        if image_size is None and shape is None:
            raise UsageError("--data folder: this model does not record its image size; pass --image-size")
        channels = 3 if shape is None else shape[0]
        image_size = shape[-1] if image_size is None else image_size
    elif args.data == "patches":  # 16 or 32: the model's size unless --image-size says otherwise
        shape = getattr(model, "image_shape", None)
        image_size = image_size if image_size is not None else (16 if shape is None else shape[-1])
    elif image_size is not None:
        raise UsageError(f"--image-size is for --data folder or patches only (data {args.data!r} has a fixed size)")
    images = data_mod.load(args.data, root=args.data_root, split=args.split, image_size=image_size, channels=channels)
    n = len(images) if args.n is None else min(args.n, len(images))
    x_int = images.images[:n]
    x = data_mod.to_model_input(x_int, images.levels, dtype=torch.float32).to(args.device)
    if args.seed + n - 1 > MAX_SEED:  # image i draws from its own generator seeded --seed + i
        raise UsageError(f"--seed {args.seed} gives the {n} images the seeds {args.seed}..{args.seed + n - 1}, "
                         f"past 2**63 - 1; choose --seed <= {MAX_SEED - n + 1}")
    # a latent model reports the continuous density of its latents s E(x): no dequantization (docs/latent.md)
    latent = hasattr(model, "latent_shape")
    levels = None if latent else images.levels
    values, nfes = [], []
    start = time.perf_counter()
    bar = _bar(n, "bits/dim", "image", quiet=args.quiet)
    try:
        for i in range(0, n, args.batch_size):
            res = bits_per_dim(
                model, x[i:i + args.batch_size], levels=levels, repeats=args.repeats, n_probes=args.probes,
                rtol=args.rtol, atol=args.atol, method=args.method, steps=args.steps, seed=args.seed + i,
            )
            values.append(res.bpd.cpu())
            nfes.append(res.nfe)
            if bar is not None:
                bar.update(res.bpd.shape[0])
                bar.set_postfix(bpd=f"{float(torch.cat(values).mean()):.3f}", nfe=res.nfe)
    finally:
        if bar is not None:
            bar.close()
    bpd = torch.cat(values).double()
    se = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    settings = dict(res.settings)
    what = "latent bits/dim (per latent dimension, of z = s E(x); not a pixel figure)" if latent else "bits/dim"
    print(f"{what} {float(bpd.mean()):.4f} ± {se:.4f} (standard error over {n} images); "
          f"mean NFE {sum(nfes) / len(nfes):.1f}; {time.perf_counter() - start:.1f} s")
    print("settings: " + json.dumps({**settings, "data": args.data, "split": args.split, "n": n}, default=str))
    return 0


def _bar(total: int, desc: str, unit: str, *, quiet: bool):
    """A tqdm bar (count, rate and time left) on stderr, or None with --quiet."""
    if quiet:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)


def _check_bpd_flags(args: argparse.Namespace, adaptive: tuple[str, ...]) -> None:
    """Flags that the chosen data or method would ignore are refused (nothing is silently ignored)."""
    if args.data in ("digits", "patches") and args.data_root is not None:
        raise UsageError(f"--data-root is for --data cifar10 or folder (data {args.data!r} comes with scikit-learn), got {args.data_root!r}")
    for flag, value in (("--rtol", args.rtol), ("--atol", args.atol)):
        if value is not None and args.method not in adaptive:
            raise UsageError(f"{flag} applies to the adaptive methods {list(adaptive)}, not to --method {args.method!r} (set --steps)")


def _add_sde_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sde", default="vp", type=cli_args.sde_name, metavar="{" + ",".join(SDE_CHOICES) + "}",
                   help="SDE of the shipped default model (default: vp)")


def _add_sample_arguments(p: argparse.ArgumentParser) -> None:
    # no import of torch here: `scoresde sample --help` stays instant (names are checked when given)
    p.add_argument("--model", help="checkpoint (.safetensors) written by `scoresde train`; default: the shipped model")
    _add_sde_argument(p)
    p.add_argument("--data", default="digits", choices=["digits", "patches"],
                   help="which shipped model without --model: the digits models (default) or the models of the "
                        "natural-image patches (patches; vp; 16 x 16, docs/backbones.md, or 32 x 32 with --kind latent)")
    p.add_argument("--kind", default="diffusion", choices=["diffusion", *FEW_STEP_KINDS, "latent"],
                   help="which shipped model of --sde: the diffusion model (default), a few-step consistency model "
                        "made from it (cd: distilled, the better one; ect: consistency-tuned; digits, vp only; "
                        "docs/few_step.md), or the latent diffusion model of "
                        "the 32 x 32 patches (latent; with --data patches; docs/latent.md)")
    p.add_argument("--solver", default=None,
                   help="a name from `scoresde solvers` (default: pc; consistency for a consistency model; ddim for a "
                        "progressive-distillation student, `scoresde train --loss pd`, with its --steps and --grid as its "
                        "file records them, and for a rectified flow, `scoresde train --loss reflow`: one Euler step "
                        "(DDIM is Euler on sde flow), --steps 1 --grid uniform_t); auto: the best measured deterministic solver, "
                        "options and grid for the model's SDE and --steps (solvers.recommend); or module:Class, a solvers.Solver subclass "
                        "built with the --option values; module:Class imports that module (the current folder "
                        "first), running its code as `python -m` would: name only code you trust")
    p.add_argument("--option", action="append", type=parse_option, metavar="KEY=VALUE", help="solver option, repeatable")
    p.add_argument("--steps", type=_steps, help=f"grid steps, 1..{MAX_STEPS} (default: the solver's)")
    p.add_argument("--grid", type=cli_args.grid_name, metavar="{" + ",".join(GRID_CHOICES) + "}",
                   help="time grid (default: the model's fitted grid for the solver and --steps when its file "
                        "stores one, else the solver's)")
    p.add_argument("--times", type=cli_args.times, metavar="T1,T2,...",
                   help="intermediate grid times, strictly decreasing inside (t_end, T): the grid is [T, T1, T2, ..., "
                        "t_end] (t_end: a consistency model's boundary time, else the SDE's t_eps), e.g. --times "
                        "0.17,0.09 for 3-step consistency sampling; instead of --steps and --grid")
    p.add_argument("--n", type=_positive_int, default=64, help="number of samples (default: 64)")
    p.add_argument("--shape", type=_positive_int, nargs="+", metavar="DIM", help="sample shape without the batch")
    p.add_argument("--seed", type=_seed, default=0, help="random seed, 0..2**63-1 (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out", default="samples.png",
                   help=f"image grid of the first min(n, {GRID_MAX}) samples, in the format its suffix names: "
                        f"{', '.join(cli_args.IMAGE_SUFFIXES)}; with several --y labels one row per label "
                        "(default: samples.png)")
    p.add_argument("--scale", type=_positive_int, default=4, help="pixel upscaling of the grid (default: 4)")
    p.add_argument("--batch-size", type=_positive_int, metavar="B",
                   help="samples per solver call, bounding its memory; with it --seed S gives sample i the seed S + i, "
                        "so the samples do not depend on B (a run without it draws all --n from one generator "
                        "seeded S) (default: all --n at once)")
    p.add_argument("--save", help="also save the raw samples (not clamped) as array x: .npy or .npz are streamed "
                                  "chunk by chunk (memory bounded by --batch-size, file written atomically); .npz "
                                  "adds images (n, H, W, C) uint8, labels (with --y) and settings (a JSON string); "
                                  ".pt holds all n samples in memory")
    p.add_argument("--image-dir", metavar="DIR",
                   help="also write each sample as DIR/000000.png, 000001.png, ... as its chunk is drawn "
                        "(DIR is created if missing)")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar (as --no-progress)")
    p.set_defaults(func=cmd_train)


def _add_bpd_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint written by `scoresde train`; default: the shipped patch model for "
                                    "--data patches, else the shipped digits model of --sde")
    _add_sde_argument(p)
    p.add_argument("--data", default="digits", choices=["digits", "patches", "cifar10", "folder"],
                   help="data set (default: digits; patches: natural-image patches, docs/backbones.md)")
    p.add_argument("--data-root", help="folder of the data (cifar10, folder)")
    p.add_argument("--image-size", type=_positive_int, help="--data folder: resize images to this size; --data patches: 16 or 32 (default: the model's)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="split (default: test)")
    p.add_argument("--n", type=_positive_int, help="first n images only (default: all)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="images per ODE solve (default: 128)")
    p.add_argument("--probes", type=_positive_int, default=1, help="Hutchinson probes (default: 1)")
    p.add_argument("--repeats", type=_positive_int, default=1, help="dequantization repeats (default: 1)")
    p.add_argument("--method", default="dopri5", help="torchdiffeq method, or a fixed budget: dpm_solver, dpm_solver_4m, dpm_solver_6m "
                   "(docs/likelihood.md; default: dopri5)")
    p.add_argument("--steps", type=_steps, help=f"steps of a fixed-grid or fixed-budget method, 1..{MAX_STEPS}")
    p.add_argument("--rtol", type=float, help="relative tolerance of an adaptive method (default: 1e-5)")
    p.add_argument("--atol", type=float, help="absolute tolerance of an adaptive method (default: 1e-5)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of dequantization and probes, 0..2**63-1: image i draws from its own generator seeded "
                        "S + i, so the result does not depend on --batch-size (adaptive --method: up to the step "
                        "sizes a batch shares) (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bpd)


def _add_solvers_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_solvers)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import collect, main_report

    _check_device(args.device, "the speed probe")
    main_report(collect(probe_seconds=args.probe_seconds, device=args.device))
    return 0


def _probe_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 600:
        raise argparse.ArgumentTypeError(f"expected seconds in 0..600, got {text!r}")
    return value


def _add_doctor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probe-seconds", type=_probe_seconds, default=5.0, metavar="S",
                   help="length of the speed probe (0: none; default: 5)")
    p.add_argument("--device", default="cpu", help="device of the speed probe (default: cpu)")
    p.set_defaults(func=cmd_doctor)


# command -> (its help line, the function that adds its arguments)
COMMANDS = {
    "sample": ("draw samples and write a PNG grid", _add_sample_arguments),
    "train": ("train a score network (multi-GPU: torchrun --nproc_per_node N -m scoresde train ...)", _add_train_arguments),
    "bpd": ("bits/dim of a data split through the probability-flow ODE", _add_bpd_arguments),
    "solvers": ("list every solver with its order, kind, SDEs and options", _add_solvers_arguments),
    "doctor": ("versions, threads, CPUs, devices and a speed probe: why is my run slow?", _add_doctor_arguments),
    "cascade": ("sample a base model, then a super-resolution stage conditioned on its samples",
                cli_cascade.add_arguments),
}
QUICK = ("solvers", "doctor")  # commands that print no "done in" line


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
        sys.stdout.flush()  # here, so that a closed pipe is met inside this try
    except BrokenPipeError:  # e.g. `scoresde solvers | head`: the reader left; stop quietly
        _silence_stdout()
        return 1
    except USER_ERRORS as e:
        print(f"scoresde {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    if args.command not in QUICK:
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    """Point stdout at os.devnull, so that Python's final flush at exit meets no closed pipe (the
    recipe of the Python docs, "Note on SIGPIPE" in the signal module)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no real file (e.g. captured by a test): nothing to flush
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
