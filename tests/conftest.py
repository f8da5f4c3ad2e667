"""Settings for every test: tests/solvers (the `solvers` package, without `scoresde`) and tests/scoresde (the rest).

Nothing here imports `scoresde`: tests/solvers must run where it is not importable (SOLVERS_ALONE=1).
"""

import torch
from hypothesis import settings

# tiny tensors: one intra-op thread avoids OpenMP stalls on a shared 2-core machine
torch.set_num_threads(1)

# property tests run on a shared 2-core machine: no per-example deadline
settings.register_profile("scoresde", deadline=None, max_examples=50)
settings.load_profile("scoresde")
