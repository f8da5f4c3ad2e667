"""Helpers the training tests share (tests/scoresde/test_train.py, test_hybrid.py, test_speed.py, test_flow.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scoresde.train import train
from scoresde.training import step as train_step  # where the loop looks up the loss functions


def logged_losses(out_dir) -> list[float]:
    """The loss of every logged step of the run in out_dir (its metrics.jsonl)."""
    return [json.loads(line)["loss"] for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def train_killed_in_step_5(monkeypatch, config, loss: str) -> None:
    """Run `train(config)` with the loss function `scoresde.training.step.<loss>` raising KeyboardInterrupt in its
    5th call, so that the run dies in its 5th step (after the step-3 checkpoint of ckpt_every=3 and the log of
    step 4); then put the real loss function back."""
    real = getattr(train_step, loss)
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_step, loss, dying)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(train_step, loss, real)


def train_killed_in_step(monkeypatch, config, loss: str, step: int) -> None:
    """Run `train(config)` with `scoresde.training.step.<loss>` raising KeyboardInterrupt in its `step`-th call
    (counted from this run's first step), so that the run dies inside that step; then put the real loss back."""
    real = getattr(train_step, loss)
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_step, loss, dying)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(train_step, loss, real)


def metrics_records(out_dir) -> list[dict]:
    """Every line of the run's metrics.jsonl as a dict."""
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
