"""The examples run and say what their docstrings claim."""

import importlib.util
from pathlib import Path

import solvers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_solver_example_converges_at_first_order():
    module = load("custom_solver")
    try:
        errors = module.main()
    finally:
        if "exp_euler" in solvers.available():
            solvers.unregister("exp_euler")
    assert 1.6 < errors[10] / errors[20] < 2.4 and 1.6 < errors[20] / errors[40] < 2.4, errors
