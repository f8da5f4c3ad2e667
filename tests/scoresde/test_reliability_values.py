"""Issue 17, reliability of values: no silent NaN, bad input refused with a ValueError saying what is valid."""

import pytest
import torch
from torch import Tensor

import scoresde
import solvers
from scoresde import VPSDE, AnalyticModel, Gaussian, SubVPSDE
from solvers.learned_variance import learned_variance_update

GRIDS_TO_ZERO = ["uniform_t", "quadratic_t", "karras"]  # uniform_lambda refuses t_end = 0 (lambda = inf)
EXPONENTIAL = {  # id -> (solver, options); each step ending at sigma = 0 must return alpha_t x0_s
    "dpm_solver": ("dpm_solver", {}), "dpm_solver_1": ("dpm_solver", {"order": 1}),
    "dpm_solver_2": ("dpm_solver", {"order": 2}), "dpm_solver++": ("dpm_solver++", {}),
    "dpm_solver++_3m": ("dpm_solver++", {"order": 3}), "dpm_solver++_2s": ("dpm_solver++", {"solver_type": "singlestep"}),
    "dpm_solver++_3s": ("dpm_solver++", {"solver_type": "singlestep", "order": 3}),
    "unipc": ("unipc", {}), "unipc_eps": ("unipc", {"prediction": "eps"}),
    "unipc_final_corrector": ("unipc", {"final_corrector": True}),
}


def _model(sde=None):
    return AnalyticModel(Gaussian(torch.zeros(2, dtype=torch.float64)), sde or VPSDE())


@pytest.mark.parametrize("grid", GRIDS_TO_ZERO)
@pytest.mark.parametrize("name", sorted(EXPONENTIAL))
@pytest.mark.parametrize("sde", [VPSDE, SubVPSDE])
@pytest.mark.parametrize("steps", [5, 12])  # 12: the last step at full order (no lower_order_final)
def test_exponential_integrators_reach_t0_with_the_exact_limit(name, grid, sde, steps):
    steps_seen = []
    solver = solvers.get(EXPONENTIAL[name][0], **EXPONENTIAL[name][1])
    res = scoresde.sample(
        _model(sde()), solver=solver, grid=grid, t_end=0.0, steps=steps, n=4, shape=(2,), seed=0,
        dtype=torch.float64, callback=steps_seen.append,
    )
    assert torch.isfinite(res.x).all()
    last = steps_seen[-1]
    # alpha(0) = 1: the last step returns the data prediction at its start
    torch.testing.assert_close(res.x, last.x0)


@pytest.mark.parametrize("grid", GRIDS_TO_ZERO)
def test_every_solver_is_finite_at_t_end_0(grid):
    model = _model()
    for name in solvers.names():
        if name == "ddpm_learned":
            continue  # needs eps_and_variance: test_ddpm_learned_v1_at_t0_is_finite
        grid_kw = {} if solvers.get(name).grid_ends_only else {"grid": grid, "steps": 5}  # adaptive: ends only
        res = scoresde.sample(model, solver=name, t_end=0.0, n=4, shape=(2,), seed=0, dtype=torch.float64, **grid_kw)
        assert torch.isfinite(res.x).all(), (name, grid)


def test_subvp_t_of_lambda_reaches_t0_at_infinite_log_snr():
    sde = SubVPSDE()
    lam = torch.tensor([float("inf"), 8.0, 1.0, 0.0, -1.0, -4.0], dtype=torch.float64)
    t = sde.t_of_lambda(lam)
    assert t[0] == 0.0
    torch.testing.assert_close(sde.lambda_(t[1:]), lam[1:])


def test_uniform_lambda_refuses_t_end_0_saying_why():
    with pytest.raises(ValueError, match="finite log-SNR"):
        solvers.grids.uniform_lambda(VPSDE(), 5, t_end=0.0)


def test_ddpm_learned_v1_at_t0_is_finite():
    """v = 1 (Sigma = beta) on a step to sigma_t = 0: log beta_tilde = -inf must not give 0 * -inf."""
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps, z = torch.zeros_like(x), torch.ones_like(x)
    one = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    alpha_s, sigma_s, alpha_t, sigma_t, h = one(0.6), one(0.8), one(1.0), one(0.0), one(float("inf"))
    for v, std in ((1.0, 0.8), (0.0, 0.0), (0.5, 0.0)):  # beta = sigma_s^2 (1 - e^{-2h}) = sigma_s^2; beta_tilde = 0
        x_t, x0 = learned_variance_update(x, eps, torch.full_like(x, v), alpha_s, sigma_s, alpha_t, sigma_t, h, z)
        torch.testing.assert_close(x_t, x0 + std)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_sample_refuses_a_non_finite_x_T(bad):
    x_T = torch.zeros(4, 2, dtype=torch.float64)
    x_T[1, 0] = bad
    with pytest.raises(ValueError, match="x_T contains NaN or infinite values"):
        scoresde.sample(_model(), solver="ddim", steps=3, x_T=x_T)


def test_sample_refuses_a_non_float_x_T():
    with pytest.raises(ValueError, match="x_T must be a float tensor"):
        scoresde.sample(_model(), solver="ddim", steps=3, x_T=torch.zeros(4, 2, dtype=torch.long))


def test_sample_dtype_follows_x_T_or_casts_it_when_given():
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))  # float32
    model = _model()
    assert scoresde.sample(model, solver="ddim", steps=3, x_T=x_T).x.dtype == torch.float32
    res = scoresde.sample(model, solver="ddim", steps=3, x_T=x_T, dtype=torch.float64)
    assert res.x.dtype == torch.float64 and res.settings["dtype"] == "float64"
    assert scoresde.sample(model, solver="ddim", steps=3, x_T=x_T.double()).x.dtype == torch.float64
    assert scoresde.sample(model, solver="ddim", steps=3, n=2, shape=(2,), seed=0).x.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be None or a floating torch.dtype"):
        scoresde.sample(model, solver="ddim", steps=3, x_T=x_T, dtype=torch.int64)


@pytest.mark.parametrize("solver, options", [("ode", {}), ("ode", {"method": "bosh3"}), ("dpm_solver_adaptive", {})])
def test_adaptive_solvers_refuse_steps_and_grid_names_and_record_the_ends(solver, options):
    model = _model()
    for bad in ({"steps": 10}, {"grid": "uniform_t"}, {"steps": 5, "grid": "karras"}):
        with pytest.raises(ValueError, match="uses only the grid's ends t_start and t_end; omit steps and grid"):
            scoresde.sample(model, solver=solver, n=2, shape=(2,), seed=0, **bad, **options)
    res = scoresde.sample(model, solver=solver, n=2, shape=(2,), seed=0, t_start=0.9, t_end=0.01, **options)
    assert res.settings["grid"] == "ends" and res.settings["steps"] is None
    assert (res.settings["t_start"], res.settings["t_end"]) == (0.9, 0.01)
    assert torch.isfinite(res.x).all()


def test_fixed_grid_ode_methods_still_take_steps():
    res = scoresde.sample(_model(), solver="ode", method="rk4", steps=4, n=2, shape=(2,), seed=0)
    assert res.settings["steps"] == 4 and res.settings["grid"] == "uniform_t" and res.ts.shape == (5,)


@pytest.mark.parametrize("levels", [1, 0, -3, float("nan"), 2.5, True, "256"])
def test_to_model_input_refuses_levels_that_are_not_integers_of_at_least_2(levels):
    from scoresde.data import to_model_input

    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
        to_model_input(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), levels)


@pytest.mark.parametrize("bad", [17, 255, -1])
def test_to_model_input_refuses_pixel_values_outside_the_levels(bad):
    from scoresde.data import to_model_input

    images = torch.zeros(2, 1, 2, 2, dtype=torch.int64)
    images[1, 0, 1, 1] = bad
    with pytest.raises(ValueError, match=r"integer levels in \[0, levels\) = \[0, 17\)"):
        to_model_input(images, 17)
    with pytest.raises(ValueError, match="non-integer"):
        to_model_input(torch.full((1, 1, 2, 2), 0.5), 17)


def test_to_model_input_maps_the_levels_onto_minus_one_to_one():
    from scoresde.data import to_model_input

    x = to_model_input(torch.tensor([0, 8, 16], dtype=torch.uint8).reshape(1, 1, 1, 3), 17, dtype=torch.float64)
    torch.testing.assert_close(x.flatten(), torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))


def test_training_seeds_0_and_2048_draw_different_step_noise():
    from scoresde.training.ranks import seed_generator, step_seed

    def first_step_noise(seed, stream=0, rank=0, step=0):
        gen = seed_generator(torch.Generator(), step_seed(seed, rank, step, stream))
        return torch.randn(8, generator=gen)

    # CPU generators keep only 32 bits of a seed: seed, rank and stream must still reach them
    for a, b in [((0,), (2048,)), ((0,), (1,)), ((0, 0), (0, 1)), ((0, 0, 0), (0, 0, 1)), ((7,), (7 + 2048,))]:
        assert not torch.equal(first_step_noise(*a), first_step_noise(*b)), (a, b)
    torch.testing.assert_close(first_step_noise(3), first_step_noise(3), rtol=0, atol=0)
    # the 64-bit values (what accelerator generators take) are those of before for seeds below 2048
    assert step_seed(5, 3, 17, 1) == (((5 * 1024 + 3) * 4 + 1) << 40) + 17
    seen = {step_seed(seed, rank, step, stream) for seed in (0, 1, 2047, 2048, 4095)
            for rank in (0, 1023) for step in (0, 1, 2**40 - 1) for stream in range(4)}
    assert len(seen) == 5 * 2 * 3 * 4


def test_train_config_refuses_seeds_that_would_alias():
    from scoresde.training.config import MAX_SEED, TrainConfig

    TrainConfig(seed=MAX_SEED)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 4095\]"):
        TrainConfig(seed=MAX_SEED + 1)


@pytest.mark.parametrize("solver", ["ode", "dpm_solver_adaptive"])
def test_adaptive_samplers_depend_on_the_batch_even_with_per_sample_seeds(solver):
    """Documented in sample's docstring and docs/likelihood.md section 5: the step sequence is chosen for
    the whole batch, so per-sample seeds give batch-independence only one sample per call."""
    from scoresde import GaussianMixture

    f64 = dict(dtype=torch.float64)
    data = GaussianMixture(torch.tensor([0.5, 0.5], **f64), torch.tensor([[-2.0, 0.0], [2.0, 1.0]], **f64),
                           torch.tensor([0.3, 0.5], **f64))
    model = AnalyticModel(data, VPSDE())
    kw = dict(solver=solver, shape=(2,), dtype=torch.float64)
    small = scoresde.sample(model, n=4, seed=list(range(4)), **kw).x
    large = scoresde.sample(model, n=64, seed=list(range(64)), **kw).x
    gap = float((small - large[:4]).abs().max())
    assert 0 < gap < 0.1  # measured on this mixture: ode 7e-5, dpm_solver_adaptive 6e-3
    alone = [scoresde.sample(model, n=1, seed=[i], **kw).x for i in range(2)]
    again = scoresde.sample(model, n=1, seed=[1], **kw).x
    torch.testing.assert_close(alone[1], again, rtol=0, atol=0)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), scoresde.VESDE()])
def test_t_of_lambda_refuses_log_snrs_outside_lambda_T_to_lambda_0(sde):
    ends = sde.lambda_(torch.tensor([sde.T, 0.0], dtype=torch.float64))
    torch.testing.assert_close(sde.t_of_lambda(ends[:1]), torch.tensor([sde.T], dtype=torch.float64))
    for bad in (-100.0, float(ends[0]) - 0.01) + ((float(ends[1]) + 0.01,) if torch.isfinite(ends[1]) else ()):
        with pytest.raises(ValueError, match=r"lam must lie in \[lambda\(T\), lambda\(0\)\]"):
            sde.t_of_lambda(torch.tensor([bad], dtype=torch.float64))


def test_bits_per_dim_bounds_levels():
    from scoresde.likelihood import bits_per_dim

    x = torch.full((1, 2), 0.123456, dtype=torch.float64)  # on no grid of a sensible number of levels
    with pytest.raises(ValueError, match="levels must be at most 65536"):
        bits_per_dim(_model(), x, levels=2**40)


@pytest.mark.parametrize("bad", ["0.5", True, float("nan"), None.__class__])
def test_grids_and_sample_refuse_times_that_are_not_numbers(bad):
    with pytest.raises(ValueError, match="t_start must be a finite number"):
        solvers.grids.uniform_t(VPSDE(), 5, t_start=bad)
    with pytest.raises(ValueError, match="t_end must be a finite number"):
        solvers.grids.karras(VPSDE(), 5, t_end=bad)
    with pytest.raises(ValueError, match="t_start must be a finite number"):
        scoresde.sample(_model(), solver="ddim", steps=3, n=2, shape=(2,), seed=0, t_start=bad)


def test_karras_refuses_an_infinite_rho():
    with pytest.raises(ValueError, match="rho must be a finite number > 0"):
        solvers.grids.karras(VPSDE(), 5, rho=float("inf"))


class _NoNumClasses:
    """A conditional model that records no class count (only null_label tells it)."""

    def __init__(self, model):
        self.model, self.sde = model, model.sde

    def eps(self, x, t, y=None):
        return self.model.eps(x, t, y=y)

    def x0(self, x, t, y=None):
        return self.model.x0(x, t, y=y)

    def score(self, x, t, y=None):
        return self.model.score(x, t, y=y)

    def v(self, x, t, y=None):
        return self.model.v(x, t, y=y)


def _three_classes():
    from scoresde import ConditionalAnalyticModel, GaussianMixture

    f64 = dict(dtype=torch.float64)
    data = GaussianMixture(torch.tensor([0.2, 0.5, 0.3], **f64), torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], **f64),
                           torch.tensor([0.3, 0.5, 0.4], **f64))
    return ConditionalAnalyticModel(data, VPSDE())


@pytest.mark.parametrize("y", [4, 11, torch.tensor([0, 1, 7]), -1, torch.tensor([0, -2, 1])])
def test_sample_checks_labels_against_the_class_count(y):
    model = _three_classes()  # K = 3 classes, null label 3
    n = 3 if isinstance(y, Tensor) else 2
    with pytest.raises(ValueError, match=r"labels must (lie in 0\.\.2 \(the model's 3 classes\), or be 3 for no class|be >= 0)|y must be a label in \[0, "):
        scoresde.sample(model, solver="ddim", steps=3, n=n, shape=(2,), seed=0, y=y)
    with pytest.raises(ValueError, match=r"labels must (lie in 0\.\.2|be >= 0)|y must be a label in \[0, "):  # class count from null_label alone
        scoresde.sample(_NoNumClasses(model), solver="ddim", steps=3, n=n, shape=(2,), seed=0, y=y, null_label=3)
    res = scoresde.sample(model, solver="ddim", steps=3, n=3, shape=(2,), seed=0, y=torch.tensor([0, 2, 3]))
    assert torch.isfinite(res.x).all()


@pytest.mark.parametrize("method", ["dopri5", "explicit_adams"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ode_refuses_half_precision_where_step_control_underflows(method, dtype):
    """In float16, dopri5 met NaN times and explicit Adams returned inf on this mixture; now a dtype error."""
    mixture = scoresde.GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), torch.tensor([0.1, 0.2]))
    model = AnalyticModel(mixture, VPSDE())
    with pytest.raises(ValueError, match=rf"dtype torch.{str(dtype).removeprefix('torch.')} is too coarse for ode method '{method}'"):
        scoresde.sample(model, solver="ode", method=method, n=3, shape=(2,), seed=0, dtype=dtype)
    # a fixed-grid one-step method still runs in half precision
    res = scoresde.sample(model, solver="ode", method="rk4", steps=20, n=3, shape=(2,), seed=0, dtype=dtype)
    assert res.x.dtype == dtype and torch.isfinite(res.x).all()


@pytest.mark.parametrize("y", [2**70, -(2**70), -1])
def test_cfg_model_refuses_int_labels_outside_int64_naming_y(y):
    """CFGModel(model, 2**70, 1.0) raised torch's 'Overflow when unpacking long long'."""
    with pytest.raises(ValueError, match=r"^y: labels must be >= 0"):
        scoresde.CFGModel(_three_classes(), y, 1.0)
