"""The base class's loop, seen from outside: hooks, callbacks, NFE, options as dataclass fields.

Every solver, on the local VP Gaussian (tests/solvers/gaussian.py), float64."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import solvers
from solvers import grids

from .gaussian import gaussian

F64 = torch.float64
# every built-in solver with options that make it run here (ddpm_learned needs a learned variance)
SPECS = [
    (name, {"method": "rk4"} if name == "ode" else {})
    for name in solvers.names()
    if name != "ddpm_learned"
] + [("ode", {}), ("pc", {"n_corrector": 2}), ("heun", {"S_churn": 5.0})]


def start(model, n=5, seed=0):
    return model.sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("name, opts", SPECS, ids=[f"{n}{o}" for n, o in SPECS])
def test_identity_hook_changes_nothing_and_runs_at_every_grid_time(name, opts):
    """An identity hook gives bitwise the samples of no hook (adaptive torchdiffeq methods integrate
    interval by interval when hooked, so theirs agree to the tolerance); it runs at ts[0] and at every
    later grid time (more than once per time for solvers that evaluate again at a step's end), never
    elsewhere."""
    model = gaussian("vp")
    x, ts = start(model), grids.uniform_lambda(model.sde, 12)
    solver = solvers.get(name, **opts)
    plain = solver(model, x, ts, generator=torch.Generator().manual_seed(1))
    times = []

    def hook(x, t):
        times.append(float(t))
        return x

    hooked = solver(model, x, ts, generator=torch.Generator().manual_seed(1), hook=hook)
    if name == "ode" and "method" not in opts:  # adaptive dopri5: with a hook it restarts at every grid time
        torch.testing.assert_close(plain.x, hooked.x, rtol=1e-4, atol=1e-4)
    else:
        assert torch.equal(plain.x, hooked.x) and plain.nfe == hooked.nfe
    assert times[0] == float(ts[0])
    grid = set(ts.tolist())
    if name == "dpm_solver_adaptive":  # its controller chooses the times; the last is ts[-1]
        assert times[-1] == float(ts[-1])
    else:
        assert set(times) == grid, sorted(grid - set(times))


@pytest.mark.parametrize("name, opts", SPECS, ids=[f"{n}{o}" for n, o in SPECS])
def test_callback_sees_every_step_and_the_running_nfe(name, opts):
    model = gaussian("ve")
    x, ts = start(model), grids.uniform_lambda(model.sde, 12)
    seen = []
    sol = solvers.get(name, **opts)(model, x, ts, generator=torch.Generator().manual_seed(1), callback=seen.append)
    assert seen and seen[-1].nfe == sol.nfe and torch.equal(seen[-1].x, sol.x)
    assert [s.nfe for s in seen] == sorted(s.nfe for s in seen)
    if solvers.get(name, **opts).nfe_per_step > 0 and name != "ode" or opts.get("method") == "rk4":
        assert [s.i for s in seen] == list(range(12))
        torch.testing.assert_close(torch.stack([s.t for s in seen]), ts[1:])


@pytest.mark.parametrize("name, opts", SPECS, ids=[f"{n}{o}" for n, o in SPECS])
def test_options_are_the_dataclass_fields(name, opts):
    solver = solvers.get(name, **opts)
    assert dataclasses.is_dataclass(solver)
    assert solver.options() == {f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)}
    assert solvers.get(name, **solver.options()) == solver
    with pytest.raises(dataclasses.FrozenInstanceError):
        solver.denoise_final = True


def test_denoise_final_adds_one_evaluation():
    model = gaussian("vp")
    x, ts = start(model), grids.uniform_lambda(model.sde, 10)
    plain, denoised = solvers.get("dpm_solver++")(model, x, ts), solvers.get("dpm_solver++", denoise_final=True)(model, x, ts)
    assert denoised.nfe == plain.nfe + 1
    torch.testing.assert_close(denoised.x, model.x0(plain.x, ts[-1:].expand(5)))


def test_a_hook_that_changes_x_is_seen_by_the_next_evaluation():
    """Thresholding as a hook: DDIM's every evaluation sees clamped states."""
    model = gaussian("vp")
    x, ts = 3 * start(model), grids.uniform_t(model.sde, 6)
    seen = []

    class Spy:
        sde = model.sde

        def eps(self, x, t):
            seen.append(x.abs().max())
            return model.eps(x, t)

    out = solvers.get("ddim")(Spy(), x, ts, hook=lambda x, t: x.clamp(-1, 1)).x
    assert len(seen) == 6 and max(seen) <= 1 and out.abs().max() <= 1


def test_a_solver_written_as_an_integrate_override_still_runs():
    """0.1-style custom solvers override integrate(model, x, ts, *, generator, callback)."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Legacy(solvers.Solver):
        name = "legacy"

        def integrate(self, model, x, ts, *, generator, callback):
            return x + model.x0(x, ts[:1].expand(x.shape[0]))

    model = gaussian("vp")
    x = start(model)
    sol = Legacy()(model, x, grids.uniform_t(model.sde, 3))
    assert sol.nfe == 1 and torch.allclose(sol.x, x + model.x0(x, torch.ones(5, dtype=F64)))


def test_deprecated_names_warn_and_resolve():
    with pytest.warns(DeprecationWarning, match="use solvers.Solver"):
        assert solvers.Sampler is solvers.Solver
    with pytest.warns(DeprecationWarning, match="use solvers.SDE"):
        assert solvers.Process is solvers.SDE


def test_registering_one_name_from_many_threads_keeps_exactly_one():
    """register() checks and inserts under a lock: of 16 threads racing for one name, one wins and
    15 are refused (none silently overwrites another)."""
    import threading

    won, refused = [], []
    barrier = threading.Barrier(16)

    def register(i):
        barrier.wait()
        try:
            solvers.register("race_test", lambda i=i: solvers.get("ddim"))
            won.append(i)
        except ValueError:
            refused.append(i)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        assert len(won) == 1 and len(refused) == 15
    finally:
        solvers.unregister("race_test")
