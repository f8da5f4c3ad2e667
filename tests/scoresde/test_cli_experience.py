"""The first ten minutes with the command line (issue 23): pipes, output paths and formats, train --help,
what `sample` writes, custom solvers, progress, `doctor`, resuming a finished run, instant --help."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde import cli_args
from scoresde.cli import main
from scoresde.sampling_files import quantize_images

FAST = ["sample", "--solver", "ddim", "--steps", "2", "--quiet"]
TINY_NET = "{'ch': 8, 'num_res_blocks': 1, 'ch_mult': (1, 2), 'attn_resolutions': (4,)}"


def _one_line_error(capsys, match: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and "Traceback" not in err[0], err


# 1. a reader that leaves early -------------------------------------------------------------------

def test_a_closed_pipe_ends_quietly_with_status_1():
    proc = subprocess.Popen([sys.executable, "-m", "scoresde", "solvers"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head` does once it has its lines: every write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert err == ""


# 2. output paths and formats, checked before any work --------------------------------------------

@pytest.mark.parametrize("suffix, fmt", [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP"), (".png", "PNG")])
def test_out_is_written_in_the_format_its_suffix_names(tmp_path, suffix, fmt):
    out = tmp_path / f"grid{suffix}"
    assert main([*FAST, "--n", "4", "--out", str(out)]) == 0
    assert Image.open(out).format == fmt


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--out", "{tmp}/grid.gif"], "--out '{tmp}/grid.gif': use a .png, .jpg, .jpeg or .webp file name"),
        (["--out", "{tmp}/nodir/x.png"], "its folder '{tmp}/nodir' does not exist"),
        (["--save", "{tmp}/nodir/x.npz"], "its folder '{tmp}/nodir' does not exist"),
        (["--save", "{tmp}/x.txt"], "use a .npy, .npz or .pt file name"),
        (["--out", "{tmp}/file.png/x.png"], "'{tmp}/file.png' is a file, not a folder"),
        (["--image-dir", "{tmp}/file.png"], "--image-dir '{tmp}/file.png' is a file, not a folder"),
    ],
)
def test_bad_output_paths_are_refused_before_any_work(tmp_path, capsys, monkeypatch, flags, match):
    (tmp_path / "file.png").write_bytes(b"")
    import scoresde.cli as cli

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the paths were checked")

    monkeypatch.setattr(cli, "_load_model", no_work)
    assert main([*FAST, *(f.format(tmp=tmp_path) for f in flags)]) == 2
    _one_line_error(capsys, match.format(tmp=tmp_path))


# 3. train --help describes every flag --------------------------------------------------------------

def test_train_help_describes_every_flag_from_the_docstring(capsys):
    from scoresde.training.config import TrainConfig

    described = cli_args.field_help(TrainConfig)
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in described]
    assert missing == [], f"TrainConfig's docstring does not name {missing}"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert described["grad_clip"] == ("Optimizer", "grad_clip (0 disables)")
    for title in cli_args.docstring_sections(TrainConfig):
        assert f"\n{title}:\n" in text  # one group per docstring section, its text above its flags
    assert "(0 disables)" in text and "see Optimizer above (default: 0.0002)" in " ".join(text.split())
    parser = __import__("scoresde.cli", fromlist=["build_parser"]).build_parser("train")
    train = parser._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and not action.help.startswith("(default:"), action.option_strings


# 4. what sample writes -------------------------------------------------------------------------------

def test_npz_holds_images_labels_settings_and_image_dir_one_png_each(tmp_path, capsys):
    raw, pngs = tmp_path / "s.npz", tmp_path / "pngs"
    assert main([*FAST, "--n", "5", "--batch-size", "2", "--y", "3,5", "--save", str(raw), "--image-dir", str(pngs),
                 "--out", str(tmp_path / "g.png")]) == 0
    printed = capsys.readouterr().out
    with np.load(raw) as z:
        assert sorted(z.files) == ["images", "labels", "settings", "x"]
        x, images, labels, settings = z["x"], z["images"], z["labels"], json.loads(str(z["settings"]))
    assert x.shape == (5, 1, 8, 8) and x.dtype == np.float32
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    # the inverse of data.to_model_input for 256 levels: level k <-> 2 k / 255 - 1
    expected = np.rint((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, [3, 5, 3, 5, 3])
    assert settings["solver"] == "ddim" and settings["nfe_per_chunk"] == [2, 2, 2]
    assert settings["guidance"]["y"] == [3, 5, 3, 5, 3] and '"batch_size": 2' in printed
    assert sorted(p.name for p in pngs.iterdir()) == [f"{i:06d}.png" for i in range(5)]
    for i in (0, 4):
        np.testing.assert_array_equal(np.asarray(Image.open(pngs / f"{i:06d}.png")), images[i, ..., 0])


def test_quantize_images_inverts_to_model_input():
    from scoresde import data

    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = data.to_model_input(levels, 256)
    np.testing.assert_array_equal(quantize_images(x)[0, ..., 0], levels[0, 0].numpy())
    assert quantize_images(torch.tensor([[[[-7.0, 7.0]]]])).ravel().tolist() == [0, 255]


def test_quantize_images_refuses_nan():
    # NaN has no level (numpy's cast gave an arbitrary byte): refused, naming the count
    with pytest.raises(ValueError, match="1 NaN"):
        quantize_images(torch.tensor([[[[0.0, float("nan")]]]]))


def test_grid_has_one_row_per_label(tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main([*FAST, "--n", "7", "--y", "0,1,2", "--out", str(out), "--scale", "1"]) == 0
    assert "one row per label" in capsys.readouterr().out
    # 3 rows (labels) of 3 columns (samples 0, 3, 6 of label 0; 1, 4 of label 1, then a blank): 8x8 + 1 px border
    assert Image.open(out).size == (3 * 9 + 1, 3 * 9 + 1)


# 5. a custom solver by module:Class ------------------------------------------------------------------

MODULE = textwrap.dedent("""
    import solvers

    class HalfDDIM(type(solvers.get("ddim"))):
        name = "half_ddim"

    class NotASolver:
        pass
""")


def test_custom_solver_module_class(tmp_path, monkeypatch, capsys):
    (tmp_path / "exp23_solvers.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "exp23_solvers", raising=False)
    assert main([*FAST, "--n", "2", "--solver", "exp23_solvers:HalfDDIM", "--option", "eta=0.0", "--out", "g.png"]) == 0
    assert '"solver": "half_ddim"' in capsys.readouterr().out
    for spec, match in [
        ("exp23_solvers:Missing", "module 'exp23_solvers' has no 'Missing'"),
        ("exp23_solvers:NotASolver", "NotASolver is not a subclass of solvers.Solver"),
        ("no_such_module_23:X", "no module 'no_such_module_23'"),
        ("exp23_solvers:", "expected a solver name or module:Class"),
    ]:
        assert main([*FAST, "--solver", spec]) == 2
        _one_line_error(capsys, match)
    assert main([*FAST, "--solver", "exp23_solvers:HalfDDIM", "--option", "bogus=1"]) == 2
    _one_line_error(capsys, "bogus")


def test_solver_help_warns_that_module_class_runs_code(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "running its code as `python -m` would" in " ".join(capsys.readouterr().out.split())


# 6. progress ---------------------------------------------------------------------------------------------

def test_log_likelihood_progress_bar(capsys):
    import scoresde

    model = scoresde.AnalyticModel(scoresde.Gaussian(torch.zeros(2, dtype=torch.float64), 0.5), scoresde.VPSDE())
    x = torch.zeros(3, 2, dtype=torch.float64)
    quiet = scoresde.log_likelihood(model, x, method="dpm_solver", steps=3, divergence="analytic")
    assert capsys.readouterr().err == ""
    loud = scoresde.bits_per_dim(model, x, levels=None, repeats=2, method="dpm_solver", steps=3,
                                 divergence="analytic", progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "image" in err
    torch.testing.assert_close(loud.logp, quiet.logp)
    with pytest.raises(ValueError, match="progress"):
        scoresde.log_likelihood(model, x, progress="yes")


def test_bpd_shows_a_bar_unless_quiet(capsys):
    run = ["bpd", "--n", "2", "--batch-size", "1", "--method", "dpm_solver", "--steps", "2"]
    assert main(run) == 0
    assert "2/2" in capsys.readouterr().err
    assert main([*run, "--quiet"]) == 0
    assert "2/2" not in capsys.readouterr().err


# 7. doctor --------------------------------------------------------------------------------------------------

def test_doctor_prints_versions_threads_devices_and_a_speed_probe(capsys):
    assert main(["doctor", "--probe-seconds", "0.3"]) == 0
    out = capsys.readouterr().out
    for text in ("python: ", "torch: ", "numpy: ", "torchdiffeq: ", "torchsde: ", "torch threads: ", "interop",
                 "OMP_NUM_THREADS", "CPUs: ", "load average", "CUDA: ", "MPS: ",
                 "network evaluations/s of the shipped digits model at batch 64",
                 "projected: `scoresde sample --sde vp --solver pc --n 64` (2000 evaluations) takes about"):
        assert text in out, text
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--probe-seconds", "-1"])
    assert exit_.value.code == 2 and "expected seconds in 0..600" in capsys.readouterr().err


# 8. resuming a run that is finished ---------------------------------------------------------------------

def test_resume_of_a_finished_run_says_so(tmp_path, capsys):
    args = ["train", "--net-options", TINY_NET, "--batch-size", "4", "--steps", "1", "--warmup-steps", "1",
            "--out-dir", str(tmp_path / "run"), "--device", "cpu", "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "the run had already reached its last step (--steps 1), nothing to train" in captured.out
    assert "it/s" not in captured.err and "step/s" not in captured.err  # --quiet: no bar


# 9. --help stays instant ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["sample", "--help"], ["bpd", "--help"]])
def test_help_imports_no_torch(argv):
    code = f"""
import contextlib, io, sys
from scoresde.cli import main
with contextlib.redirect_stdout(io.StringIO()) as text, contextlib.suppress(SystemExit):
    main({argv!r})
print("torch" in sys.modules, len(text.getvalue()) > 200)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_names_shown_without_torch_equal_the_tables():
    from solvers.grids import GRIDS

    from scoresde.sde_names import SDE_NAMES

    assert cli_args.SDE_CHOICES == SDE_NAMES
    assert cli_args.GRID_CHOICES == tuple(sorted(GRIDS))


@pytest.mark.parametrize("flag, value", [("--sde", "vq"), ("--grid", "cubic")])
def test_unknown_sde_and_grid_are_argparse_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", flag, value])
    assert exit_.value.code == 2
    _one_line_error(capsys, f"argument {flag}: invalid choice: {value!r} (choose from")


@pytest.mark.parametrize("value", ["-" * 100_000 + "1", "-" * 3_000 + "1", "-" * 9_999 + "1"],
                         ids=["over-long", "recursion-error", "memory-error"])
def test_an_option_value_that_blows_up_the_literal_parser_is_one_line(value, capsys):
    """`--option order=` + 100,000 minus signs crashed with a MemoryError traceback (found by review)."""
    from .test_reliability_cli import assert_usage_error

    assert_usage_error(["sample", "--option", f"order={value}", "--n", "1"], "--option value is", capsys)
