"""`scoresde doctor`: what this machine gives a run, to see why it is slow.

Versions of the packages a run uses, torch's threads, the CPUs and their load, the accelerators,
and a short speed probe: network evaluations per second of the shipped digits model at batch 64,
with the time it projects for the README's first command (`scoresde sample --sde vp --solver pc
--n 64`: 1000 predictor-corrector steps, 2 evaluations each).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata

__all__ = ["PACKAGES", "PROBE_BATCH", "README_COMMAND", "collect", "main_report", "speed_probe"]

# distribution names shown by `scoresde doctor` (diffusers only when installed)
PACKAGES = ("torch", "numpy", "scoresde", "torchdiffeq", "torchsde", "diffusers")
PROBE_BATCH = 64
README_COMMAND = "scoresde sample --sde vp --solver pc --n 64"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpus() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "usable_cpus": usable, "load_average": load}


def _devices() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    return {
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cuda_build": torch.version.cuda,
        "mps": bool(mps is not None and mps.is_available()),
    }


def speed_probe(seconds: float, *, device: str = "cpu", batch: int = PROBE_BATCH) -> dict:
    """Network evaluations per second of the shipped VP digits model on `batch` samples, timed for
    about `seconds` after one warm-up call; and the README's first command projected from it."""
    import solvers
    import torch

    from .training.checkpoints import default_model

    model = default_model("vp", device=device)
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, *model.image_shape, generator=gen, device=device)
    t = torch.full((batch,), 0.5, device=device)
    with torch.no_grad():
        model.eps(x, t)  # warm-up
        calls, start = 0, time.perf_counter()
        while True:
            model.eps(x, t)
            calls += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
    pc = solvers.get("pc")
    nfe = pc.default_steps * pc.nfe_per_step + int(pc.denoise_final)
    rate = calls / elapsed
    return {"batch": batch, "evaluations": calls, "seconds": elapsed, "nfe_per_second": rate,
            "readme_nfe": nfe, "readme_seconds": nfe / rate}


def collect(*, probe_seconds: float = 5.0, device: str = "cpu") -> dict:
    """Everything `scoresde doctor` prints, as a dict (probe_seconds 0: no speed probe)."""
    import torch

    return {
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in PACKAGES},
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        **_cpus(),
        **_devices(),
        "probe": speed_probe(probe_seconds, device=device) if probe_seconds > 0 else None,
    }


def _notes(info: dict) -> list[str]:
    """Hints at a slow machine: busy CPUs, more threads than CPUs."""
    notes = []
    usable, load = info["usable_cpus"], info["load_average"]
    if load is not None and usable and load[0] > usable:
        notes.append(f"the 1-minute load average {load[0]:.1f} exceeds the {usable} usable CPUs: other processes "
                     "compete for them, so runs are slower than the probe would be on an idle machine")
    if usable and info["torch_threads"] > usable:
        notes.append(f"torch uses {info['torch_threads']} threads on {usable} usable CPUs; "
                     f"set OMP_NUM_THREADS={usable} (or torch.set_num_threads)")
    return notes


def main_report(info: dict, write: Callable[[str], object] = print) -> None:
    """Print `info` (from `collect`) as one "name: value" line each."""
    write(f"python: {info['python']}")
    write(f"platform: {info['platform']}")
    for name, version in info["versions"].items():
        if version is not None or name != "diffusers":
            write(f"{name}: {version or 'not installed'}")
    write(f"torch threads: {info['torch_threads']} (interop {info['torch_interop_threads']}); "
          f"OMP_NUM_THREADS: {info['OMP_NUM_THREADS'] or 'unset'}")
    load = info["load_average"]
    write(f"CPUs: {info['cpu_count']} ({info['usable_cpus']} usable by this process); load average: "
          + ("unknown" if load is None else " ".join(f"{v:.2f}" for v in load)))
    build = "a CPU-only torch build" if info["cuda_build"] is None else f"torch built with CUDA {info['cuda_build']}"
    cuda = ", ".join(info["cuda"]) if info["cuda"] else f"none ({build})"
    write(f"CUDA: {cuda}; MPS: {'available' if info['mps'] else 'no'}")
    probe = info["probe"]
    if probe is not None:
        write(f"speed: {probe['nfe_per_second']:.1f} network evaluations/s of the shipped digits model at batch "
              f"{probe['batch']} ({probe['evaluations']} in {probe['seconds']:.1f} s)")
        write(f"projected: `{README_COMMAND}` ({probe['readme_nfe']} evaluations) takes about "
              f"{probe['readme_seconds']:.0f} s here")
    for note in _notes(info):
        write(f"note: {note}")
