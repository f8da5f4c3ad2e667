"""`scoresde doctor`: what this machine gives a run, to see why it is slow.

Versions of the packages a run uses, torch's threads, the CPUs and their load, the accelerators,
and a short speed probe: network evaluations per second of the shipped digits model at batch 64,
with the time it projects for the README's quick start (`QUICKSTART_COMMAND`: predictor-corrector
with `QUICKSTART_STEPS` steps, 2 evaluations each) and for its reference run (`REFERENCE_COMMAND`:
the sampler's default 1000 steps).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata

__all__ = ["PACKAGES", "PROBE_BATCH", "QUICKSTART_COMMAND", "QUICKSTART_STEPS", "REFERENCE_COMMAND", "collect",
           "main_report", "pc_evaluations", "speed_probe"]

# distribution names shown by `scoresde doctor` (diffusers only when installed)
PACKAGES = ("torch", "numpy", "scoresde", "torchdiffeq", "torchsde", "diffusers")
PROBE_BATCH = 64
# the README's quick start (PC steps chosen by benchmarks/quickstart.py) and its reference run (PC's default steps)
QUICKSTART_STEPS = 100
QUICKSTART_COMMAND = f"scoresde sample --sde vp --solver pc --steps {QUICKSTART_STEPS} --n 64"
REFERENCE_COMMAND = "scoresde sample --sde vp --solver pc --n 64"


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


def pc_evaluations(steps: int | None = None) -> int:
    """Network evaluations of one `pc` run of `steps` steps (its default steps when None)."""
    import solvers

    pc = solvers.get("pc")
    steps = pc.default_steps if steps is None else steps
    return steps * pc.nfe_per_step + int(pc.denoise_final)


def speed_probe(seconds: float, *, device: str = "cpu", batch: int = PROBE_BATCH, threads: int | None = None) -> dict:
    """Network evaluations per second of the shipped VP digits model on `batch` samples, timed for
    about `seconds` after one warm-up call, with torch's intra-op `threads` (its current setting when
    None; restored afterwards); and the README's quick start and reference run projected from it
    (evaluations / rate: the network's time alone, without starting Python and loading the model)."""
    import torch

    from .training.checkpoints import default_model

    model = default_model("vp", device=device)
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, *model.image_shape, generator=gen, device=device)
    t = torch.full((batch,), 0.5, device=device)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
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
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    rate = calls / elapsed
    quick, reference = pc_evaluations(QUICKSTART_STEPS), pc_evaluations()
    return {"batch": batch, "threads": used, "evaluations": calls, "seconds": elapsed, "nfe_per_second": rate,
            "quickstart_nfe": quick, "quickstart_seconds": quick / rate,
            "reference_nfe": reference, "reference_seconds": reference / rate}


def collect(*, probe_seconds: float = 5.0, device: str = "cpu") -> dict:
    """Everything `scoresde doctor` prints, as a dict (probe_seconds 0: no speed probe).

    On the CPU with more than one torch thread the probe time is split between torch's threads and
    one thread ("probe_one_thread"): on a busy machine more threads can be much slower (oversubscription).
    """
    import torch

    probe = probe_one = None
    if probe_seconds > 0:
        two = device == "cpu" and torch.get_num_threads() > 1
        probe = speed_probe(probe_seconds / 2 if two else probe_seconds, device=device)
        if two:
            probe_one = speed_probe(probe_seconds / 2, device=device, threads=1)
    return {
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in PACKAGES},
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        **_cpus(),
        **_devices(),
        "probe": probe,
        "probe_one_thread": probe_one,
    }


def _notes(info: dict) -> list[str]:
    """Hints at a slow machine: busy CPUs, more threads than CPUs."""
    notes = []
    usable, load = info["usable_cpus"], info["load_average"]
    if load is not None and usable and load[0] > usable:
        notes.append(f"the 1-minute load average {load[0]:.1f} exceeds the {usable} usable CPUs: other processes "
                     "compete for them, so runs are slower than the probe would be on an idle machine")
    probe, one = info["probe"], info.get("probe_one_thread")
    if probe is not None and one is not None and one["nfe_per_second"] > probe["nfe_per_second"]:
        notes.append(f"one thread ran {one['nfe_per_second'] / probe['nfe_per_second']:.1f}x as fast as "
                     f"{probe['threads']} here (threads waiting on busy CPUs): set OMP_NUM_THREADS=1 for runs on this machine now")
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
    probe, one = info["probe"], info.get("probe_one_thread")
    if probe is not None:
        for p in (probe, one) if one is not None else (probe,):
            write(f"speed: {p['nfe_per_second']:.1f} network evaluations/s of the shipped digits model at batch "
                  f"{p['batch']} with {p['threads']} thread{'s' * (p['threads'] > 1)} ({p['evaluations']} in {p['seconds']:.1f} s)")
        if one is not None and one["nfe_per_second"] > probe["nfe_per_second"]:
            probe = one
        how = f"with {probe['threads']} thread{'s' * (probe['threads'] > 1)}"
        write(f"projected: `{QUICKSTART_COMMAND}` ({probe['quickstart_nfe']} evaluations) takes about "
              f"{probe['quickstart_seconds']:.0f} s here {how} (the quick start; network time only, plus a few "
              "seconds to start Python and load the model)")
        write(f"projected: `{REFERENCE_COMMAND}` ({probe['reference_nfe']} evaluations) takes about "
              f"{probe['reference_seconds']:.0f} s here {how} (the reference run)")
    for note in _notes(info):
        write(f"note: {note}")
