"""The fitted grids the shipped digits models carry (benchmarks/fit_shipped_grids.py; scoresde.fitted_grids)."""

import pytest
import torch
from safetensors import safe_open

import solvers
from scoresde.files import DIGEST_KEY
from scoresde.training.checkpoints import ASSETS, CONDITIONAL_MODELS, DEFAULT_MODELS, load_pretrained

VP_FILE = ASSETS / DEFAULT_MODELS["vp"]
SHIPPED = [ASSETS / f for f in (*DEFAULT_MODELS.values(), *CONDITIONAL_MODELS.values())]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_models_carry_grids_for_their_recommended_solver(path):
    model = load_pretrained(path)
    sde = model.sde
    by_steps = {g.steps: g for g in model.fitted_grids}
    # grids are shipped for 5, 8, 10, 15, 20 steps where the fit beat the recommended grid on held-out states
    assert by_steps and set(by_steps) <= {5, 8, 10, 15, 20} and (path != VP_FILE or 10 in by_steps)
    for steps, g in by_steps.items():
        rec = solvers.recommend(sde, steps)
        assert (g.solver, g.options) == (rec.solver, solvers.get(rec.solver, **rec.options).options())
        ts, init = g.grid(), solvers.grids.make(rec.grid, sde, steps)
        assert ts[0] == init[0] and ts[-1] == init[-1]  # the recommended grid's ends, which are T and t_eps:
        assert abs(float(ts[0]) - sde.T) < 1e-12 and abs(float(ts[-1]) - sde.t_eps) < 1e-15
        assert bool(torch.all(ts[1:] < ts[:-1])) and bool(torch.all((ts[1:-1] > sde.t_eps) & (ts[1:-1] < sde.T)))
        assert not torch.equal(ts, init)  # fitted, not the initial grid
        assert g.fit["held_out"]["rms_ratio"] < 1.0
    with safe_open(str(path), framework="pt") as f:  # the shipped files stay without a digest, as before
        assert DIGEST_KEY not in f.metadata()


@pytest.mark.slow
def test_shipped_vp_fitted_10_step_grid_beats_the_recommended_grid_on_new_start_states():
    """16 prior draws of a seed that neither the fit (benchmarks/fit_shipped_grids.py) nor the evaluations use;
    reference: 100 steps of UniPC-3 on uniform log-SNR (the fit's held-out ratio is in docs/solvers.md)."""
    torch.set_num_threads(1)
    model = load_pretrained(VP_FILE)
    rec = solvers.recommend(model.sde, 10)
    solver = solvers.get(rec.solver, **rec.options)
    fitted = next(g for g in model.fitted_grids if g.steps == 10)
    x_T = model.sde.prior_sample((16, *model.image_shape), generator=torch.Generator().manual_seed(777_777))
    with torch.no_grad():
        ref = solvers.get("unipc", order=3)(model, x_T, solvers.grids.uniform_lambda(model.sde, 100)).x
        err = {name: (solver(model, x_T, ts).x - ref).pow(2).mean().sqrt()
               for name, ts in (("fitted", fitted.grid()), ("recommended", solvers.grids.make(rec.grid, model.sde, 10)))}
    assert err["fitted"] < err["recommended"]


