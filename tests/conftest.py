import pytest
import torch

from scoresde import VESDE, VPSDE, DiscreteVPSDE, FlowSDE, SubVPSDE

# tiny tensors: one intra-op thread avoids OpenMP stalls on a shared 2-core machine
torch.set_num_threads(1)


def all_sdes():
    """One instance of every forward process, with ids, for parametrized tests."""
    return {
        "vp": VPSDE(),
        "vp_cosine": VPSDE(schedule="cosine"),
        "subvp": SubVPSDE(),
        "ve": VESDE(),
        "ddpm_linear": DiscreteVPSDE(),
        "ddpm_cosine": DiscreteVPSDE(schedule="cosine"),
        "flow": FlowSDE(),
    }


@pytest.fixture(params=list(all_sdes()), ids=list(all_sdes()))
def sde(request):
    return all_sdes()[request.param]

# property tests run on a shared 2-core machine: no per-example deadline
from hypothesis import settings  # noqa: E402

settings.register_profile("scoresde", deadline=None, max_examples=50)
settings.load_profile("scoresde")
