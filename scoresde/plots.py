"""Figures of benchmark results and training runs, written as PNG files (needs the `plots` extra).

Library API rather than benchmark code because a user plots the same things for their own runs: the
loss of a run's `metrics.jsonl` (`read_metrics`, `plot_training`), an error-versus-NFE table of their
solvers (`plot_error_vs_nfe`, the shape of `benchmarks/solvers.py`'s results) and labelled rows of
images (`plot_image_rows`: guidance scales, inpainting masks). The benchmarks that draw the figures of
docs/ call these functions.

matplotlib (`pip install -e ".[plots]"`, pinned in constraints.txt) is imported inside the functions,
so `import scoresde` never loads it; figures are drawn on matplotlib's Agg canvas (`Figure`, not
pyplot: no screen, and the caller's pyplot backend is left alone) and written atomically
(`files.atomic_write`: a temporary file renamed over the target).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .files import atomic_write

__all__ = ["PLOTS_EXTRA", "plot_error_vs_nfe", "plot_image_rows", "plot_training", "read_metrics", "require_matplotlib"]

PLOTS_EXTRA = 'pip install -e ".[plots]"'  # how to get matplotlib, as the errors say
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def require_matplotlib():
    """matplotlib's `Figure` class; ImportError naming the `plots` extra when matplotlib is missing.

    Scripts call it before long work, so that a missing extra fails at once rather than at the end.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"plotting needs matplotlib, the optional 'plots' extra of scoresde: {PLOTS_EXTRA} "
                          "(constraints.txt pins its version)") from None
    return Figure


def check_png_path(path: str | os.PathLike) -> Path:
    """`path` as a Path; ValueError unless it ends in .png and its folder exists."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG: the path must end in .png, got {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"no folder {str(path.parent)!r} to write {path.name!r} into")
    return path


def check_plot_dir(folder: str | os.PathLike, name: str) -> str | None:
    """Why `folder`/`name` cannot be plotted to (matplotlib missing, not a .png, no such folder), or None.

    Scripts with `--plot-dir` call it before their long work and pass the reason to `parser.error`."""
    try:
        require_matplotlib()
        check_png_path(os.path.join(folder, name))
    except (ImportError, ValueError) as e:
        return str(e)
    return None


def palette_png(png: bytes) -> bytes:
    """A PNG re-encoded with a palette of at most 256 colours (what a line plot or a grid of grey digits
    uses anyway): about a third of matplotlib's RGBA file for these figures."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _save(fig, path: Path, dpi: int) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write(path, lambda tmp: tmp.write_bytes(palette_png(buffer.getvalue())))
    return path


def plot_error_vs_nfe(results: Mapping[tuple[str, str], Mapping[int, Sequence[float]]], path: str | os.PathLike, *,
                      title: str = "", column: int = 0, ylabel: str = "RMS endpoint error", dpi: int = 100) -> Path:
    """Error against NFE on log-log axes, one line per (configuration, grid); writes the PNG at `path`.

    results[(label, grid)][budget] = (rms, median, nfe_used), as `benchmarks/solvers.py`'s `run` returns
    them; `column` picks the error plotted (0 RMS, 1 median) and the x value is nfe_used, the evaluations
    the run really took. A configuration keeps one colour and marker, a grid one line style. Non-finite
    errors (a diverged run) are left out. Returns the path.
    """
    path = check_png_path(path)
    if column not in (0, 1):
        raise ValueError(f"column must be 0 (RMS) or 1 (median), got {column!r}")
    lines = {key: sorted((int(row[2]), float(row[column])) for row in table.values()
                         if math.isfinite(float(row[column])) and float(row[column]) > 0)
             for key, table in results.items()}
    lines = {key: pts for key, pts in lines.items() if pts}
    if not lines:
        raise ValueError("no finite positive error to plot: results are empty or every run diverged")
    Figure = require_matplotlib()
    labels = list(dict.fromkeys(lab for lab, _ in lines))
    grid_names = list(dict.fromkeys(g for _, g in lines))
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(labels))]
    for (lab, grid_name), pts in lines.items():
        i, j = labels.index(lab), grid_names.index(grid_name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[i], marker=_MARKERS[i % len(_MARKERS)],
                linestyle=_LINESTYLES[j % len(_LINESTYLES)], markersize=4, linewidth=1.2,
                label=f"{lab} | {grid_name}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations)")
    ax.set_ylabel(ylabel)
    budgets = sorted({int(k) for table in results.values() for k in table})  # ticks at the budgets, not at every NFE used
    ax.set_xticks(budgets, [str(k) for k in budgets])
    ax.minorticks_off()
    ax.grid(True, which="major", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path, dpi)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a run's metrics.jsonl (`scoresde.training.metrics_log`), in file order.

    Blank lines are skipped; a line that is not a JSON object with an integer `step` and a number
    `loss` raises ValueError naming the file and line.
    """
    path = Path(path)
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        ok = (isinstance(rec, dict) and isinstance(rec.get("step"), int) and not isinstance(rec.get("step"), bool)
              and isinstance(rec.get("loss"), (int, float)) and not isinstance(rec.get("loss"), bool))
        if not ok:
            raise ValueError(f"{path}: line {i} is not a JSON object with an integer 'step' and a number 'loss'")
        records.append(rec)
    return records


def plot_training(metrics: Sequence[Mapping], path: str | os.PathLike, *,
                  bpd: Sequence[tuple[int, float, float]] = (), bpd_label: str = "test bits/dim",
                  title: str = "", dpi: int = 100) -> Path:
    """The training loss along a run (left) and bits/dim at its checkpoints (right, when `bpd` is given).

    metrics: records with "step" and "loss" (`read_metrics` of a metrics.jsonl: the mean loss of each log
    interval); bpd: (step, bits/dim, standard error) per evaluated checkpoint, drawn with error bars of
    one standard error (NaN: none), under the title bpd_label (say how bits/dim was measured). Returns
    the path.
    """
    path = check_png_path(path)
    if not metrics:
        raise ValueError("metrics is empty: nothing to plot")
    Figure = require_matplotlib()
    fig = Figure(figsize=(9.0 if bpd else 5.0, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if bpd else 1, squeeze=False)[0]
    steps = [int(r["step"]) for r in metrics]
    ax = axes[0]
    ax.plot(steps, [float(r["loss"]) for r in metrics], color="C0", linewidth=1.0)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    ax.set_title("mean loss per log interval", fontsize=8)
    ax.grid(True, alpha=0.3)
    if bpd:
        ax = axes[1]
        pts = sorted(bpd)
        se = [e if math.isfinite(e) else 0.0 for _, _, e in pts]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=se, color="C1", marker="o", markersize=4,
                    capsize=2, linewidth=1.2)
        for s, b, _ in pts[-1:]:
            ax.annotate(f"{b:.3f}", (s, b), textcoords="offset points", xytext=(-4, 6), ha="right", fontsize=8)
        ax.set_xlabel("training step")
        ax.set_ylabel("bits/dim")
        ax.set_title(bpd_label, fontsize=8)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


def _to_rgb(x: Tensor, unknown: Tensor | None) -> Tensor:
    """Images (N, C, H, W) in [-1, 1] (C = 1 or 3) -> (N, H, W, 3) in [0, 1]; pixels where `unknown`
    (bool, broadcastable to (N, 1, H, W)) is True are painted a flat blue."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    rgb = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1).clone()
    if unknown is not None:
        hole = torch.as_tensor(unknown, dtype=torch.bool).cpu().broadcast_to((x.shape[0], 1, *x.shape[2:]))
        paint = torch.tensor([0.25, 0.45, 0.85]).reshape(1, 3, 1, 1).expand_as(rgb)
        rgb = torch.where(hole, paint, rgb)
    return rgb.permute(0, 2, 3, 1)


def plot_image_rows(rows: Sequence[Tensor], path: str | os.PathLike, *, row_labels: Sequence[str],
                    col_labels: Sequence[str] | None = None, unknown: Mapping[int, Tensor] | None = None,
                    title: str = "", cell: float = 0.55, dpi: int = 100) -> Path:
    """A grid of images, one labelled row per tensor of `rows`; writes the PNG at `path`.

    rows: tensors (N, C, H, W) in [-1, 1] (C = 1 grey or 3 RGB), the same N for every row (N columns,
    headed by col_labels); unknown: {row index: bool mask broadcastable to (N, 1, H, W), True where a
    pixel is hidden}, drawn in blue (the "masked" rows of an inpainting figure). cell: inches per image.
    Returns the path.
    """
    path = check_png_path(path)
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    n = rows[0].shape[0] if rows[0].ndim == 4 else None
    if len(row_labels) != len(rows):
        raise ValueError(f"row_labels has {len(row_labels)} entries for {len(rows)} rows")
    if col_labels is not None and len(col_labels) != n:
        raise ValueError(f"col_labels has {len(col_labels)} entries for {n} columns")
    if any(r.ndim != 4 or r.shape[0] != n for r in rows):
        raise ValueError(f"every row must be (N, C, H, W) with the same N; got {[tuple(r.shape) for r in rows]}")
    unknown = dict(unknown or {})
    if any(not 0 <= i < len(rows) for i in unknown):
        raise ValueError(f"unknown's row indices must lie in [0, {len(rows)}), got {sorted(unknown)}")
    images = [_to_rgb(r, unknown.get(i)) for i, r in enumerate(rows)]
    Figure = require_matplotlib()
    # margins in inches: row labels on the left, column labels (and the title) on top; square cells
    left, top, pad = 1.1, (0.55 if title else 0.3), 0.05
    width, height = left + n * cell + pad, top + len(rows) * cell + pad
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(len(rows), n, squeeze=False, gridspec_kw={"wspace": 0.08, "hspace": 0.08})
    fig.subplots_adjust(left=left / width, right=1 - pad / width, bottom=pad / height, top=1 - top / height)
    for i, row in enumerate(images):
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(row[j].numpy(), interpolation="nearest", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j == 0:
                ax.set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
            if i == 0 and col_labels is not None:
                ax.set_title(col_labels[j], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path, dpi)
