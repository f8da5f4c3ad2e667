"""The ground floor: phi functions, prediction conversions, validators, and what importing it loads."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis.strategies import floats, sampled_from
from scipy import integrate

from solvers import conversions
from solvers.coefficients import phis
from solvers.protocol import bcast
from solvers.validate import check_bool, check_choice, check_int, check_name, check_number

F64 = torch.float64


@given(z=floats(-30.0, 30.0).filter(lambda z: abs(z) > 1e-2))
def test_phis_are_the_exponential_integrator_integrals(z):
    """phi_k(z) = int_0^1 e^{(1 - u) z} u^{k-1} / (k-1)! du (Hochbruck & Ostermann 2010), k = 1, 2, 3."""
    got = phis(torch.tensor(z, dtype=F64), 3)
    for k, value in enumerate(got, start=1):
        exact, _ = integrate.quad(lambda u: math.exp((1 - u) * z) * u ** (k - 1) / math.factorial(k - 1), 0, 1, epsabs=0, epsrel=1e-13)
        # the recursion loses about eps / |z|^(k-1) to cancellation: 1e-12 at |z| = 1e-2, k = 3
        assert math.isclose(float(value), exact, rel_tol=1e-9), (k, z, float(value), exact)


def test_phi_weights_reproduce_the_exact_data_form_step():
    """For x0 linear in lambda, x_t = sigma_t/sigma_s x_s + alpha_t h (phi_1(-h) x0 + phi_2(-h) h x0') exactly
    (the integral alpha_t int_0^h e^{-(h-u)} (x0 + u x0') du computed by quadrature)."""
    h, alpha_t, x0, dx0 = 0.7, 0.8, 1.3, -0.4
    phi_1, phi_2 = (float(p) for p in phis(torch.tensor(-h, dtype=F64), 2))
    quad, _ = integrate.quad(lambda u: math.exp(-(h - u)) * (x0 + u * dx0), 0, h, epsabs=0, epsrel=1e-13)
    assert math.isclose(alpha_t * h * (phi_1 * x0 + phi_2 * h * dx0), alpha_t * quad, rel_tol=1e-12)


@given(alpha=floats(1e-3, 1.0), sigma=floats(1e-3, 80.0), kind=sampled_from(["eps", "x0", "score", "v"]))
def test_conversions_round_trip_for_any_affine_coefficients(alpha, sigma, kind):
    a, s = torch.tensor([alpha], dtype=F64), torch.tensor([sigma], dtype=F64)
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 1, 3, 4, dtype=F64, generator=gen)
    x = bcast(a, x0) * x0 + bcast(s, x0) * eps
    truth = {"eps": eps, "x0": x0, "score": -eps / sigma, "v": alpha * eps - sigma * x0}
    for dst in truth:
        got = conversions.convert(truth[kind], kind, dst, x, a, s)
        torch.testing.assert_close(got, truth[dst], rtol=1e-9, atol=1e-9 * (1 + sigma / alpha))


def test_conversions_cast_float64_coefficients_to_the_data_dtype():
    x = torch.randn(3, 2)
    out = conversions.x0_from_eps(x, x, torch.tensor([0.5], dtype=F64), torch.tensor([0.2], dtype=F64))
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"unknown prediction 'flow'; choose one of \['eps', 'x0', 'score', 'v'\]"):
        conversions.to_eps(x, "flow", x, torch.ones(1), torch.ones(1))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: check_bool("flag", 1), r"flag must be True or False, got 1"),
        (lambda: check_choice("order", True, (1, 2)), r"order must be one of \[1, 2\], got True"),
        (lambda: check_choice("order", 2.0, (1, 2)), r"order must be one of \[1, 2\], got 2\.0"),
        (lambda: check_name("grid", "cubic", ["a", "b"]), r"unknown grid 'cubic'; choose one of \['a', 'b'\]"),
        (lambda: check_int("steps", 0, 1), r"steps must be an integer >= 1, got 0"),
        (lambda: check_int("steps", 2.0, 1), r"steps must be an integer >= 1, got 2.0"),
        (lambda: check_int("k", 9, 1, 4), r"k must be an integer in \[1, 4\], got 9"),
        (lambda: check_number("eta", 1.5, 0, 1), r"eta must be a number in \[0, 1\], got 1.5"),
        (lambda: check_number("r1", 0.0, 0, 1, low_open=True), r"r1 must be a number in \(0, 1\], got 0.0"),
        (lambda: check_number("snr", math.inf, 0, low_open=True), r"snr must be a finite number > 0, got inf"),
        (lambda: check_number("lr", True, 0), r"lr must be a finite number >= 0, got True"),
    ],
)
def test_validators_name_the_value_and_what_is_valid(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_validators_return_what_they_accept():
    assert check_number("x", 2, 0) == 2.0 and isinstance(check_number("x", 2, 0), float)
    assert check_int("n", 3, 1) == 3 and check_choice("o", 2, (1, 2)) == 2 and check_bool("b", False) is False


def test_importing_the_package_loads_no_solver_and_no_torchdiffeq():
    code = """
import json, sys
import solvers, solvers.conversions, solvers.coefficients, solvers.validate
loaded = sorted(m for m in sys.modules if m.startswith(("solvers.", "torchdiffeq", "torchsde", "scoresde")))
solvers.get("ddim")
print(json.dumps([loaded, sorted(m for m in sys.modules if m.startswith("solvers."))]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = json.loads(out)
    assert before == ["solvers.base", "solvers.coefficients", "solvers.conversions", "solvers.grid_fit",
                      "solvers.grids", "solvers.protocol", "solvers.registry", "solvers.validate"], before
    assert set(after) - set(before) == {"solvers.ddim"}
