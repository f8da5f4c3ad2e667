"""Device strings from users (CLI flags, configs): parse and check them before any work is done.

`check_device("cuda")` on a machine without CUDA raises a ValueError naming the device and the
devices this machine has, instead of torch's assertion deep inside the first `.to(device)`.
"""

from __future__ import annotations

import torch

__all__ = ["available_devices", "check_device"]


def available_devices() -> list[str]:
    """The device strings usable here: "cpu", then "cuda:0".. and "mps" when present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def check_device(device: str | torch.device, *, purpose: str = "sampling") -> torch.device:
    """The torch.device of `device` when it is a device type torch knows, present on this machine and
    able to hold data; else a ValueError naming the device and the valid choices.

    The meta device (shapes without data) is refused: nothing can be computed on it. `purpose`
    names the work in that message ("sampling", "training", ...).
    """
    choices = ", ".join(available_devices())
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {str(device)!r} is not a torch device; choose one of {choices}") from None
    if dev.type == "meta":
        raise ValueError(f"device {str(device)!r} holds no data and cannot be used for {purpose}; choose one of {choices}")
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine; choose one of {choices}")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(device)!r}: this machine has {count} CUDA device(s); choose one of {choices}")
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise ValueError(f"device {str(device)!r} is not available on this machine; choose one of {choices}")
