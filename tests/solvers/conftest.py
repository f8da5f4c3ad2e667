"""The solvers' tests use only `solvers` and the ground truth in gaussian.py. With SOLVERS_ALONE=1 (as
tests/scoresde/test_layering.py runs them) `scoresde` is made unimportable, proving that they need nothing from it."""

import os
import sys

if os.environ.get("SOLVERS_ALONE") == "1":
    sys.modules["scoresde"] = None  # any `import scoresde` now raises ImportError
