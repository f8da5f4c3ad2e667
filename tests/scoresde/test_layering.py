"""Layering: `solvers` stands alone (importing it must not import `scoresde`, and its tests pass where
`scoresde` cannot be imported), `import scoresde` stays light, and no scoresde module imports one that
imports it back."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOLVERS_TESTS = 586  # the default run of tests/solvers when this test was written; more is fine


def test_solvers_imports_without_scoresde():
    code = "import sys, solvers; solvers.available(); print('scoresde' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow  # a second run of all of tests/solvers (about a minute); .ci/run runs the same command itself
def test_the_solvers_tests_pass_without_scoresde():
    # tests/solvers/conftest.py makes `import scoresde` raise when SOLVERS_ALONE=1
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/solvers"],
        cwd=ROOT, env={**os.environ, "SOLVERS_ALONE": "1"}, capture_output=True, text=True, timeout=600,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not re.search(r"\b(failed|error|errors)\b", summary), summary
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= SOLVERS_TESTS, summary


def test_everything_but_the_torchsde_solver_works_without_torchsde():
    # some machines (a GPU image, say) lack torchsde: it is imported only when its solver is built
    code = """
import sys
sys.modules["torchsde"] = None  # any `import torchsde` now raises ImportError
import scoresde
import torch
from scoresde.analytic import AnalyticModel, Gaussian
model = AnalyticModel(Gaussian(torch.full((3,), 0.5), 0.2), scoresde.VPSDE())
out = scoresde.sample(model, solver="euler_maruyama", steps=5, n=4, shape=(3,), seed=0)
print(tuple(out.x.shape), out.nfe)
try:
    scoresde.sample(model, solver="torchsde", steps=5, n=4, shape=(3,), seed=0)
except ImportError as err:
    print(err)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "(4, 3) 5"
    assert out[1].startswith("solver 'torchsde' needs the torchsde package") and "every other solver" in out[1]


def test_import_scoresde_is_light_and_every_public_name_resolves():
    # the package's names are imported on first use (PEP 562): `import scoresde` loads no sampler,
    # trainer or metric, and `scoresde --help` not even torch
    code = """
import json, sys
import scoresde
loaded = sorted(m for m in sys.modules if m in {"torchdiffeq", "scipy", "scoresde.train", "scoresde.training.loop",
                                                "scoresde.metrics", "scoresde.data", "scoresde.losses"})
missing = [name for name in scoresde.__all__ if getattr(scoresde, name, None) is None]
submodules = [getattr(scoresde, name).__name__ for name in ("data", "param", "metrics", "losses", "speed", "nn")]
exec("from scoresde import *", {})
print(json.dumps({"loaded": loaded, "missing": missing, "in_dir": set(scoresde.__all__) <= set(dir(scoresde)),
                  "submodules": submodules}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    submodules = [f"scoresde.{name}" for name in ("data", "param", "metrics", "losses", "speed", "nn")]
    assert json.loads(out.stdout) == {"loaded": [], "missing": [], "in_dir": True, "submodules": submodules}
    code = """
import contextlib, io, sys
from scoresde.cli import main
with contextlib.redirect_stdout(io.StringIO()) as text, contextlib.suppress(SystemExit):
    main(["--help"])
print("torch" in sys.modules, "train" in text.getvalue())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def _scoresde_imports() -> dict[str, set[str]]:
    """module -> the scoresde modules it imports, at the top or inside functions (read, not run)."""
    root = ROOT / "scoresde"
    paths = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets.update(f"{module}.{a.name}" if f"{module}.{a.name}" in paths else module for a in node.names)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def test_no_module_imports_a_module_that_imports_it_back():
    graph = _scoresde_imports()
    assert {"scoresde.training.loop", "scoresde.training.checkpoints"} <= graph["scoresde.train"]

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            module = todo.pop()
            if module == goal:
                return True
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        return False

    cycles = sorted((a, b) for a in graph for b in graph[a] if reaches(b, a))
    assert cycles == []


def test_checkpoint_and_compatibility_modules_import_alone():
    # each in a fresh interpreter (they once imported each other); all the modules' imports are checked above
    modules = ("scoresde.pretrained", "scoresde.training.checkpoints", "scoresde.train")
    procs = [subprocess.Popen([sys.executable, "-c", f"import {m}"], stderr=subprocess.PIPE, text=True) for m in modules]
    errors = {m: p.communicate()[1] for m, p in zip(modules, procs) if p.wait() != 0}
    assert errors == {}
