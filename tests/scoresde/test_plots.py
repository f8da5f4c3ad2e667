"""scoresde.plots: each figure is a valid PNG of the expected size, written atomically; a clear error
without matplotlib; `import scoresde` never loads it; the benchmarks' --plot-dir."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde import plots

ROOT = Path(__file__).resolve().parents[2]


def fake_results():
    """benchmarks/solvers.py's shape: {(label, grid): {budget: (rms, median, nfe_used)}}; one diverged run."""
    return {
        ("ddim", "uniform_t"): {5: (0.3, 0.2, 5), 10: (0.15, 0.1, 10), 20: (0.07, 0.05, 20)},
        ("unipc(order=3)", "uniform_lambda"): {5: (0.1, 0.05, 5), 10: (0.01, 0.004, 10), 20: (1e-3, 5e-4, 20)},
        ("heun", "karras"): {5: (float("nan"), float("nan"), 5), 10: (0.05, 0.03, 9), 20: (0.01, 0.008, 19)},
    }


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()  # the whole file decodes
    with Image.open(path) as im:
        return im.size


def only_file(folder: Path) -> Path:
    files = list(folder.iterdir())
    assert len(files) == 1, files  # no temporary file left beside it
    return files[0]


def test_error_vs_nfe_writes_a_png(tmp_path):
    out = plots.plot_error_vs_nfe(fake_results(), tmp_path / "err.png", title="vp", dpi=50)
    assert out == tmp_path / "err.png" and only_file(tmp_path) == out
    w, h = png_size(out)
    # 7.5 x 4.8 inches at 50 dpi, widened by the legend outside the axes and trimmed to the drawing
    assert 300 <= w <= 700 and 180 <= h <= 300, (w, h)
    with Image.open(out) as im:
        assert im.mode == "P" and len(im.getpalette()) <= 3 * 256  # re-encoded with a palette (plots.palette_png)
    bigger = plots.plot_error_vs_nfe(fake_results(), tmp_path / "err2.png", dpi=100)
    assert png_size(bigger)[0] > 1.8 * w  # dpi scales the picture


def test_error_vs_nfe_rejects_what_it_cannot_draw(tmp_path):
    nothing = {("ddim", "uniform_t"): {5: (math.nan, math.nan, 5)}}
    with pytest.raises(ValueError, match="no finite positive error"):
        plots.plot_error_vs_nfe(nothing, tmp_path / "x.png")
    with pytest.raises(ValueError, match="column must be 0"):
        plots.plot_error_vs_nfe(fake_results(), tmp_path / "x.png", column=2)
    with pytest.raises(ValueError, match="must end in .png"):
        plots.plot_error_vs_nfe(fake_results(), tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="no folder"):
        plots.plot_error_vs_nfe(fake_results(), tmp_path / "missing" / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_training_plot_from_a_metrics_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "grad_norm": 1.0, "images_per_s": 100.0} for s in range(10, 110, 10)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + "\n")
    metrics = plots.read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(10, 110, 10))
    plot_dir = tmp_path / "plots"
    plot_dir.mkdir()
    out = plots.plot_training(metrics, plot_dir / "t.png", bpd=[(50, 3.0, 0.05), (100, 2.5, math.nan)], dpi=50)
    w, h = png_size(only_file(plot_dir))
    assert out == plot_dir / "t.png" and 400 <= w <= 480 and 160 <= h <= 190, (w, h)  # 9 x 3.6 inches
    alone = plots.plot_training(metrics, plot_dir / "loss.png", dpi=50)  # no bits/dim: one panel
    assert png_size(alone)[0] < 0.7 * w


def test_read_metrics_names_a_bad_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": "2", "loss": 0.4}\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        plots.read_metrics(path)
    with pytest.raises(ValueError, match="metrics is empty"):
        plots.plot_training([], tmp_path / "t.png")


def test_image_rows_with_masks(tmp_path):
    gen = torch.Generator().manual_seed(0)
    rows = [torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1 for _ in range(3)]
    hidden = torch.zeros(1, 8, 8, dtype=torch.bool)
    hidden[:, 2:6, 2:6] = True
    out = plots.plot_image_rows(rows, tmp_path / "g.png", row_labels=["a", "b", "c"], col_labels=list("012345"),
                                unknown={1: hidden}, title="t", cell=0.5, dpi=100)
    w, h = png_size(only_file(tmp_path))
    # 1.1 + 6 x 0.5 + 0.05 inches by 0.55 + 3 x 0.5 + 0.05, trimmed to the drawing
    assert out == tmp_path / "g.png" and 300 <= w <= 420 and 170 <= h <= 240, (w, h)
    with Image.open(out) as im:  # the hidden pixels are painted blue: a strongly blue pixel exists
        px = torch.from_numpy(np.array(im.convert("RGB"))).reshape(-1, 3).long()
    assert bool(((px[:, 2] - px[:, 0]) > 100).any())
    rgb = [torch.rand(2, 3, 4, 4, generator=gen) * 2 - 1]
    png_size(plots.plot_image_rows(rgb, tmp_path / "rgb.png", row_labels=["x"]))


def test_image_rows_reject_mismatches(tmp_path):
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="row_labels has 1 entries for 2 rows"):
        plots.plot_image_rows([x, x], tmp_path / "g.png", row_labels=["a"])
    with pytest.raises(ValueError, match="same N"):
        plots.plot_image_rows([x, x[:3]], tmp_path / "g.png", row_labels=["a", "b"])
    with pytest.raises(ValueError, match="col_labels has 2 entries for 4 columns"):
        plots.plot_image_rows([x], tmp_path / "g.png", row_labels=["a"], col_labels=["0", "1"])
    with pytest.raises(ValueError, match="C = 1 or 3"):
        plots.plot_image_rows([torch.zeros(4, 2, 8, 8)], tmp_path / "g.png", row_labels=["a"])
    with pytest.raises(ValueError, match="row indices"):
        plots.plot_image_rows([x], tmp_path / "g.png", row_labels=["a"], unknown={3: x.bool()})
    assert list(tmp_path.iterdir()) == []


def test_a_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    # a None entry in sys.modules makes `import matplotlib...` raise ImportError, as when it is not installed
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"'plots' extra of scoresde: pip install -e \"\.\[plots\]\""):
        plots.plot_error_vs_nfe(fake_results(), tmp_path / "err.png")
    with pytest.raises(ImportError, match="plots"):
        plots.plot_image_rows([torch.zeros(1, 1, 8, 8)], tmp_path / "g.png", row_labels=["a"])
    assert list(tmp_path.iterdir()) == []


def test_importing_scoresde_and_its_plots_module_loads_no_matplotlib():
    code = "import sys, scoresde, scoresde.plots; print(any(m.startswith('matplotlib') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_solvers_benchmark_plot_dir(tmp_path, capsys):
    module = load_benchmark("solvers")
    module.main(["--schedules", "vp", "--solvers", "ddim", "--grids", "uniform_lambda", "--nfe", "4", "8",
                 "--n", "2", "--no-fit", "--plot-dir", str(tmp_path)])
    assert "wrote" in capsys.readouterr().out
    png_size(only_file(tmp_path))
    assert only_file(tmp_path).name == "solvers_vp.png"
    with pytest.raises(SystemExit):  # checked before any work
        module.main(["--schedules", "vp", "--plot-dir", str(tmp_path / "missing")])
    assert "no folder" in capsys.readouterr().err


def test_guided_benchmark_plot_rows(tmp_path):
    module = load_benchmark("guided_digits")
    gen = torch.Generator().manual_seed(0)
    rows = [{"kind": "cfg", "scale": w, "solver": "dpm_solver++", "nfe": 20,
             "samples": torch.rand(10, 1, 8, 8, generator=gen) * 2 - 1} for w in (0.0, 1.0, 4.0)]
    module.plot_rows(rows, str(tmp_path))
    out = only_file(tmp_path)
    assert out.name == "guided_cfg_dpm_solverpp.png"
    w, h = png_size(out)
    assert w > h  # 10 columns, 3 rows


@pytest.mark.slow  # about 15 s of CPU: two tiny trainings and bits/dim evaluations, twice
def test_training_curve_benchmark(tmp_path):
    """benchmarks/training_curve.py on a tiny U-Net: stops, bits/dim per stop (kept on a rerun), the figure."""
    module = load_benchmark("training_curve")
    argv = ["--steps", "2", "--every", "1", "--n", "2", "--ch", "8", "--res-blocks", "1", "--batch-size", "8",
            "--out", str(tmp_path / "run")]
    plot_dir = tmp_path / "plots"
    plot_dir.mkdir()
    points = module.main(argv + ["--plot-dir", str(plot_dir)])
    assert [p[0] for p in points] == [1, 2] and all(math.isfinite(b) and b > 0 for _, b, _ in points)
    assert json.loads((tmp_path / "run" / "bpd.json").read_text()) == {str(s): [b, e] for s, b, e in points}
    png_size(only_file(plot_dir))
    assert module.main(argv) == points  # a rerun trains nothing and keeps the stored figures
    with pytest.raises(SystemExit):
        module.main(argv[:2] + ["--every", "3"])  # --every must divide --steps
