"""The forward SDEs by name: one table for `scoresde.sample(sde=...)`, `TrainConfig.sde`, the CLI's
--sde and the files the project writes (their recorded SDE is rebuilt from it, running no code)."""

from __future__ import annotations

import torch

from .sde import SDE, FlowSDE, SubVPSDE, VESDE, VPSDE
from .sde_discrete import DiscreteVPSDE

__all__ = ["SDE_NAMES", "SDE_TABLE", "make_sde", "sde_from_config"]

# name -> (class, fixed constructor arguments, the schedule parameters a caller may set)
SDE_TABLE = {
    "vp": (VPSDE, {}, ("beta_min", "beta_max")),
    "vp_cosine": (VPSDE, {"schedule": "cosine"}, ()),
    "subvp": (SubVPSDE, {}, ("beta_min", "beta_max")),
    "ve": (VESDE, {}, ("sigma_min", "sigma_max")),
    "ddpm": (DiscreteVPSDE, {}, ()),
    "flow": (FlowSDE, {}, ()),
}
SDE_NAMES = tuple(SDE_TABLE)


def make_sde(sde: str | SDE, **schedule: float) -> SDE:
    """The process named `sde` (one of SDE_NAMES) built with `schedule`, or the instance `sde` itself.

    schedule: the process's schedule parameters (SDE_TABLE: beta_min, beta_max for "vp" and "subvp";
    sigma_min, sigma_max for "ve"); those left out keep the class defaults, others raise.
    """
    if isinstance(sde, SDE):
        if schedule:
            raise ValueError(f"schedule parameters {sorted(schedule)} given with an SDE instance; set them when building it")
        return sde
    if not isinstance(sde, str) or sde not in SDE_TABLE:
        raise ValueError(f"unknown sde {sde!r}; choose one of {sorted(SDE_TABLE)} or pass an SDE instance")
    cls, fixed, params = SDE_TABLE[sde]
    unknown = sorted(set(schedule) - set(params))
    if unknown:
        raise ValueError(f"sde {sde!r} takes the schedule parameters {list(params)}, got {unknown}")
    return cls(**fixed, **schedule)


def sde_from_config(config: dict) -> SDE:
    """The process that `SDE.config()` describes: {"type": class name, **constructor arguments}.

    Only the classes of SDE_TABLE are built, from JSON values (DiscreteVPSDE's alphas_cumprod list
    becomes a float64 tensor): reading a file's recorded SDE runs no code.
    """
    classes = {cls.__name__: cls for cls, _, _ in SDE_TABLE.values()}
    if not isinstance(config, dict) or config.get("type") not in classes:
        got = config.get("type") if isinstance(config, dict) else config
        raise ValueError(f"unknown SDE type {got!r}; choose one of {sorted(classes)}")
    kwargs = {k: v for k, v in config.items() if k != "type"}
    if "alphas_cumprod" in kwargs:
        kwargs["alphas_cumprod"] = torch.tensor(kwargs["alphas_cumprod"], dtype=torch.float64)
    try:
        return classes[config["type"]](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments {sorted(kwargs)} for {config['type']}: {e}") from e
