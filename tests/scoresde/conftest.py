"""The `sde` fixture: one instance of every forward process scoresde ships."""

import pytest

from scoresde import VESDE, VPSDE, DiscreteVPSDE, FlowSDE, SubVPSDE


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
