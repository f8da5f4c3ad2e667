"""Shipped default models, loaded by name of SDE."""

from __future__ import annotations


def default_model(sde: str, *, device=None):
    """The shipped default model for `sde`; none ship yet, so this says what to do instead."""
    raise ValueError(
        f"no shipped default model for sde {sde!r} yet; pass model=... "
        "(e.g. scoresde.ScoreModel(net, scoresde.VPSDE()) or scoresde.AnalyticModel(data, sde))"
    )
