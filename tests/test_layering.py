"""`solvers` stands alone: importing it must not import `scoresde`."""

import subprocess
import sys


def test_solvers_imports_without_scoresde():
    code = "import sys, solvers; solvers.available(); print('scoresde' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
