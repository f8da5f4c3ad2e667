"""The command line's argument checks: typed flag values, output paths, names shown without torch.

Everything here runs before any work: a bad value is a one-line error (exit status 2, no traceback).
Nothing at module level imports torch, so that `scoresde --help` and `scoresde sample --help` stay
instant; the tables the checks need (SDE names, grids, solvers) are imported when a value is checked.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import math
import os
import re
import sys
from pathlib import Path

EXIT_USAGE = 2

MAX_INT = 2**31 - 1  # counts and sizes (--n, --batch-size, ...): beyond this torch overflows
MAX_STEPS = 1_000_000  # grid steps
MAX_SEED = 2**63 - 1  # seeds: 0..2**63-1, what torch.Generator.manual_seed takes as a signed 64-bit int

# Shown in --help without importing torch; each flag's value is checked against the real table
# (scoresde.sde_names.SDE_NAMES, solvers.grids.GRIDS), and a test keeps these copies equal to them.
SDE_CHOICES = ("vp", "vp_cosine", "subvp", "ve", "ddpm", "flow")
GRID_CHOICES = ("karras", "quadratic_t", "uniform_lambda", "uniform_t")

# `--out` of `scoresde sample`: the file suffix names the image format Pillow writes
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (`prog: error: message`) and exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


GRID_MAX = 64  # the --out grids of `scoresde sample` and `cascade` show at most the first GRID_MAX samples


def bounded_int(text: str, low: int, high: int) -> int:
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


def positive_int(text: str) -> int:
    return bounded_int(text, 1, MAX_INT)


def steps(text: str) -> int:
    return bounded_int(text, 1, MAX_STEPS)


def seed(text: str) -> int:
    return bounded_int(text, 0, MAX_SEED)


def count(text: str) -> int:
    """An integer field of a config (a count or size; the config checks its least value)."""
    return bounded_int(text, 0, MAX_INT)


MAX_LITERAL = 10_000  # characters of a KEY=VALUE or literal flag: far above any option, far below a parser blow-up


def _bounded_literal(text: str, flag: str):
    """ast.literal_eval of text; ValueError/SyntaxError propagate; an over-long or deeply nested text
    (a MemoryError or RecursionError in the parser) is a one-line usage error naming the flag."""
    if len(text) > MAX_LITERAL:
        raise argparse.ArgumentTypeError(f"{flag} value is {len(text)} characters long; at most {MAX_LITERAL}")
    try:
        return ast.literal_eval(text)
    except (MemoryError, RecursionError):
        raise argparse.ArgumentTypeError(f"{flag} value is nested too deeply to parse: {text[:40]!r}...") from None


def parse_option(text: str) -> tuple[str, object]:
    """KEY=VALUE, VALUE parsed as a Python literal (number, bool, string, tuple) when it is one."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = _bounded_literal(raw, "--option")
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def labels(text: str) -> list[int]:
    """--y: comma-separated class labels, e.g. 3 or 0,1,2."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer labels, e.g. 3 or 0,1,2; got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"labels must be >= 0, got {text!r}")
    return values


def literal(text: str):
    """A config flag's value as a Python literal (tuples, lists, dicts, numbers)."""
    try:
        return _bounded_literal(text, "the flag's")
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"expected a Python literal, got {text!r}") from None


def sde_name(text: str) -> str:
    """--sde: a name in scoresde.sde_names.SDE_NAMES (imported only when a value is checked)."""
    from .sde_names import SDE_NAMES

    if text not in SDE_NAMES:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(SDE_NAMES)})")
    return text


def times(text: str) -> list[float]:
    """--times: comma-separated finite floats, e.g. 0.17,0.09 (the grid builder checks their order and range)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.17,0.09, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"every time must be finite, got {text!r}")
    return values


def grid_name(text: str) -> str:
    """--grid: a name in solvers.grids.GRIDS (imported only when a value is checked)."""
    from solvers.grids import GRIDS

    if text not in GRIDS:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(sorted(GRIDS))})")
    return text


# --- output paths ------------------------------------------------------------------------------

def check_out_dir(path: str, flag: str) -> None:
    """A folder to write into: created if missing, refused if a file holds its name."""
    if Path(path).exists() and not Path(path).is_dir():
        raise UsageError(f"{flag} {path!r} is a file, not a folder; choose a folder (it is created if missing)")


def check_out_file(path: str, flag: str, suffixes: tuple[str, ...]) -> None:
    """A file to write: its suffix one of `suffixes`, not a folder, and its folder already there."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path!r} is a folder; give a file name")
    if p.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {path!r}: use a {', '.join(suffixes[:-1])} or {suffixes[-1]} file name")
    parent = p.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{flag} {path!r}: Not a directory: {str(parent)!r} is a file, not a folder; choose another path")
    if not parent.is_dir():
        raise UsageError(f"{flag} {path!r}: its folder {str(parent)!r} does not exist; create it first or choose another path")


def check_image_suffix(path: str, flag: str) -> None:
    """--out: a suffix that Pillow writes here (.webp needs Pillow built with WebP)."""
    check_out_file(path, flag, IMAGE_SUFFIXES)
    if Path(path).suffix.lower() == ".webp":
        from PIL import features

        if not features.check("webp"):
            raise UsageError(f"{flag} {path!r}: this Pillow cannot write WebP; use .png or .jpg")


# --- --solver module:Class -------------------------------------------------------------------

def solver_class(spec: str):
    """The solvers.Solver subclass named by "module:Class", imported like `python -m` would (the
    current folder first on sys.path). This runs the module's code: name only modules you trust.

    A missing module, a missing class or a class that is no Solver is a UsageError; an error raised
    by the module's own code keeps its traceback (it is a bug to fix there)."""
    import solvers

    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name.isidentifier():
        raise UsageError(f"--solver {spec!r}: expected a solver name or module:Class, e.g. my_solvers:MySolver")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise  # the module was found but imports something missing: its traceback says where
        raise UsageError(f"--solver {spec!r}: no module {module_name!r} (looked in the current folder and sys.path)") from None
    finally:
        if added:
            sys.path.remove(cwd)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UsageError(f"--solver {spec!r}: module {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, solvers.Solver)):
        raise UsageError(f"--solver {spec!r}: {class_name} is not a subclass of solvers.Solver")
    return cls


# --- help of `scoresde train`: from the TrainConfig docstring --------------------------------

_SECTION = re.compile(r"^([A-Z][A-Za-z]*(?: \([^)]*\))?): ")


def docstring_sections(cls) -> dict[str, str]:
    """The class docstring's sections ("Data: ...", "Model: ...") as {title: text on one line}."""
    import inspect

    sections: dict[str, list[str]] = {}
    title = None
    for line in (inspect.getdoc(cls) or "").splitlines()[1:]:
        m = _SECTION.match(line)
        if m:
            title = m.group(1)
            line = line[m.end():]
        if title is not None and line.strip():
            sections.setdefault(title, []).append(line.strip())
    return {t: " ".join(lines) for t, lines in sections.items()}


def _clauses(text: str) -> list[str]:
    """`text` split at ", ", "; " and ". " outside parentheses."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and ch in ",;." and (i + 1 == len(text) or text[i + 1] == " "):
            out.append(text[start:i].strip())
            start = i + 1
    out.append(text[start:].strip())
    return [c for c in out if c]


def _outside_parens(text: str) -> str:
    depth, kept = 0, []
    for ch in text:
        depth += ch == "("
        kept.append(ch if depth == 0 else " ")
        depth -= ch == ")"
    return "".join(kept)


def field_help(cls) -> dict[str, tuple[str, str]]:
    """{field: (section title, the docstring's words about it)} for the fields of dataclass `cls`.

    A field's words are the clause of its section (split at commas, semicolons and full stops outside
    parentheses) that names it, preferring `name` in backticks to a bare word and a mention outside
    parentheses to one inside; a clause that only lists names ("lr, betas, adam_eps") gives no
    words (the section's text, shown above the flags, describes them). Fields the docstring never
    names are left out."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(cls)]
    found: dict[str, tuple[str, str, int]] = {}
    for title, text in docstring_sections(cls).items():
        for clause in _clauses(text):
            plain = clause.replace("`", "")
            bare = all(w in names or w == "and" for w in re.split(r"[\s,]+", plain) if w)
            places = (_outside_parens(clause), clause, _outside_parens(plain), plain)
            for name in names:
                patterns = (rf"`{re.escape(name)}`",) * 2 + (rf"(?<![\w.]){re.escape(name)}(?!\w)",) * 2
                for rank, (pattern, where) in enumerate(zip(patterns, places)):
                    if (name not in found or rank < found[name][2]) and re.search(pattern, where):
                        found[name] = (title, "" if bare else plain, rank)
                        break
    return {name: (title, words) for name, (title, words, _) in found.items()}
