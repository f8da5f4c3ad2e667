"""Fitted grids stored in model files (scoresde.fitted_grids): the lookup `sample` makes, the metadata round trip,
old files, the CLI; and solver="auto" in inpaint / colorize."""

import json

import pytest
import torch
from safetensors.torch import save_file

import solvers
from scoresde import AnalyticModel, Gaussian, VPSDE, sample
from scoresde.controllable import colorize, inpaint
from scoresde.cli import main
from scoresde.files import DIGEST_KEY, read_safetensors, write_safetensors
from scoresde.fitted_grids import META_KEY, FittedGrid, find, store_fitted_grids
from scoresde.training.checkpoints import ASSETS, DEFAULT_MODELS, PRETRAINED_FORMAT, default_model, load_pretrained

VP_FILE = ASSETS / DEFAULT_MODELS["vp"]


def analytic(grids=()):
    """A 2-d Gaussian on VP (float64) carrying `grids` as its fitted grids."""
    model = AnalyticModel(Gaussian(torch.zeros(2, dtype=torch.float64), 0.5), VPSDE())
    model.fitted_grids = tuple(grids)
    return model


def entry(solver, steps, sde=None, **options) -> FittedGrid:
    """A stored grid for solver(**options) on `steps` steps: uniform t from T to t_eps, pushed towards T
    (so that it differs from every named grid)."""
    sde = sde or VPSDE()
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64) ** 1.5
    ts = sde.T + u * (sde.t_eps - sde.T)
    return FittedGrid(solver, solvers.get(solver, **options).options(), steps, tuple(ts.tolist()), {"note": "test"})


X_T = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_a_matching_solver_and_steps_walk_the_fitted_grid():
    stored = entry("unipc", 6, order=2)
    model = analytic([entry("unipc", 6, order=3), stored])
    s = sample(model, solver="unipc", order=2, steps=6, x_T=X_T)
    assert s.settings["grid"] == "fitted" and s.settings["fitted_grid"] == 1
    assert s.settings["ts"] == list(stored.ts) and torch.equal(s.ts, stored.grid())
    same = sample(model, solver="unipc", order=2, grid=stored.grid(), x_T=X_T)  # the grid given by hand
    assert torch.equal(s.x, same.x) and same.settings["grid"] == "custom"


@pytest.mark.parametrize("kwargs", [
    {"solver": "unipc", "order": 2, "steps": 7},  # other steps
    {"solver": "unipc", "order": 2, "steps": 6, "prediction": "eps"},  # other options
    {"solver": "dpm_solver++", "order": 2, "steps": 6},  # other solver
    {"solver": "unipc", "order": 2, "steps": 6, "t_end": 0.01},  # other ends
])
def test_a_mismatch_falls_back_to_the_named_grid(kwargs):
    s = sample(analytic([entry("unipc", 6, order=2)]), x_T=X_T, **kwargs)
    built = solvers.get(kwargs["solver"], **{k: v for k, v in kwargs.items() if k in ("order", "prediction")})
    assert s.settings["grid"] == built.default_grid and "fitted_grid" not in s.settings


@pytest.mark.parametrize("grid", ["uniform_t", "tensor"])
def test_an_explicit_grid_overrides_the_fitted_one(grid):
    stored = entry("unipc", 6, order=2)
    given = torch.linspace(1.0, 1e-3, 7, dtype=torch.float64) if grid == "tensor" else grid
    kwargs = {} if grid == "tensor" else {"steps": 6}
    s = sample(analytic([stored]), solver="unipc", order=2, grid=given, x_T=X_T, **kwargs)
    assert s.settings["grid"] == ("custom" if grid == "tensor" else grid) and "fitted_grid" not in s.settings
    assert not torch.equal(s.ts, stored.grid())


def test_auto_uses_the_fitted_grid_of_its_resolved_configuration():
    sde = VPSDE()
    rec = solvers.recommend(sde, 8)
    model = analytic([entry(rec.solver, 8, **rec.options)])
    s = sample(model, solver="auto", steps=8, x_T=X_T)
    assert s.settings["auto"] and s.settings["grid"] == "fitted" and s.settings["fitted_grid"] == 0
    assert sample(model, solver="auto", steps=10, x_T=X_T).settings["grid"] == solvers.recommend(sde, 10).grid


@pytest.mark.parametrize("scale", [None, 1.0, 3.0, 0.5])
def test_the_conditional_model_walks_its_fitted_grid_only_at_the_fitted_guidance_scale(scale):
    """The shipped conditional VP model's grids were fitted on conditional predictions (scale 1): a run guided at
    another scale walks the recommended grid, and its settings name the entry passed over and why."""
    model = default_model("vp", conditional=True)
    rec = solvers.recommend(model.sde, 8)
    index = next(i for i, g in enumerate(model.fitted_grids) if g.steps == 8)
    s = sample(model, y=torch.tensor([3, 7]), guidance_scale=scale, solver="auto", steps=8, seed=0)
    assert s.settings["guidance"]["scale"] == (1.0 if scale is None else scale)
    if scale in (None, 1.0):
        assert s.settings["grid"] == "fitted" and s.settings["fitted_grid"] == index
        assert torch.equal(s.ts, model.fitted_grids[index].grid())
        assert "fitted_grid_unused" not in s.settings
        return
    assert s.settings["grid"] == rec.grid and "fitted_grid" not in s.settings
    assert s.settings["fitted_grid_unused"]["index"] == index
    assert f"guidance_scale {scale:g}" in s.settings["fitted_grid_unused"]["reason"]
    named = sample(model, y=torch.tensor([3, 7]), guidance_scale=scale, solver=rec.solver, grid=rec.grid, steps=8,
                   seed=0, **rec.options)
    assert torch.equal(s.ts, named.ts) and torch.equal(s.x, named.x)


def test_default_steps_match_and_adaptive_solvers_never_do():
    unipc = solvers.get("unipc")
    model = analytic([entry("unipc", unipc.default_steps)])
    assert find(model, unipc, None)[0] == 0
    assert find(model, solvers.get("dpm_solver_adaptive"), None) is None
    assert find(analytic(), unipc, None) is None  # no grids
    assert find(object(), unipc, None) is None  # a model without the attribute


# --- model files ----------------------------------------------------------------------------------

def _copy_without_grids(tmp_path, digest: bool):
    """The shipped VP model file with no 'fitted_grids' entry (as written before them), with or without a digest."""
    tensors, meta = read_safetensors(VP_FILE, fmt=PRETRAINED_FORMAT, what="model")
    meta.pop(META_KEY, None)
    meta.pop(DIGEST_KEY, None)
    path = tmp_path / ("digest.safetensors" if digest else "plain.safetensors")
    if digest:
        write_safetensors(path, tensors, meta)
    else:
        save_file(tensors, str(path), metadata=meta)
    return path, tensors


@pytest.mark.parametrize("digest", [False, True])
def test_grids_round_trip_through_a_model_file_with_the_tensors_untouched(tmp_path, digest):
    path, tensors = _copy_without_grids(tmp_path, digest)
    assert load_pretrained(path).fitted_grids == ()  # an old file loads, with no grids
    sde = load_pretrained(path).sde
    grids = [entry("unipc", 6, sde, order=2), entry("ipndm", 5, sde, order=3)]
    store_fitted_grids(path, grids)
    model = load_pretrained(path)  # checks the digest when there is one
    assert model.fitted_grids == tuple(grids)
    after, meta = read_safetensors(path, fmt=PRETRAINED_FORMAT, what="model")
    assert (DIGEST_KEY in meta) == digest
    assert after.keys() == tensors.keys()
    for k, v in tensors.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k].view(torch.uint8), v.view(torch.uint8))
    assert sample(model, solver="unipc", order=2, steps=6, n=2, seed=0).settings["grid"] == "fitted"


@pytest.mark.parametrize("bad, match", [
    (lambda e: {**e, "ts": e["ts"][::-1]}, "strictly decreasing"),
    (lambda e: {**e, "ts": e["ts"][:-1]}, "steps \\+ 1"),
    (lambda e: {**e, "steps": 0}, "'steps' must be an integer"),
    (lambda e: {**e, "extra": 1}, "exactly the keys"),
    (lambda e: {**e, "ts": [*e["ts"][:-1], float("nan")]}, "finite"),
])
def test_bad_stored_grids_are_refused_naming_the_entry(tmp_path, bad, match):
    path, _ = _copy_without_grids(tmp_path, False)
    tensors, meta = read_safetensors(path, fmt=PRETRAINED_FORMAT, what="model")
    meta[META_KEY] = json.dumps([bad(entry("unipc", 6, order=2).to_dict())])
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match=f"'{META_KEY}' entry 0.*{match}"):
        load_pretrained(path)


def test_the_cli_sample_shows_the_fitted_grid(tmp_path, capsys):
    path, _ = _copy_without_grids(tmp_path, False)
    rec = solvers.recommend(VPSDE(), 4)
    store_fitted_grids(path, [entry(rec.solver, 4, **rec.options)])
    code = main(["sample", "--model", str(path), "--solver", "auto", "--steps", "4", "--n", "2",
                 "--out", str(tmp_path / "s.png"), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert '"grid": "fitted"' in printed and '"fitted_grid": 0' in printed


# --- inpaint / colorize with solver="auto" --------------------------------------------------------

def test_inpaint_and_colorize_take_auto_as_its_recommended_configuration():
    model = AnalyticModel(Gaussian(torch.zeros(3, 2, 2, dtype=torch.float64), 0.5), VPSDE())
    known = torch.randn(2, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(3, 2, 2, dtype=torch.bool)
    mask[0] = True
    rec = solvers.recommend(model.sde, 8)
    auto = inpaint(model, known, mask, solver="auto", steps=8, seed=0)
    named = inpaint(model, known, mask, solver=rec.solver, steps=8, grid=rec.grid, seed=0, **rec.options)
    assert auto.settings["auto"] and (auto.settings["solver"], auto.settings["grid"]) == (rec.solver, rec.grid)
    assert torch.equal(auto.x, named.x) and auto.nfe == named.nfe == 8
    gray = known[:, :1]
    col = colorize(model, gray, solver="auto", steps=5, seed=0)
    assert col.settings["auto"] and col.settings["solver"] == solvers.recommend(model.sde, 5).solver
    with pytest.raises(ValueError, match="chooses the grid itself"):
        inpaint(model, known, mask, solver="auto", grid="uniform_t")
