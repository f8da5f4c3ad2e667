"""`solvers` stands alone: importing it must not import `scoresde`."""

import subprocess
import sys


def test_solvers_imports_without_scoresde():
    code = "import sys, solvers; solvers.available(); print('scoresde' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


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
