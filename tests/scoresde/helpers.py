"""Helpers the training tests share (tests/scoresde/test_train.py, test_hybrid.py, test_speed.py, test_flow.py,
test_consistency_trainer.py, test_pd_trainer.py, test_reflow_trainer.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from scoresde.train import load_checkpoint, train
from scoresde.training import step as train_step  # where the loop looks up the loss functions


def logged_losses(out_dir) -> list[float]:
    """The loss of every logged step of the run in out_dir (its metrics.jsonl)."""
    return [json.loads(line)["loss"] for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def train_killed_in_step_5(monkeypatch, config, loss: str, module=train_step) -> None:
    """Run `train(config)` with the loss function `scoresde.training.step.<loss>` raising KeyboardInterrupt in its
    5th call, so that the run dies in its 5th step (after the step-3 checkpoint of ckpt_every=3 and the log of
    step 4); then put the real loss function back."""
    train_killed_in_step(monkeypatch, config, loss, 5, module)


def resumed_equals_uninterrupted(monkeypatch, base, tmp_path, loss: str = "dsm_loss", module=train_step, *,
                                 between=None):
    """Train `base` (steps=6, ckpt_every=3) uninterrupted in tmp_path/ref and, in tmp_path/run, killed in step 5
    and resumed; assert the resumed run logs the same losses bit for bit and ends with equal net and EMA
    weights. `module`: where the loop looks `loss` up; `between`: called with the run's folder after the kill, before
    the resumption. Returns (resumed result, reference result, the run's folder)."""
    ref = train(replace(base, out_dir=str(tmp_path / "ref")))
    out = tmp_path / "run"  # dies in its 5th step, after the checkpoint of step 3 and the log of step 4
    train_killed_in_step_5(monkeypatch, replace(base, out_dir=str(out)), loss, module)
    assert load_checkpoint(out / "checkpoint.safetensors").step == 3 and len(logged_losses(out)) == 4
    if between is not None:
        between(out)
    res = train(replace(base, out_dir=str(out)))
    assert logged_losses(out) == logged_losses(tmp_path / "ref")  # bit for bit, including the re-run steps 4 and 5
    for a, b in ((res.net, ref.net), (res.ema, ref.ema)):
        for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), k
    return res, ref, out


def trained_and_exported(config, out) -> str:
    """Train `config` into the folder out/run and export its checkpoint as out/model.safetensors; returns that file's
    path (the teachers of the distillation tests)."""
    train(replace(config, out_dir=str(Path(out) / "run")))
    from scoresde.pretrained import export_model

    return str(export_model(Path(out) / "run" / "checkpoint.safetensors", Path(out) / "model.safetensors"))


def sampled_with_ddim_by_default(capsys, model_file, folder, nfe: int) -> None:
    """`scoresde sample --model model_file` (a distilled student's file) takes DDIM on uniform_t with `nfe` evaluations
    by default, and --steps 4 still overrides (4 evaluations); the grid is written to folder/x.png. So does
    `scoresde.sample(model)` in Python: its default is bit for bit DDIM with those steps and grid."""
    import scoresde
    from scoresde.cli import main
    from scoresde.train import load_model

    model = load_model(model_file)
    own = scoresde.sample(model, n=3, seed=0)
    assert (own.nfe, own.settings["solver"], own.settings["grid"]) == (nfe, "ddim", "uniform_t"), own.settings
    assert torch.equal(own.x, scoresde.sample(model, n=3, seed=0, solver="ddim", steps=nfe, grid="uniform_t").x)
    assert scoresde.sample(model, n=3, seed=0, steps=4).nfe == 4

    png = str(Path(folder) / "x.png")
    assert main(["sample", "--model", str(model_file), "--n", "2", "--out", png, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"NFE {nfe}," in printed and '"solver": "ddim"' in printed and '"grid": "uniform_t"' in printed, printed
    assert main(["sample", "--model", str(model_file), "--n", "2", "--steps", "4", "--out", png, "--quiet"]) == 0
    assert "NFE 4," in capsys.readouterr().out


def train_killed_in_step(monkeypatch, config, loss: str, step: int, module=train_step) -> None:
    """Run `train(config)` with `module.<loss>` (default `scoresde.training.step`) raising KeyboardInterrupt in its
    `step`-th call (counted from this run's first step), so that the run dies inside that step; then put the
    real loss back."""
    real = getattr(module, loss)
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, loss, dying)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(module, loss, real)


def metrics_records(out_dir) -> list[dict]:
    """Every line of the run's metrics.jsonl as a dict."""
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
