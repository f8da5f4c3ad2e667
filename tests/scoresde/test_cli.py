"""The command line: sample, train, bpd, solvers; user errors exit 2 with one line."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from scoresde.cli import main


def test_sample_writes_grid_and_tensor(tmp_path, capsys):
    out, raw = tmp_path / "s.png", tmp_path / "s.npz"
    code = main(["sample", "--solver", "dpm_solver++", "--steps", "4", "--n", "4", "--out", str(out),
                 "--save", str(raw), "--quiet", "--option", "order=3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "NFE 4" in printed and '"solver": "dpm_solver++"' in printed and '"order": 3' in printed
    assert Image.open(out).size[0] > 8
    assert np.load(raw)["x"].shape == (4, 1, 8, 8)


def test_sample_with_labels_uses_the_conditional_model(tmp_path, capsys):
    raw = tmp_path / "s.pt"
    code = main(["sample", "--y", "0,7", "--guidance-scale", "2", "--solver", "ddim", "--steps", "3", "--n", "3",
                 "--out", str(tmp_path / "s.png"), "--save", str(raw), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert '"y": [0, 7, 0]' in printed and '"scale": 2.0' in printed and '"null_label": 10' in printed


@pytest.mark.parametrize(
    "argv, match",
    [
        (["sample", "--solver", "nope"], "unknown solver 'nope'; choose one of"),
        (["sample", "--solver", "pc", "--option", "snr=-1", "--steps", "2"], "snr"),
        (["sample", "--model", "missing.safetensors"], "model file 'missing.safetensors' does not exist"),
        (["sample", "--sde", "ddpm"], "no shipped default model for sde 'ddpm'"),
        (["bpd", "--data", "cifar10"], "needs root"),
        (["sample", "--guidance-scale", "2"], "--guidance-scale needs class labels --y"),
        (["sample", "--sde", "ve", "--y", "3"], "no shipped class-conditional default model for sde 've'"),
        (["train", "--augment", "xflip,blur", "--steps", "1"], "unknown augmentation(s) ['blur']; choose from"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and "Traceback" not in err[0]


def test_argparse_errors_also_exit_2():
    proc = subprocess.run([sys.executable, "-m", "scoresde", "sample", "--steps", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "expected an integer >= 1, got 0" in proc.stderr


def test_train_then_sample_and_bpd(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--net-options", "{'ch': 8, 'num_res_blocks': 1, 'ch_mult': (1, 2), 'attn_resolutions': (4,)}",
            "--batch-size", "16", "--steps", "2", "--warmup-steps", "1", "--out-dir", str(run), "--device", "cpu",
            "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2  # refuses to overwrite without --resume
    assert "pass --resume" in capsys.readouterr().err
    more = [a if a != "2" else "3" for a in args]  # --steps 3
    assert main([*more, "--resume"]) == 0
    ckpt = str(run / "checkpoint.safetensors")
    assert main(["sample", "--model", ckpt, "--solver", "ddim", "--steps", "3", "--n", "2", "--quiet",
                 "--out", str(tmp_path / "g.png")]) == 0
    capsys.readouterr()
    assert main(["bpd", "--model", ckpt, "--n", "4", "--method", "dpm_solver", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "bits/dim" in out and "mean NFE 5.0" in out


def test_train_with_augmentation_names(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--net-options", "{'ch': 8, 'num_res_blocks': 1, 'ch_mult': (1, 2), 'attn_resolutions': (4,)}",
                 "--batch-size", "8", "--steps", "1", "--augment", "translate,xflip", "--augment-p", "0.5",
                 "--out-dir", str(run), "--device", "cpu", "--no-progress"]) == 0
    from scoresde.train import load_checkpoint

    ckpt = load_checkpoint(run / "checkpoint.safetensors")
    assert ckpt.config.augment == ("translate", "xflip") and ckpt.unet_config.augment_dim == 3


def test_solvers_lists_every_solver(capsys):
    import solvers

    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    for name in solvers.available():
        assert name in out
    assert "options:" in out and "order" in out


def test_sample_takes_an_exported_model_file(tmp_path):
    from scoresde.pretrained import ASSETS, DEFAULT_MODELS

    out = tmp_path / "g.png"
    assert main(["sample", "--model", str(ASSETS / DEFAULT_MODELS["ve"]), "--solver", "ddim", "--steps", "2",
                 "--n", "2", "--quiet", "--out", str(out)]) == 0
    assert out.is_file()
