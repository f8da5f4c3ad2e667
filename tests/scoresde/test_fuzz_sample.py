"""Issue 17, `scoresde.sample`'s messages: bad values are refused with a ValueError naming the argument.

First each known case with its message, then a hypothesis fuzz over every argument (steps, n, shape,
seed, generator, grid, t_start, t_end, x_T, dtype, device, solver and its options, batch_size, labels y,
guidance_scale, null_label, sde): every call either returns finite samples or raises ValueError /
TypeError whose message names one of the arguments given. The model is a tiny exact class-conditional
mixture on 2 dimensions; examples are derandomized so that CI is reproducible.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scoresde
import solvers
from scoresde import VPSDE, ConditionalAnalyticModel, GaussianMixture
from scoresde import cli, sampling_args

F64 = torch.float64


def mixture() -> ConditionalAnalyticModel:
    """Two classes in 2-d: N((-1, 0), 0.3^2 I) and N((1, 0.5), 0.5^2 I), equal weights."""
    data = GaussianMixture(torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=F64),
                           torch.tensor([0.3, 0.5], dtype=F64))
    return ConditionalAnalyticModel(data, VPSDE())


MODEL = mixture()
NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        # today: "x_T must be a float tensor of shape (B, *D), got (2, 2)": the dtype was not named
        (dict(x_T=torch.zeros(2, 2, dtype=torch.int64)), r"x_T must be a float tensor .* got a torch\.int64 tensor"),
        (dict(x_T=torch.zeros(0, 2)), r"x_T must be a float tensor of shape \(B, \*D\) with B >= 1"),
        (dict(x_T=torch.zeros(2, 2, device="meta")), "x_T is on the meta device"),
        # today: "Overflow when unpacking long long"
        (dict(n=2, shape=(2,), steps=2**70), r"steps must be an integer >= 1 and <= 1000000, got 1180591620717411303424"),
        (dict(n=2, shape=(2,), seed=2**70), r"seed must be an int in \[0, 2\*\*63 - 1\]"),
        (dict(n=2, shape=(2,), seed=[0, 2**64]), r"seed must be an int in \[0, 2\*\*63 - 1\] or a list of them; the list holds 18446744073709551616"),
        (dict(n=2, shape=(2,), seed=-1), r"seed must be an int in \[0, 2\*\*63 - 1\]"),
        # today: "'float' object is not iterable"
        (dict(n=2, shape=(2,), seed=1.5), r"seed must be an int in \[0, 2\*\*63 - 1\] or a list of them, got 1.5"),
        (dict(n=2, shape=(2,), seed=[1, 2, 3]), "seed: a list needs one entry per sample, got 3 for 2 samples"),
        (dict(n=2, shape=(2,), generator=[torch.Generator()]), "generator: a list needs one entry per sample"),
        (dict(n=2, shape=(2,), generator=7), "generator must be None, a torch.Generator or a list of them"),
        # today: "unhashable type: 'list'"
        (dict(n=2, shape=(2,), grid=[1.0, 0.5, 0.001]),
         r"grid must be a name in \['karras', 'quadratic_t', 'uniform_lambda', 'uniform_t'\] or a decreasing 1-d tensor"),
        (dict(n=2, shape=(2,), grid=torch.tensor([1.0, float("nan"), 0.1], dtype=F64)), "grid: ts must be strictly decreasing"),
        (dict(n=2, shape=(2,), grid=torch.tensor([3, 2, 1])), r"grid must be a decreasing 1-d float tensor of times, got a torch\.int64"),
        # today: torch's RuntimeError / AssertionError from deep inside
        (dict(n=2, shape=(2,), device="bogus"), "device 'bogus' is not a torch device; choose one of cpu"),
        (dict(n=2, shape=(2,), device="meta"), "device 'meta' holds no data and cannot be used for sampling"),
        pytest.param(dict(n=2, shape=(2,), device="cuda"), "device 'cuda': CUDA is not available on this machine",
                     marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")),
        (dict(n=2, shape=(-1,)), r"shape must be a tuple of ints >= 1 \(the sample shape without the batch\), got \(-1,\)"),
        (dict(n=2, shape=2), r"shape must be a tuple of ints >= 1 .* got 2"),
        (dict(n=2**40, shape=(2,)), r"n must be an integer >= 1 and <= 2147483647, got 1099511627776"),
        (dict(n=2, shape=(2,), callback=3), r"callback must be None or a function of a solvers\.Step, got 3"),
        (dict(n=2, shape=(2,), progress="yes"), "progress must be True or False, got 'yes'"),
        (dict(n=2, shape=(2,), model=3), r"model must be a Model \(an `sde` and methods eps, x0, score, v\), got int"),
    ],
)
def test_sample_names_the_bad_argument(kwargs, match):
    kwargs = {"model": MODEL, **kwargs}
    with pytest.raises(ValueError, match=match):
        scoresde.sample(solver="ddim", **kwargs)


def test_bounds_are_the_cli_ones():
    assert (sampling_args.MAX_STEPS, sampling_args.MAX_SEED, sampling_args.MAX_COUNT) == (
        cli.MAX_STEPS, cli.MAX_SEED, cli.MAX_INT)


def test_largest_seed_and_steps_bound_are_accepted():
    res = scoresde.sample(MODEL, solver="ddim", steps=2, n=2, shape=(2,), seed=[0, 2**63 - 1], dtype=F64)
    assert torch.isfinite(res.x).all()


# --- the fuzz --------------------------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("SCORESDE_FUZZ_EXAMPLES", "200"))  # e.g. 2000 for a deeper local search; a third of the
# drawn values are invalid, so 200 examples give about as many accepted calls as 100 did before
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

ODD = [None, True, -1, 0, 2**70, 1.5, float("nan"), float("inf"), "x", [1, 2], (), {"a": 1}, b"1", 1j]
SOLVERS = [*solvers.names(), "auto"]  # "auto": scoresde.sample's recommended solver


def _tensor(kind: str):
    """Valid and odd tensors for x_T and grid, by their "@" names."""
    return {
        "@x_T": torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0)),
        "@x_T32": torch.randn(2, 2, generator=torch.Generator().manual_seed(1)),
        "@x_T_int": torch.zeros(3, 2, dtype=torch.int32),
        "@x_T_nan": torch.full((2, 2), float("nan"), dtype=F64),
        "@x_T_wide": torch.zeros(2, 3, dtype=F64),
        "@x_T_0d": torch.tensor(1.0),
        "@x_T_complex": torch.zeros(2, 2, dtype=torch.complex64),
        "@grid": torch.linspace(1.0, 1e-3, 4, dtype=F64),
        "@grid_up": torch.linspace(1e-3, 1.0, 4, dtype=F64),
        "@grid_2d": torch.ones(2, 2, dtype=F64),
        "@grid_long": torch.linspace(2.0, 0.5, 3, dtype=F64),
        "@grid_one": torch.ones(1, dtype=F64),
    }[kind]


@dataclass(frozen=True)
class Drawn:
    """A drawn value; `bad`: one that every call must refuse (drawn from the argument's invalid list)."""

    value: object
    bad: bool = False


def one_of(valid, odd=ODD, bad=()):
    """A valid value, an odd one (valid or not: the call decides), or a bad one (must be refused)."""
    options = [st.sampled_from(valid).map(Drawn), st.sampled_from(odd).map(Drawn)]
    if bad:
        options.append(st.sampled_from(bad).map(lambda v: Drawn(v, True)))
    return st.one_of(*options)


ARGS = {
    "solver": one_of(SOLVERS, [None], bad=["nope", 3, "DDIM", ["ddim"]]),
    "steps": one_of([1, 2, 3, 5], ODD, bad=[0, -1, 10**6 + 1, 2**70, 1.5, "x"]),
    "n": one_of([1, 2, 3], ODD, bad=[0, -1, 2**31, 1.5, "x"]),
    "shape": one_of([(2,), [2], torch.Size([2])], [(2, 2), (3,)], bad=[(0,), 2, (2.0,), ("a",), (-1,), (True,)]),
    "seed": one_of([0, 7, 2**63 - 1, [1, 2, 3], (4, 5), range(3)], ODD, bad=[-1, 2**70, 1.5, "x", [1.5], [-1], [2**63]]),
    "generator": one_of([torch.Generator().manual_seed(3)], [[torch.Generator()]], bad=[4, "gen"]),
    "grid": one_of(["uniform_t", "uniform_lambda", "karras", "quadratic_t", "@grid"], ODD + ["@grid_long"],
                   bad=["cubic", [1.0, 0.5], "@grid_up", "@grid_2d", "@grid_one"]),
    "t_start": one_of([0.9, 1.0, 0.5]),
    "t_end": one_of([0.0, 1e-3, 0.2]),
    "x_T": one_of(["@x_T", "@x_T32"], ["@x_T_wide"], bad=["@x_T_int", "@x_T_nan", "@x_T_0d", "@x_T_complex", 3, [[0.0, 1.0]]]),
    "dtype": one_of([torch.float32, torch.float64], [None], bad=[torch.int32, "float64", torch.complex64, 3]),
    "device": one_of(["cpu", torch.device("cpu")], [None], bad=["bogus", "cuda:7", "meta", 3, ""]),
    "batch_size": one_of([1, 2, 5], ODD),
    "y": one_of([0, 1, 2, "@labels"], [-1, 3, 1.5, "@float_labels", "@labels_2d"] + ODD),
    "guidance_scale": one_of([0.0, 1.0, 2.5], ODD),
    "null_label": one_of([2], ODD),
    "sde": one_of(["vp"], ["ve", "nope", 3, VPSDE(beta_max=10.0)]),
    "callback": one_of([None, lambda step: None], [None], bad=[3, "f"]),
    "progress": one_of([False], [1, None], bad=["yes"]),
}
# solver options: names some solver knows, and values valid for some of them
OPTIONS = st.dictionaries(
    st.sampled_from(["eta", "order", "snr", "denoise_final", "bogus", "prediction", "corrector", "method"]),
    st.sampled_from([0.0, 0.5, 1, 2, 3, True, "x0", "eps", "dopri5", "euler", -1, float("nan"), None, "nope"]),
    max_size=2,
)


def _materialize(name: str, value, n):
    """Tensor stand-ins by their "@" name (hypothesis draws names, tensors are built here)."""
    if name in ("x_T", "grid") and isinstance(value, str) and value.startswith("@"):
        return _tensor(value)
    if name == "y" and isinstance(value, str) and value.startswith("@"):
        rows = n if type(n) is int and 0 < n < 10 else 3
        return {"@labels": torch.arange(rows) % 3, "@float_labels": torch.zeros(rows),
                "@labels_2d": torch.zeros(rows, 1, dtype=torch.long)}[value]
    return value


# words a message may use for an argument (a shape error of the model names x, its data)
ALIASES = {
    "x_T": ["x_T", "x"], "shape": ["shape", "x"], "y": ["y", "labels", "label"], "grid": ["grid", "ts"],
    "t_start": ["t_start", "t_end", "T"], "t_end": ["t_start", "t_end", "T"], "null_label": ["null_label", "labels"],
    "guidance_scale": ["guidance_scale", "guidance scale"], "solver": ["solver", "option"],
    "seed": ["seed", "generator"], "generator": ["seed", "generator"], "n": ["n", "x_T", "labels", "y"],
}


def _names(kwargs: dict, options: dict) -> set[str]:
    """The words a refusal may use: the arguments given, and "solver" / "option" only where a solver or
    its options were given (the default "ddim" with no options is not a reason to refuse)."""
    words = set(options) | ({"solver", "option"} if options else set())
    for k in kwargs:
        words.update(ALIASES.get(k, [k]))
    return words


@FUZZ
@given(
    data=st.fixed_dictionaries({}, optional=ARGS),
    options=OPTIONS,
)
def test_fuzz_sample_returns_finite_samples_or_names_the_argument(data, options):
    n = data["n"].value if "n" in data else None
    kwargs = {k: _materialize(k, d.value, n) for k, d in data.items()}
    bad = sorted(k for k, d in data.items() if d.bad)
    if "x_T" not in kwargs and "shape" not in kwargs:
        kwargs["shape"] = (2,)
    words = _names(kwargs, options)  # before the default solver is filled in
    kwargs.setdefault("solver", "ddim")
    try:
        res = scoresde.sample(MODEL, **kwargs, **options)
    except (ValueError, TypeError) as e:
        message = str(e)
        assert any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(w)}(?![A-Za-z0-9_])", message) for w in words), (
            f"{type(e).__name__}: {message!r} names none of {sorted(words)}")
        return
    assert not bad, f"accepted the invalid {bad}: {kwargs}, {options}"
    assert torch.isfinite(res.x).all(), (kwargs, options)
    assert res.x.shape[0] == res.settings["batch"]
