"""Re-measure every time the README and docs quote for this machine, and print them as a markdown table.

    python benchmarks/timings.py                 # about 2 minutes on 2 idle cores
    python benchmarks/timings.py --reference     # also the 1,000-step reference run end to end (~3-5 min more)
    python benchmarks/timings.py --tests         # also the default test run and tests/solvers (~6.5 min more)
    python benchmarks/timings.py --slow-tests    # also `python -m pytest -m slow` (4-16 min more)

Rows: `import scoresde` and `scoresde --help` (fresh interpreters, median of --repeats); one evaluation
of the shipped digits U-Net (VP, batch 64) with 1 and 2 torch threads (median over about a second
of calls after a warm-up); the README's quick-start command end to end in a subprocess (wall clock,
as a user would time it), with torch's default threads and with OMP_NUM_THREADS=1; the quick start
and the 1,000-step reference run projected from the per-evaluation times (evaluations x ms + the
start), or the reference measured with --reference; `scoresde doctor`'s own projections; the
default test run and `tests/solvers` alone with --tests; the slow tests with --slow-tests. CPU seconds of the subprocesses (their user + system time) stand
beside the wall seconds: on a busy machine wall time grows with the load, CPU time much less.

The header names the machine: CPUs, torch's version and threads, the load average at the start and
the end, and the other processes that used the most CPU meanwhile (from /proc, where there is one),
so that a figure says what was running when it was taken. The "backs" column names the statements
of README.md and docs/*.md that quote the row.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# Python puts this script's folder first on sys.path, where a benchmark named like a package
# (benchmarks/solvers.py) would shadow that package: import the installed packages instead
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

ROOT = os.path.dirname(_HERE)

# row key -> the README / docs statements it backs
BACKS = {
    "import": "README, Quick start: part of the start (import, model load)",
    "help": "no statement yet: that `--help` is quick (issue 23, item 5)",
    "eval1": "README, Quick start: ms per evaluation (one thread); docs/benchmarks.md",
    "eval2": "README, Quick start: ms per evaluation (two threads)",
    "quick": "README, Quick start: the quick start's time (the 60-s claim)",
    "quick1": "README, Quick start: thread setting on a busy machine",
    "quick_proj": "README, Quick start: the per-evaluation arithmetic",
    "reference": "README, Quick start: the 1,000-step reference run's time",
    "doctor": "README, Command line: `scoresde doctor`'s projections",
    "tests": "README, Run the tests: the default run's time",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="fresh interpreters per start-up row (default 3)")
    p.add_argument("--reference", action="store_true", help="run the 1,000-step reference command end to end too")
    p.add_argument("--tests", action="store_true",
                   help="time the default test run (`python -m pytest -q`) and `python -m pytest tests/solvers -q` too")
    p.add_argument("--slow-tests", action="store_true", help="time `python -m pytest -m slow -q` too")
    p.add_argument("--skip-quickstart", action="store_true", help="skip the end-to-end quick-start runs")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


# --- what else is running -----------------------------------------------------------------------

def _cpu_ticks() -> dict[int, tuple[int, str]]:
    """pid -> (user + system clock ticks so far, command line) of every process /proc shows ({} without /proc)."""
    out = {}
    if not os.path.isdir("/proc"):
        return out
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        # after the command name: state is fields[0], utime fields[11], stime fields[12]
        out[int(name)] = (int(fields[11]) + int(fields[12]), cmd)
    return out


def _descendants(pid: int) -> set[int]:
    """This process and every process started under it (to leave our own runs out of "other processes")."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    seen, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += children.get(p, [])
    return seen


class OtherLoad:
    """CPU seconds the other processes used between `start` and `stop` (ours and our children's left out)."""

    def __init__(self):
        self.before = _cpu_ticks()
        self.ours: set[int] = set()

    def note_ours(self) -> None:
        self.ours |= _descendants(os.getpid())

    def top(self, k: int = 5) -> list[tuple[float, str]]:
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        after = _cpu_ticks()
        used = []
        for pid, (ticks, cmd) in after.items():
            if pid in self.ours or pid == os.getpid():
                continue
            seconds = (ticks - self.before.get(pid, (0, cmd))[0]) / hz
            if seconds >= 1.0:
                used.append((seconds, cmd[:100] or f"pid {pid}"))
        return sorted(used, reverse=True)[:k]


# --- measurements --------------------------------------------------------------------------------

def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_timed(cmd: list[str], *, env: dict | None = None, cwd: str | None = None, others: OtherLoad | None = None):
    """(wall seconds, CPU seconds, completed process) of one subprocess run; raises if it fails."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    if others is not None:
        time.sleep(0.2)
        others.note_ours()
    out, err = proc.communicate()
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{err[-2000:]}")
    return wall, cpu, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def repeated(cmd: list[str], repeats: int, others: OtherLoad) -> tuple[float, float, list[float]]:
    """Median wall, median CPU seconds and all wall seconds of `repeats` runs of `cmd`."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu, _ = run_timed(cmd, others=others)
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus), walls


def scoresde_cmd() -> list[str]:
    exe = shutil.which("scoresde")
    return [exe] if exe else [sys.executable, "-m", "scoresde"]


def evaluation_ms(threads: int, batch: int = 64, seconds: float = 1.5) -> tuple[float, float, int]:
    """(median wall ms, mean CPU ms, calls) of one evaluation of the shipped VP digits model at `batch`."""
    import torch

    import scoresde

    torch.set_num_threads(threads)
    model = scoresde.default_model("vp")
    x = torch.randn(batch, *model.image_shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((batch,), 0.5)
    walls = []
    with torch.no_grad():
        model.eps(x, t)  # warm-up
        model.eps(x, t)
        cpu0, start = time.process_time(), time.perf_counter()
        while len(walls) < 5 or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            model.eps(x, t)
            walls.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
    return 1000 * statistics.median(walls), 1000 * cpu / len(walls), len(walls)


def doctor_projection(others: OtherLoad) -> tuple[float, dict[str, str]]:
    """(wall seconds of `scoresde doctor`, {command: its projected seconds}) from its "projected" lines."""
    wall, _, proc = run_timed([*scoresde_cmd(), "doctor"], others=others)
    found = {m.group(1): m.group(2) for m in re.finditer(r"projected: `([^`]*)` \(\d+ evaluations\) takes about (\d+) s",
                                                         proc.stdout)}
    speed = re.search(r"speed: ([\d.]+) network evaluations/s", proc.stdout)
    if speed:
        found["rate"] = speed.group(1)
    return wall, found


def load_text(load) -> str:
    return " / ".join(f"{v:.2f}" for v in load)


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from scoresde.doctor import QUICKSTART_COMMAND, QUICKSTART_STEPS, REFERENCE_COMMAND, pc_evaluations

    load_start, started = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    others = OtherLoad()
    rows = []  # (key, what, figure, how)
    py = sys.executable

    wall, cpu, walls = repeated([py, "-c", "import scoresde"], args.repeats, others)
    rows.append(("import", "`import scoresde`", f"{wall:.1f} s (CPU {cpu:.1f} s)",
                 f"`python -c \"import scoresde\"`, median of {args.repeats} ({', '.join(f'{w:.1f}' for w in walls)} s)"))
    wall, cpu, walls = repeated([*scoresde_cmd(), "--help"], args.repeats, others)
    rows.append(("help", "`scoresde --help`", f"{wall:.2f} s (CPU {cpu:.2f} s)",
                 f"median of {args.repeats} ({', '.join(f'{w:.2f}' for w in walls)} s)"))

    default_threads = torch.get_num_threads()
    ms = {}
    for threads in (1, 2):
        ms[threads], cpu_ms, calls = evaluation_ms(threads)
        rows.append((f"eval{threads}", f"one evaluation of the digits U-Net, batch 64, {threads} thread{'s' * (threads > 1)}",
                     f"{ms[threads]:.0f} ms (CPU {cpu_ms:.0f} ms)", f"median of {calls} calls after a warm-up"))
    torch.set_num_threads(default_threads)

    quick_nfe, ref_nfe = pc_evaluations(QUICKSTART_STEPS), pc_evaluations()
    import_s = float(rows[0][2].split()[0])
    if not args.skip_quickstart:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [*scoresde_cmd(), *QUICKSTART_COMMAND.split()[1:], "--out", os.path.join(tmp, "samples.png"), "--quiet"]
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
            wall, cpu, _ = run_timed(cmd, env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp, others=others)
            one = ("quick1", "the same with `OMP_NUM_THREADS=1`", f"{wall:.1f} s (CPU {cpu:.1f} s)",
                   "subprocess, wall clock; one torch thread")
            what = f"quick start `{QUICKSTART_COMMAND} --out samples.png`, end to end"
            if default_threads > 1 and ms[default_threads if default_threads in ms else 2] > 3 * ms[1]:
                # oversubscribed: the default-threads run would take many minutes and measure only the contention
                rows.append(("quick", what, "skipped", f"torch's default {default_threads} threads took over 3x as long "
                             "per evaluation as one (other processes hold the CPUs)"))
            else:
                wall, cpu, _ = run_timed(cmd, env=env, cwd=tmp, others=others)
                rows.append(("quick", what, f"{wall:.1f} s (CPU {cpu:.1f} s)",
                             f"subprocess, wall clock; torch's default threads ({default_threads})"))
            rows.append(one)
    rows.append(("quick_proj", f"quick start projected ({quick_nfe} evaluations)",
                 f"{import_s + quick_nfe * ms[1] / 1000:.0f} s (1 thread), {import_s + quick_nfe * ms[2] / 1000:.0f} s (2 threads)",
                 f"`import scoresde` + {quick_nfe} x the ms per evaluation above"))
    if args.reference:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [*scoresde_cmd(), *REFERENCE_COMMAND.split()[1:], "--out", os.path.join(tmp, "samples.png"), "--quiet"]
            wall, cpu, _ = run_timed(cmd, cwd=tmp, others=others)
        rows.append(("reference", f"reference run `{REFERENCE_COMMAND} --out samples.png`, end to end",
                     f"{wall:.0f} s (CPU {cpu:.0f} s)", f"subprocess, wall clock; torch's default threads ({default_threads})"))
    else:
        rows.append(("reference", f"reference run `{REFERENCE_COMMAND}` projected ({ref_nfe} evaluations)",
                     f"{(import_s + ref_nfe * ms[1] / 1000) / 60:.1f} min (1 thread), "
                     f"{(import_s + ref_nfe * ms[2] / 1000) / 60:.1f} min (2 threads)",
                     f"`import scoresde` + {ref_nfe} x the ms per evaluation above (`--reference` runs it)"))

    wall, proj = doctor_projection(others)
    rows.append(("doctor", "`scoresde doctor` (5-s probe)",
                 f"{proj.get('rate', '?')} evaluations/s; quick start {proj.get(QUICKSTART_COMMAND, '?')} s, "
                 f"reference {proj.get(REFERENCE_COMMAND, '?')} s", f"its own projections (network time only); ran {wall:.0f} s"))

    test_runs = [("tests", "default test run `python -m pytest -q`", []),
                 ("tests_solvers", "`python -m pytest tests/solvers -q`", ["tests/solvers"])] if args.tests else []
    if args.slow_tests:
        test_runs.append(("tests_slow", "slow tests `python -m pytest -m slow -q`", ["-m", "slow"]))
    for key, what, extra in test_runs:
        wall, cpu, proc = run_timed([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra], cwd=ROOT, others=others)
        summary = (proc.stdout.strip().splitlines() or ["?"])[-1]
        rows.append((key, what, f"{wall:.0f} s (CPU {cpu:.0f} s)", f"subprocess in the repository: {summary}"))

    load_end = os.getloadavg()
    print(f"Measured {started} by `python benchmarks/timings.py{' ' if argv or sys.argv[1:] else ''}"
          f"{' '.join(sys.argv[1:] if argv is None else argv)}` on {os.cpu_count()} CPUs "
          f"({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} usable; {platform.processor() or platform.machine()}), "
          f"torch {torch.__version__} ({default_threads} threads by default), niceness {os.nice(0)}; load average (1, 5, 15 min) "
          f"{load_text(load_start)} at the start, {load_text(load_end)} at the end.")
    top = others.top()
    if top:
        print("Other processes meanwhile (CPU seconds): " + "; ".join(f"{s:.0f} s `{c}`" for s, c in top))
    elif os.path.isdir("/proc"):
        print("Other processes meanwhile: none used a CPU second.")
    print()
    print("| row | figure | how | backs |")
    print("|---|---|---|---|")
    for key, what, figure, how in rows:
        print(f"| {what} | {figure} | {how} | {BACKS[key]} |")


if __name__ == "__main__":
    main()
