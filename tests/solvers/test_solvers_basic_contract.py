"""Contract of the basic samplers (Euler–Maruyama, reverse diffusion, ancestral, PC, Langevin, ODE,
torchsde, DDIM, Heun): NFE bookkeeping, finiteness on every process for 1..10 steps, seeding and
per-sample generators, callbacks, dtype, option round trips and pinned error messages; on the two-component
Gaussian mixture of tests/solvers/gaussian.py under VP and VE (sub-VP and flow matching:
tests/scoresde/test_solvers_on_every_sde.py)."""

import math

import pytest
import torch

import solvers
from solvers import grids

from .gaussian import mixture

F64 = torch.float64
KINDS = ("vp", "ve")  # sub-VP and flow: tests/scoresde/test_solvers_on_every_sde.py

SPECS = [
    ("euler_maruyama", {}),
    ("reverse_diffusion", {}),
    ("ancestral", {}),
    ("pc", {}),
    ("pc", {"predictor": "euler_maruyama"}),
    ("pc", {"predictor": "ancestral", "n_corrector": 2}),
    ("pc", {"predictor": "none"}),
    ("pc", {"corrector": "none"}),
    ("pc", {"step_size": "batch_mean"}),
    ("langevin", {}),
    ("langevin", {"n_corrector": 3, "snr": 0.1}),
    ("ode", {}),
    ("ode", {"method": "bosh3", "rtol": 1e-3, "atol": 1e-3}),
    ("ode", {"method": "euler"}),
    ("ode", {"method": "rk4"}),
    ("ode", {"method": "explicit_adams"}),
    ("torchsde", {}),
    ("torchsde", {"method": "milstein"}),
    ("torchsde", {"method": "srk"}),
    ("ddim", {}),
    ("ddim", {"eta": 0.5}),
    ("heun", {}),
    ("heun", {"S_churn": 10.0, "S_min": 0.05, "S_max": 50.0, "S_noise": 1.003}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in SPECS]


class CallCounter:
    """Independent of solvers.protocol.CountedModel: counts every prediction call of a model."""

    def __init__(self, model):
        self.model, self.sde, self.calls = model, model.sde, 0

    def _count(self, fn, x, t):
        self.calls += 1
        return fn(x, t)

    def eps(self, x, t):
        return self._count(self.model.eps, x, t)

    def x0(self, x, t):
        return self._count(self.model.x0, x, t)

    def score(self, x, t):
        return self._count(self.model.score, x, t)

    def v(self, x, t):
        return self._count(self.model.v, x, t)


def prior(model, n=8, seed=0, dtype=F64):
    return model.sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def check_finite_and_nfe_for_1_to_10_steps(name, options, model):
    x_T = prior(model)
    sampler = solvers.get(name, **options)
    for steps in range(1, 11):
        counter = CallCounter(model)
        sol = sampler(counter, x_T, grids.uniform_t(model.sde, steps), generator=torch.Generator().manual_seed(1))
        assert sol.x.shape == x_T.shape and sol.x.dtype == F64
        assert bool(torch.isfinite(sol.x).all()), steps
        assert sol.nfe == counter.calls > 0
        if sampler.nfe_per_step > 0:
            assert sol.nfe == sampler.nfe_per_step * steps


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,options", SPECS, ids=IDS)
def test_finite_and_nfe_for_1_to_10_steps(name, options, kind):
    check_finite_and_nfe_for_1_to_10_steps(name, options, mixture(kind))


@pytest.mark.parametrize("name,options", SPECS, ids=IDS)
def test_denoise_final_adds_one_evaluation(name, options):
    model = mixture("vp")
    x_T = prior(model)
    ts = grids.uniform_t(model.sde, 4)
    plain = solvers.get(name, **options)(model, x_T, ts, generator=torch.Generator().manual_seed(1))
    counter = CallCounter(model)
    denoised = solvers.get(name, denoise_final=True, **options)(counter, x_T, ts, generator=torch.Generator().manual_seed(1))
    assert denoised.nfe == plain.nfe + 1 == counter.calls
    torch.testing.assert_close(denoised.x, model.x0(plain.x, ts[-1:].expand(8)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ("vp", "ve"))
@pytest.mark.parametrize("name,options", SPECS, ids=IDS)
def test_float32_stays_float32(name, options, kind):
    model = mixture(kind, dtype=torch.float32)
    x_T = prior(model, dtype=torch.float32)
    sol = solvers.get(name, **options)(model, x_T, grids.uniform_t(model.sde, 5), generator=torch.Generator().manual_seed(1))
    assert sol.x.dtype == torch.float32 and bool(torch.isfinite(sol.x).all())


@pytest.mark.parametrize("name,options", SPECS, ids=IDS)
def test_same_seed_same_samples(name, options):
    model = mixture("vp")
    x_T = prior(model)
    ts = grids.uniform_t(model.sde, 6)
    sampler = solvers.get(name, **options)
    a = sampler(model, x_T, ts, generator=torch.Generator().manual_seed(3)).x
    b = sampler(model, x_T, ts, generator=torch.Generator().manual_seed(3)).x
    c = sampler(model, x_T, ts, generator=torch.Generator().manual_seed(4)).x
    assert torch.equal(a, b)
    if sampler.stochastic:
        assert (a - c).abs().min() > 0  # every sample moved
    else:
        assert torch.equal(a, c)
        assert torch.equal(a, sampler(model, x_T, ts).x)


PER_SAMPLE = [(n, o) for n, o in SPECS if solvers.get(n, **o).stochastic and o.get("step_size") != "batch_mean"]


@pytest.mark.parametrize("name,options", PER_SAMPLE, ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in PER_SAMPLE])
def test_sample_does_not_depend_on_its_batch(name, options):
    model = mixture("vp")
    x_T = prior(model, n=5)
    ts = grids.uniform_t(model.sde, 6)
    sampler = solvers.get(name, **options)
    batch = sampler(model, x_T, ts, generator=[torch.Generator().manual_seed(10 + i) for i in range(5)]).x
    for j in (0, 3):
        alone = sampler(model, x_T[j : j + 1], ts, generator=[torch.Generator().manual_seed(10 + j)]).x
        torch.testing.assert_close(alone[0], batch[j], rtol=1e-12, atol=1e-12)


def test_batch_mean_step_size_couples_the_batch():
    model = mixture("vp")
    x_T = prior(model, n=5)
    ts = grids.uniform_t(model.sde, 6)
    sampler = solvers.get("pc", step_size="batch_mean")
    batch = sampler(model, x_T, ts, generator=[torch.Generator().manual_seed(10 + i) for i in range(5)]).x
    alone = sampler(model, x_T[:1], ts, generator=[torch.Generator().manual_seed(10)]).x
    assert not torch.allclose(alone[0], batch[0])


@pytest.mark.parametrize("name,options", SPECS, ids=IDS)
def test_callback_once_per_step(name, options):
    model = mixture("ve")
    x_T = prior(model)
    ts = grids.uniform_t(model.sde, 4)
    steps = []
    sol = solvers.get(name, **options)(model, x_T, ts, generator=torch.Generator().manual_seed(1), callback=steps.append)
    one_call = name == "ode" and options.get("method", "dopri5") not in ("euler", "midpoint", "heun2", "heun3", "rk4")
    assert [s.i for s in steps] == ([3] if one_call else [0, 1, 2, 3])
    assert all(float(s.t) == float(ts[s.i + 1]) for s in steps)
    assert [s.nfe for s in steps] == sorted(s.nfe for s in steps) and steps[-1].nfe == sol.nfe
    assert torch.equal(steps[-1].x, sol.x)
    if name in ("ancestral", "ddim", "heun"):
        assert all(s.x0 is not None and s.x0.shape == x_T.shape for s in steps)


@pytest.mark.parametrize("name,options", SPECS, ids=IDS)
def test_options_round_trip(name, options):
    sampler = solvers.get(name, **options)
    assert {k: sampler.options()[k] for k in options} == options
    assert solvers.get(name, **sampler.options()).options() == sampler.options()


def test_option_dependent_metadata():
    assert solvers.get("pc").nfe_per_step == 2
    assert solvers.get("pc", predictor="none", n_corrector=3).nfe_per_step == 3
    assert solvers.get("pc", corrector="none").nfe_per_step == 1
    assert solvers.get("langevin", n_corrector=4).nfe_per_step == 4
    assert (solvers.get("ode", method="rk4").order, solvers.get("ode", method="rk4").nfe_per_step) == (4, 4)
    assert solvers.get("ode").nfe_per_step == 0
    assert solvers.get("torchsde", method="srk").nfe_per_step == 4
    assert not solvers.get("ddim").stochastic and solvers.get("ddim", eta=0.1).stochastic
    assert not solvers.get("heun").stochastic and solvers.get("heun", S_churn=1.0).stochastic
    assert solvers.get("langevin").order == 0


def test_torchsde_milstein_equals_euler_for_additive_noise():
    model = mixture("ve")
    x_T = prior(model)
    ts = grids.uniform_t(model.sde, 6)
    e = solvers.get("torchsde", method="euler")(model, x_T, ts, generator=torch.Generator().manual_seed(2)).x
    m = solvers.get("torchsde", method="milstein")(model, x_T, ts, generator=torch.Generator().manual_seed(2)).x
    torch.testing.assert_close(m, e, rtol=1e-12, atol=1e-12)


def test_heun_churn_near_T_stays_inside_the_process():
    model = mixture("vp")
    x_T = prior(model)
    ts = grids.uniform_t(model.sde, 2)
    sol = solvers.get("heun", S_churn=100.0)(model, x_T, ts, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(sol.x).all()) and sol.nfe == 4


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("ddim", {"eta": 1.5}, r"eta must be a number in \[0, 1\], got 1.5"),
        ("ddim", {"eta": True}, r"eta must be a number in \[0, 1\]"),
        ("pc", {"predictor": "foo"}, r"unknown predictor 'foo'; choose one of \['ancestral', 'euler_maruyama', 'none', 'reverse_diffusion'\]"),
        ("pc", {"corrector": "ald"}, r"unknown corrector 'ald'; choose one of \['langevin', 'none'\]"),
        ("pc", {"predictor": "none", "corrector": "none"}, r"predictor and corrector cannot both be 'none'"),
        ("pc", {"snr": 0.0}, r"snr must be a finite number > 0, got 0.0"),
        ("langevin", {"snr": math.inf}, r"snr must be a finite number > 0"),
        ("pc", {"n_corrector": 0}, r"n_corrector must be an integer >= 1, got 0"),
        ("langevin", {"n_corrector": 1.5}, r"n_corrector must be an integer >= 1"),
        ("pc", {"step_size": "mean"}, r"unknown step_size 'mean'; choose one of \['per_sample', 'batch_mean'\]"),
        ("ode", {"method": "rk45"}, r"unknown method 'rk45'; choose one of \['adaptive_heun', 'bosh3', 'dopri5'"),
        ("ode", {"method": "scipy_solver"}, r"method 'scipy_solver' is not supported"),
        ("ode", {"method": "rk4", "rtol": 1e-3}, r"rtol and atol apply to the methods \['adaptive_heun', .*\], not to 'rk4'"),
        ("ode", {"method": "explicit_adams", "atol": 1e-3}, r"not to 'explicit_adams'"),
        ("ode", {"rtol": 0.0}, r"rtol must be a number in \(0, 1\), got 0.0"),
        ("torchsde", {"method": "heun"}, r"unknown method 'heun'; choose one of \['euler', 'milstein', 'srk'\]"),
        ("heun", {"S_churn": -1.0}, r"S_churn must be a finite number >= 0, got -1.0"),
        ("heun", {"S_noise": math.nan}, r"S_noise must be a finite number >= 0"),
        ("heun", {"S_min": 1.0, "S_max": 0.5}, r"S_max must be a number >= S_min=1.0"),
        ("euler_maruyama", {"eta": 0.0}, r"unknown option\(s\) \['eta'\] for solver 'euler_maruyama'"),
        ("ancestral", {"denoise_final": "yes"}, r"denoise_final must be True or False"),
    ],
)
def test_bad_options_raise(name, options, match):
    with pytest.raises(ValueError, match=match):
        solvers.get(name, **options)


def test_generator_list_of_wrong_length_raises():
    model = mixture("vp")
    x_T = prior(model, n=3)
    ts = grids.uniform_t(model.sde, 2)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    for name in ("euler_maruyama", "torchsde"):
        with pytest.raises(ValueError, match=r"got 2 generators for a batch of 3; pass one per sample"):
            solvers.get(name)(model, x_T, ts, generator=gens)


@pytest.mark.parametrize("name,options", SPECS, ids=IDS)
def test_vp_grid_down_to_time_zero(name, options):
    """ts[-1] = 0 (noise level 0 for VP): finite; Heun's last step is an Euler step (Karras Alg. 2)."""
    model = mixture("vp")
    x_T = prior(model)
    ts = torch.linspace(1.0, 0.0, 6, dtype=F64)
    sol = solvers.get(name, **options)(model, x_T, ts, generator=torch.Generator().manual_seed(1))
    assert bool(torch.isfinite(sol.x).all())
    if name == "heun":
        assert sol.nfe == 2 * 5 - 1
