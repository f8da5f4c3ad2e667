"""Shared by the fuzz tests (test_fuzz_*.py): fuzzing the public entry points with bad and odd values (issue 17).

The contract: every call either returns finite results or raises ValueError or TypeError whose
message names the offending argument (its name, or the CLI flag). Entry points that read files or
folders may instead raise an OSError (FileNotFoundError) that names the path. The command line
(`scoresde.cli.main`) answers a bad flag value with one line on stderr and exit status 2 (returned, or
argparse's SystemExit(2)), never a traceback.

Each test draws keyword arguments that are either valid or odd (None, booleans, NaN, huge numbers,
strings, containers, tensors of the wrong shape or dtype) and checks the contract. Some arguments also
draw from an explicit list of invalid values (`refuse=`): a call given one of those must raise, so a
check that silently accepts it fails the test. Examples are few and
derandomized so that CI is reproducible, and models are tiny (AnalyticModel on 2 dimensions; the
shipped U-Net only with n = 1 and one step). `scoresde.sample` itself is fuzzed by its owner; here it is
reached only through the CLI.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import Tensor

from scoresde import VPSDE, AnalyticModel, Gaussian


# SCORESDE_FUZZ_EXAMPLES=500 runs a deeper search locally; CI keeps the default
EXAMPLES = int(os.environ.get("SCORESDE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# command-line examples load the shipped U-Net (about 1 s each on CPU): fewer of them
CLI_FUZZ = settings(FUZZ, max_examples=max(1, EXAMPLES // 3))


# --- odd values and the contract ---------------------------------------------------------------------

class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


ODD_SCALARS = [
    None, True, False, 0, -1, 1, 2, 3, 2**31, 2**63, -(10**30), 0.0, -0.5, 0.5, 1e-300, 1e300,
    float("nan"), float("inf"), -float("inf"), "", "x", "1", "none", "dopri5", 1j, b"ab",
    (), [], {}, [1, 2], (0.5,), {"a": 1}, _Opaque(),
]
odd = st.sampled_from(ODD_SCALARS)
# counts for which a huge integer is a request for that much work or memory, refused only where bounded
HUGE = (2**31, 2**63, -(10**30))
odd_count = st.sampled_from([v for v in ODD_SCALARS if not (type(v) is int and v in HUGE)])


@dataclass(frozen=True)
class Arg:
    """A drawn value, whether it is one of the odd ones, and whether it must be refused (`bad`: drawn
    from the argument's list of invalid values, which no call may accept)."""

    value: object
    odd: bool
    bad: bool = False


def arg(valid: st.SearchStrategy, odd_values: st.SearchStrategy = odd, refuse=()) -> st.SearchStrategy:
    """A valid value, an odd one (valid or not: the call decides), or one of `refuse` (must be refused)."""
    options = [valid.map(lambda v: Arg(v, False)), odd_values.map(lambda v: Arg(v, True))]
    if refuse:
        options.append(st.sampled_from(list(refuse)).map(lambda v: Arg(v, True, True)))
    return st.one_of(*options)


def refused(*args: Arg, **drawn: Arg) -> list[str]:
    """The names of the drawn arguments that must be refused."""
    return [k for k, a in drawn.items() if a.bad] + [f"#{i}" for i, a in enumerate(args) if a.bad]


def kwargs(**strategies: st.SearchStrategy) -> st.SearchStrategy:
    """Keyword arguments, each left out or drawn from arg(...)."""
    return st.fixed_dictionaries({}, optional=strategies)


def mentions(message: str, names) -> bool:
    """Whether `message` names one of `names` (as a word, with '_' or '-')."""
    for name in names:
        if "/" in name and name in message:  # a path
            return True
        for form in {name, name.replace("_", "-"), name.replace("-", "_")}:
            if re.search(rf"(?<![A-Za-z0-9_]){re.escape(form)}(?![A-Za-z0-9_])", message):
                return True
    return False


def finite(value) -> bool:
    """Every tensor and float in value (a tensor, number, dataclass, mapping or sequence) is finite."""
    if isinstance(value, Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(finite(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return all(finite(getattr(value, f)) for f in value.__dataclass_fields__)
    return True


def contract(call, names, *, paths=(), skip=(), refuse=()):
    """call() returns finite results, or raises ValueError/TypeError naming one of `names` (OSError
    naming one of `paths` for file entry points). `skip`: fields of the result not checked for
    finiteness (standard errors that are NaN by definition with one draw), or "all". `refuse`: the
    arguments drawn from their invalid lists: then the call must raise."""
    try:
        result = call()
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert mentions(msg, names), f"{type(e).__name__} names none of {sorted(names)}: {msg}"
        return None
    except OSError as e:
        assert paths and any(str(p) in str(e) for p in paths), f"{type(e).__name__} without a path: {e}"
        return None
    assert not refuse, f"accepted the invalid {list(refuse)}"
    if skip == "all":
        return result
    if hasattr(result, "__dataclass_fields__") and skip:
        assert all(finite(getattr(result, f)) for f in result.__dataclass_fields__ if f not in skip), result
    else:
        assert finite(result), result
    return result


def unwrap(drawn: dict) -> tuple[dict, set]:
    """(keyword arguments, the names of all given) from a dict of Arg."""
    return {k: a.value for k, a in drawn.items()}, set(drawn)


def model2(sde=None) -> AnalyticModel:
    return AnalyticModel(Gaussian(torch.zeros(2, dtype=torch.float64), 0.5), sde or VPSDE())


# data x on every grid of levels (-1 and 1 are on all of them), and odd tensors
def _grid_x(b: int, dtype) -> Tensor:
    return torch.tensor([[-1.0, 1.0]] * b, dtype=dtype)


valid_x = st.builds(_grid_x, st.integers(1, 3), st.sampled_from([torch.float64, torch.float32]))
odd_x = st.sampled_from([
    torch.full((2, 2), float("nan"), dtype=torch.float64), torch.full((1, 2), float("inf")), torch.zeros(2, 2, dtype=torch.long),
    torch.zeros(2), torch.zeros(2, 3, dtype=torch.float64), torch.zeros(0, 2), torch.zeros(1, 0), torch.zeros(()),
    torch.zeros(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.complex64), torch.full((1, 2), 1e30),
    [[0.0, 0.0]], None, "x", 3.0,
])

generators = st.builds(lambda s: torch.Generator().manual_seed(s), st.integers(0, 3))
