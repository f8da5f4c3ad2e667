"""Fuzzing the command line: one line on stderr and exit status 2 for a bad flag value, never a traceback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoresde.cli import main

from .fuzz_common import (
    FUZZ, CLI_FUZZ, arg, mentions,
)


# --- command line ------------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(["", "x", "-1", "0", "1.5", "nan", "inf", "-inf", "1e999", "9" * 30, "{", "None", "[1]",
                            "{'ch': 'x'}", "()", "cpu ", "meta", "bogus"])


def cli_flags(spec: dict, required: tuple = ()) -> st.SearchStrategy:
    """A list of (flag, value, odd) drawn from spec {flag: valid values}; at least one odd value, so
    that no example does the command's real work."""
    def one(flag):
        return arg(st.sampled_from(spec[flag]), ODD_TEXT).map(lambda a: (flag, a.value, a.odd))

    flags = st.lists(st.sampled_from(sorted(spec)), min_size=1, max_size=4, unique=True)
    drawn = flags.flatmap(lambda fs: st.tuples(*[one(f) for f in fs]))
    return drawn.filter(lambda items: any(odd for _, _, odd in items))


def run_cli(argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of main(argv); argparse's refusals exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


EMPTY_DATA = "holds no image files"  # the tests' empty image folder: every flag was accepted


def assert_one_line_refusal(argv, flags, capsys):
    code, err = run_cli(argv, capsys)
    lines = [line for line in err.strip().splitlines() if not line.startswith("done in")]
    assert "Traceback" not in err, err
    if code == 0 or (code == 2 and len(lines) == 1 and EMPTY_DATA in lines[0]):  # every odd text was valid for its flag
        return
    assert code == 2 and len(lines) == 1, (code, err)
    names = {f.lstrip("-") for f in flags}
    assert mentions(lines[0], names | {f for f in flags}) or "usage" in lines[0] or "error: argument" in lines[0], lines[0]


TRAIN_FLAGS = {
    "--steps": ["0"], "--batch-size": ["2"], "--lr": ["0.001"], "--sde": ["vp", "ve"], "--net-options": ["{'ch': 8}"],
    "--augment": ["xflip"], "--augment-p": ["0.5"], "--seed": ["1"], "--device": ["cpu"], "--betas": ["(0.9, 0.99)"],
    "--t-eps": ["0.001"], "--ema-decay": ["0.9"], "--channels": ["1"], "--precision": ["fp32"],
}


@CLI_FUZZ
@given(flags=cli_flags(TRAIN_FLAGS))
def test_fuzz_cli_train(flags, tmp_path, capsys):
    # an empty image folder: where every flag is accepted, the run stops at its data, before any work
    (tmp_path / "empty").mkdir(exist_ok=True)
    argv = ["train", "--out-dir", str(tmp_path / "run"), "--no-progress", "--data", "folder", "--data-root",
            str(tmp_path / "empty"), "--image-size", "8"]
    for flag, value, _ in flags:
        argv += [flag, value]
    assert_one_line_refusal(argv, [f for f, _, odd in flags if odd], capsys)


BPD_FLAGS = {
    "--n": ["1"], "--batch-size": ["1"], "--probes": ["1"], "--repeats": ["1"], "--method": ["dpm_solver"],
    "--steps": ["2"], "--rtol": ["0.001"], "--atol": ["0.001"], "--seed": ["0"], "--device": ["cpu"], "--sde": ["vp"],
    "--split": ["test"], "--image-size": ["8"],
}


@CLI_FUZZ
@given(flags=cli_flags(BPD_FLAGS))
def test_fuzz_cli_bpd(flags, tmp_path, capsys):
    (tmp_path / "empty").mkdir(exist_ok=True)  # as for train: a run that accepts every flag stops at its data
    argv = ["bpd", "--n", "1", "--method", "dpm_solver", "--steps", "2", "--data", "folder", "--data-root",
            str(tmp_path / "empty")]
    for flag, value, _ in flags:
        argv += [flag, value]
    assert_one_line_refusal(argv, [f for f, _, odd in flags if odd], capsys)


SAMPLE_FLAGS = {
    "--solver": ["ddim", "dpm_solver++"], "--option": ["eta=0.5"], "--steps": ["1"], "--grid": ["uniform_t"],
    "--n": ["1"], "--seed": ["0"], "--device": ["cpu"], "--sde": ["vp"], "--scale": ["1"], "--y": ["3"],
    "--guidance-scale": ["2.0"],
}


@CLI_FUZZ
@given(flags=cli_flags(SAMPLE_FLAGS))
def test_fuzz_cli_sample(flags, tmp_path, capsys):
    argv = ["sample", "--n", "1", "--steps", "1", "--solver", "ddim", "--quiet", "--out", str(tmp_path / "s.png")]
    for flag, value, _ in flags:
        argv += [flag, value]
    assert_one_line_refusal(argv, [f for f, _, odd in flags if odd], capsys)


@FUZZ
@given(extra=st.lists(ODD_TEXT, max_size=2))
def test_fuzz_cli_solvers_and_commands(extra, capsys):
    """`solvers` with stray arguments, and unknown commands: one line, exit 2."""
    for argv in (["solvers", *extra], [*extra] or ["--bogus"]):
        code, err = run_cli(argv, capsys)
        assert "Traceback" not in err
        if code != 0:
            assert code == 2 and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv, match", [
    (["bpd", "--data-root", "somewhere"], "--data-root is for --data cifar10 or folder"),
    (["bpd", "--method", "dpm_solver", "--steps", "2", "--rtol", "inf"], "--rtol applies to the adaptive methods"),
    (["bpd", "--method", "rk4", "--steps", "2", "--atol", "0.1"], "--atol applies to the adaptive methods"),
])
def test_cli_bpd_refuses_flags_it_would_ignore(argv, match, capsys):
    code, err = run_cli(argv, capsys)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
