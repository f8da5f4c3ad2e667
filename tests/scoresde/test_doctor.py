"""`scoresde doctor`: the probe's projections of the quick start and the reference run, the thread probe, and
that the README's quick start is the command doctor projects."""

from __future__ import annotations

import os

import pytest
import solvers
import torch

from scoresde import doctor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_pc_evaluations_count_two_per_step():
    pc = solvers.get("pc")
    assert pc.nfe_per_step == 2 and not pc.denoise_final
    assert doctor.pc_evaluations(100) == 200
    assert doctor.pc_evaluations() == 2 * pc.default_steps == 2000


def test_commands_name_the_quick_start_steps_and_the_default():
    assert doctor.QUICKSTART_COMMAND == f"scoresde sample --sde vp --solver pc --steps {doctor.QUICKSTART_STEPS} --n 64"
    assert "--steps" not in doctor.REFERENCE_COMMAND  # the reference is PC's default, 1000 steps


def test_readme_quick_start_is_the_command_doctor_projects():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    first = quick.split("```bash", 1)[1].split("```", 1)[0]
    assert doctor.QUICKSTART_COMMAND in first, first
    assert doctor.REFERENCE_COMMAND in quick  # the reference run stays documented


def test_speed_probe_projects_from_its_rate_and_restores_threads():
    before = torch.get_num_threads()
    p = doctor.speed_probe(0.05, threads=1)
    assert torch.get_num_threads() == before
    assert p["threads"] == 1 and p["evaluations"] >= 1 and p["batch"] == doctor.PROBE_BATCH
    assert p["nfe_per_second"] == pytest.approx(p["evaluations"] / p["seconds"])
    assert p["quickstart_nfe"] == doctor.pc_evaluations(doctor.QUICKSTART_STEPS)
    assert p["quickstart_seconds"] == pytest.approx(p["quickstart_nfe"] / p["nfe_per_second"])
    assert p["reference_seconds"] == pytest.approx(2000 / p["nfe_per_second"])


def _probe(rate: float, threads: int) -> dict:
    q, r = doctor.pc_evaluations(doctor.QUICKSTART_STEPS), doctor.pc_evaluations()
    return {"batch": 64, "threads": threads, "evaluations": 10, "seconds": 10 / rate, "nfe_per_second": rate,
            "quickstart_nfe": q, "quickstart_seconds": q / rate, "reference_nfe": r, "reference_seconds": r / rate}


def _info(probe, one, load=(0.1, 0.1, 0.1)) -> dict:
    return {"python": "3", "platform": "x", "versions": {"torch": "2"}, "torch_threads": 2, "torch_interop_threads": 2,
            "OMP_NUM_THREADS": None, "cpu_count": 2, "usable_cpus": 2, "load_average": load, "cuda": [],
            "cuda_build": None, "mps": False, "probe": probe, "probe_one_thread": one}


def test_report_projects_with_the_faster_thread_setting_and_says_so():
    lines = []
    doctor.main_report(_info(_probe(1.0, 2), _probe(4.0, 1), load=(9.0, 5.0, 2.0)), lines.append)
    text = "\n".join(lines)
    assert f"projected: `{doctor.QUICKSTART_COMMAND}` (200 evaluations) takes about 50 s here with 1 thread" in text
    assert f"projected: `{doctor.REFERENCE_COMMAND}` (2000 evaluations) takes about 500 s here with 1 thread" in text
    assert "one thread ran 4.0x as fast as 2 here" in text and "OMP_NUM_THREADS=1" in text
    assert "load average 9.0 exceeds the 2 usable CPUs" in text


def test_report_keeps_the_default_threads_when_they_are_faster():
    lines = []
    doctor.main_report(_info(_probe(8.0, 2), _probe(5.0, 1)), lines.append)
    text = "\n".join(lines)
    assert "(200 evaluations) takes about 25 s here with 2 threads" in text
    assert "(2000 evaluations) takes about 250 s here with 2 threads" in text
    assert "one thread ran" not in text and "note:" not in text


def test_collect_probes_one_thread_beside_several():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        info = doctor.collect(probe_seconds=0.1)
        assert info["probe"]["threads"] == 2 and info["probe_one_thread"]["threads"] == 1
        torch.set_num_threads(1)
        info = doctor.collect(probe_seconds=0.1)
        assert info["probe"]["threads"] == 1 and info["probe_one_thread"] is None
        assert doctor.collect(probe_seconds=0)["probe"] is None
    finally:
        torch.set_num_threads(before)
