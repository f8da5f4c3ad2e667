"""Errors a user sees (issue 17): bad flag values print one line naming the value and the valid
choices, and exit with status 2, before any work is done; no traceback."""

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde import generate
from scoresde.cli import main
from scoresde.devices import available_devices, check_device

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
SAMPLE = ["sample", "--n", "1", "--steps", "1", "--quiet"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def assert_usage_error(argv, match, capsys):
    """main(argv) exits 2 with one line containing `match`, whether argparse or a command refuses it."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's refusals
        code = e.code
    assert code == 2
    assert match in one_error_line(capsys)


# --- 1. devices ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "argv, match",
    [
        ([*SAMPLE, "--device", "bogus"], "device 'bogus' is not a torch device; choose one of cpu"),
        ([*SAMPLE, "--device", "meta"], "device 'meta' holds no data and cannot be used for sampling"),
        (["bpd", "--n", "1", "--device", "bogus"], "device 'bogus' is not a torch device; choose one of cpu"),
        (["bpd", "--n", "1", "--device", "meta"], "cannot be used for bits/dim"),
        pytest.param([*SAMPLE, "--device", "cuda"], "device 'cuda': CUDA is not available on this machine; "
                     "choose one of cpu", marks=NO_CUDA),
        pytest.param([*SAMPLE, "--device", "cuda:1"], "CUDA is not available", marks=NO_CUDA),
    ],
)
def test_bad_device_is_one_line_and_exit_2(argv, match, tmp_path, capsys):
    assert_usage_error([*argv, "--out", str(tmp_path / "s.png")] if argv[0] == "sample" else argv, match, capsys)
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("device, match", [("meta", "cannot be used for training"),
                                           pytest.param("cuda", "CUDA is not available", marks=NO_CUDA)])
def test_train_refuses_a_bad_device_before_any_work(device, match, tmp_path, capsys):
    run = tmp_path / "run"
    assert_usage_error(["train", "--steps", "1", "--device", device, "--out-dir", str(run), "--no-progress"],
                       match, capsys)
    assert not run.exists()


def test_check_device():
    assert check_device("cpu") == torch.device("cpu")
    assert available_devices()[0] == "cpu"
    with pytest.raises(ValueError, match=r"device 'cpu ' is not a torch device; choose one of cpu"):
        check_device("cpu ")
    with pytest.raises(ValueError, match="cannot be used for likelihoods"):
        check_device("meta", purpose="likelihoods")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match="CUDA"):
        check_device(f"cuda:{n}")


# --- 2. class labels ----------------------------------------------------------------------------

@pytest.mark.parametrize("labels, bad", [("99", "99"), ("0,11,3", "11")])
def test_label_out_of_range_names_the_valid_range(labels, bad, tmp_path, capsys):
    # the shipped class-conditional model has 10 classes, null label 10
    assert_usage_error([*SAMPLE, "--y", labels, "--out", str(tmp_path / "s.png")],
                       f"--y {bad}: labels must lie in 0..9 (the model's 10 classes), or be 10 for no class", capsys)
    assert not (tmp_path / "s.png").exists()


# --- 3. output folders that are files -----------------------------------------------------------

def test_train_out_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("not a folder")
    assert_usage_error(["train", "--steps", "1", "--device", "cpu", "--out-dir", str(f), "--no-progress"],
                       f"--out-dir {str(f)!r} is a file, not a folder", capsys)
    assert f.read_text() == "not a folder"


def test_generate_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("not a folder")
    assert generate.main(["--total", "1", "--steps", "1", "--out", str(f), "--quiet"]) == 2
    assert f"--out {str(f)!r} is a file, not a folder" in one_error_line(capsys)


@pytest.mark.parametrize("flag", ["--out", "--save"])
def test_sample_output_that_is_a_folder(flag, tmp_path, capsys):
    argv = [*SAMPLE, "--out", str(tmp_path / "s.png"), flag, str(tmp_path)]
    assert_usage_error(argv, f"{flag} {str(tmp_path)!r} is a folder; give a file name", capsys)


# --- 4. bpd on a folder of images ---------------------------------------------------------------

def test_bpd_on_an_image_folder_uses_the_models_size(tmp_path, capsys):
    gen = np.random.default_rng(0)
    for i in range(2):  # RGB 12x12 files; the shipped model is 1x8x8: resized and converted
        Image.fromarray(gen.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    assert main(["bpd", "--data", "folder", "--data-root", str(tmp_path), "--method", "dpm_solver", "--steps", "2"]) == 0
    assert "(standard error over 2 images)" in capsys.readouterr().out


def test_bpd_image_size_is_for_folders_only(capsys):
    assert_usage_error(["bpd", "--image-size", "8"], "--image-size is for --data folder or patches only", capsys)


# --- 5. integer ranges --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "argv, match",
    [
        ([*SAMPLE, "--steps", str(10**30)], "argument --steps: expected an integer <= 1000000, got 1"),
        ([*SAMPLE, "--seed", str(10**30)], "argument --seed: expected an integer <= 9223372036854775807"),
        ([*SAMPLE, "--seed", "1.5"], "argument --seed: expected an integer in 0..9223372036854775807, got '1.5'"),
        ([*SAMPLE, "--seed", "-1"], "argument --seed: expected an integer >= 0, got -1 (valid range 0..9223372036854775807)"),
        ([*SAMPLE, "--n", str(10**30)], "argument --n: expected an integer <= 2147483647"),
        (["bpd", "--seed", str(2**63)], "argument --seed: expected an integer <= 9223372036854775807"),
        (["bpd", "--steps", str(10**30)], "argument --steps: expected an integer <= 1000000"),
    ],
)
def test_out_of_range_integers_name_the_argument_and_range(argv, match, capsys):
    assert_usage_error(argv, match, capsys)


def test_generate_steps_out_of_range(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        generate.main(["--total", "1", "--steps", str(10**30), "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "argument --steps: expected an integer <= 1000000" in one_error_line(capsys)


def test_argparse_errors_are_one_line(capsys):
    assert_usage_error(["sample", "--solver"], "argument --solver: expected one argument", capsys)


# --- 6. user errors met while running -----------------------------------------------------------

def test_save_suffix_is_checked_before_sampling(tmp_path, capsys):
    argv = [*SAMPLE, "--out", str(tmp_path / "s.png"), "--save", str(tmp_path / "s.txt")]
    assert_usage_error(argv, "--save", capsys)
    assert not (tmp_path / "s.png").exists()


def test_unwritable_output_is_one_line(tmp_path, capsys):
    # a file where a folder is expected: NotADirectoryError, an OSError other than FileNotFoundError
    (tmp_path / "f").write_text("")
    assert_usage_error([*SAMPLE, "--out", str(tmp_path / "f" / "s.png")], "Not a directory", capsys)


@pytest.mark.parametrize(
    "flag, value, match",
    [
        ("--seed", str(10**30), "argument --seed: expected an integer <= 9223372036854775807"),
        ("--seed", "-1", "argument --seed: expected an integer >= 0, got -1"),
        ("--batch-size", str(10**30), "argument --batch-size: expected an integer <= 2147483647"),
        ("--image-size", str(10**30), "argument --image-size: expected an integer <= 2147483647"),
    ],
)
def test_train_integer_flags_name_the_range(flag, value, match, tmp_path, capsys):
    run = tmp_path / "run"
    assert_usage_error(["train", "--steps", "1", "--device", "cpu", "--out-dir", str(run), "--no-progress",
                        flag, value], match, capsys)
    assert not run.exists()


@pytest.mark.parametrize("flag", ["--shape", "--batch"])
def test_generate_sizes_name_the_range(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        generate.main(["--total", "1", "--steps", "1", "--out", str(tmp_path / "g"), flag, str(10**30), "--quiet"])
    assert e.value.code == 2
    assert f"argument {flag}: expected an integer <= 2147483647" in one_error_line(capsys)
    assert not (tmp_path / "g").exists()


def test_null_label_is_accepted(tmp_path, capsys):
    assert main([*SAMPLE, "--solver", "ddim", "--y", "10", "--out", str(tmp_path / "s.png")]) == 0
    assert '"y": [10]' in capsys.readouterr().out


def test_labels_for_an_unconditional_model(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--net-options", "{'ch': 8, 'num_res_blocks': 1, 'ch_mult': (1, 2), 'attn_resolutions': (4,)}",
                 "--batch-size", "4", "--steps", "1", "--warmup-steps", "1", "--out-dir", str(run), "--device", "cpu",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert_usage_error([*SAMPLE, "--model", str(run / "checkpoint.safetensors"), "--y", "3",
                        "--out", str(tmp_path / "s.png")], "--y 3: this model is not class-conditional", capsys)
