"""Consistency losses in the trainer (TrainConfig.loss "cd", "ct", "ect"): checks, teacher start, target
network, exact resume, model files that load as ConsistencyModel."""

from dataclasses import replace

import pytest
import torch

import scoresde
from scoresde.fewstep.consistency import ConsistencyModel
from scoresde.pretrained import export_model
from scoresde.train import TrainConfig, load_checkpoint, load_model, train
from scoresde.training import loop as train_loop
from scoresde.training.config import CONSISTENCY_DEFAULTS

from .helpers import resumed_equals_uninterrupted, trained_and_exported

TINY = dict(net_options={"ch": 8, "num_res_blocks": 1, "ch_mult": (1, 2), "attn_resolutions": (4,)},
            batch_size=16, lr=1e-3, warmup_steps=3, ema_decay=0.9, log_every=1, progress=False, device="cpu")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny digits diffusion model trained 4 steps and exported: (its file, its TrainConfig)."""
    config = TrainConfig(**TINY, steps=4, ckpt_every=4)
    return trained_and_exported(config, tmp_path_factory.mktemp("teacher")), config


@pytest.mark.parametrize("kw,match", [
    (dict(loss="cd"), "loss 'cd' needs teacher"),
    (dict(loss="ect"), "loss 'ect' tunes a pretrained diffusion model: give teacher or init_from"),
    (dict(loss="dsm", teacher="t.safetensors"), "teacher is for loss 'cd', 'ect', 'pd' or 'reflow'"),
    (dict(loss="dsm", distance="l2"), r"\['distance'\] apply to the consistency losses"),
    (dict(loss="dsm", target_decay=0.9), r"\['target_decay'\] apply"),
    (dict(loss="ct", distance="l1"), "unknown distance 'l1'; choose one of"),
    (dict(loss="ct", teacher_step="euler"), "unknown teacher_step 'euler'; choose one of"),
    (dict(loss="ct", target_decay=1.0), "target_decay"),
    (dict(loss="ct", boundary_width=0.0), "boundary_width"),
    (dict(loss="ct", cd_n=1), "cd_n"),
    (dict(loss="ct", conditional=True), r"does not support \['conditional'\]"),
    (dict(loss="ct", time_sampling="likelihood"), "time_sampling must stay 'uniform'"),
])
def test_bad_consistency_configs_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_defaults_per_loss():
    assert TrainConfig(loss="cd", teacher="t").consistency_options() == CONSISTENCY_DEFAULTS["cd"] == ("l2", 0.95)
    assert TrainConfig(loss="ct").consistency_options() == ("pseudo_huber", 0.0)
    assert TrainConfig(loss="ct", distance="l2", target_decay=0.5).consistency_options() == ("l2", 0.5)


def test_cd_starts_from_the_teacher_and_resumes_exactly(monkeypatch, tmp_path, teacher):
    """A 0-step CD run is the teacher's network as a denoiser-form consistency model; a killed and resumed CD
    run equals the uninterrupted one in its logged losses, net, EMA and target weights bit for bit."""
    path, tconfig = teacher
    base = replace(tconfig, loss="cd", teacher=path, cd_n=6, steps=0, out_dir=str(tmp_path / "zero"))
    res0 = train(base)
    t_model = load_model(path)
    for k, v in t_model.net.state_dict().items():
        assert torch.equal(res0.ema.state_dict()[k], v), k
    assert isinstance(res0.model, ConsistencyModel) and res0.model.net_prediction == "eps"
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t_high = torch.full((3,), 0.9)
    # at high noise the student is its teacher's denoiser up to the boundary blend (c_skip ~ w^2 / nu^2)
    torch.testing.assert_close(res0.model.x0(x, t_high), t_model.x0(x, t_high), atol=1e-3, rtol=1e-3)
    cd = replace(base, steps=6, ckpt_every=3, out_dir=str(tmp_path / "unused"))
    res, ref, out = resumed_equals_uninterrupted(monkeypatch, cd, tmp_path, "consistency_loss", train_loop)
    a, b = load_checkpoint(out / "checkpoint.safetensors"), load_checkpoint(tmp_path / "ref" / "checkpoint.safetensors")
    assert a.target and set(a.target) == set(a.net)
    for k in a.target:
        assert torch.equal(a.target[k], b.target[k]), k
    # the target is an EMA of the student (decay 0.95): neither the student nor the teacher after 6 steps
    assert any(not torch.equal(a.target[k], a.net[k]) for k in a.target)


def test_cd_model_files_load_as_consistency_models_and_sample_in_one_evaluation(tmp_path, teacher):
    path, tconfig = teacher
    run = tmp_path / "cd"
    train(replace(tconfig, loss="cd", teacher=path, cd_n=6, steps=2, ckpt_every=2, out_dir=str(run)))
    exported = export_model(run / "checkpoint.safetensors", tmp_path / "cd.safetensors")
    for file in (run / "checkpoint.safetensors", exported):
        model = load_model(file)
        assert isinstance(model, ConsistencyModel) and model.t_eps == model.sde.t_eps
        s = scoresde.sample(model, solver="consistency", steps=1, n=5, seed=0)
        assert s.nfe == 1 and s.x.shape == (5, 1, 8, 8) and bool(torch.isfinite(s.x).all())
        x = torch.randn(4, 1, 8, 8)
        assert torch.equal(model.consistency(x, torch.full((4,), model.t_eps)), x)  # the boundary condition


def test_ct_and_ect_train_without_a_target_network(tmp_path, teacher):
    path, tconfig = teacher
    for loss, kw in (("ct", {}), ("ect", {"teacher": path}), ("ect", {"init_from": path, "prediction": "v"})):
        out = tmp_path / f"{loss}_{len(kw)}_{sorted(kw)[0] if kw else ''}"
        res = train(replace(tconfig, loss=loss, steps=3, ckpt_every=3, out_dir=str(out), **kw))
        ckpt = load_checkpoint(out / "checkpoint.safetensors")
        assert ckpt.target == {} and res.loss is not None and res.loss == res.loss  # finite, logged
        assert isinstance(res.model, ConsistencyModel)


def test_a_teacher_of_another_network_is_refused_naming_the_difference(tmp_path, teacher):
    path, tconfig = teacher
    other = replace(tconfig, loss="cd", teacher=path, steps=1, out_dir=str(tmp_path / "x"),
                    net_options={**tconfig.net_options, "ch": 16})
    with pytest.raises(ValueError, match=r"differs from this run \(teacher -> run\) in ch: 8 -> 16"):
        train(other)
    with pytest.raises(ValueError, match="c_noise: 'log_noise' -> 't'"):
        train(replace(other, net_options=tconfig.net_options, c_noise="t"))
    with pytest.raises(FileNotFoundError, match="teacher: no model file"):
        train(replace(other, net_options=tconfig.net_options, teacher=str(tmp_path / "missing.safetensors")))
    # dropout changes no weight: a student without the teacher's dropout is accepted
    res = train(replace(other, net_options={**tconfig.net_options, "dropout": 0.0}))
    assert res.step == 1


def test_a_resumed_cd_run_without_its_target_is_refused(tmp_path, teacher):
    """A checkpoint of a consistency run missing its target tensors cannot resume silently with a fresh target."""
    from scoresde.files import read_safetensors, write_safetensors
    from scoresde.training.checkpoints import FORMAT

    path, tconfig = teacher
    cfg = replace(tconfig, loss="cd", teacher=path, cd_n=6, steps=2, ckpt_every=2, out_dir=str(tmp_path / "r"))
    train(cfg)
    file = tmp_path / "r" / "checkpoint.safetensors"
    tensors, meta = read_safetensors(file, fmt=FORMAT, what="checkpoint")
    write_safetensors(file, {k: v for k, v in tensors.items() if not k.startswith("target.")}, meta)
    with pytest.raises(ValueError, match="holds no target network"):
        train(replace(cfg, steps=4))


def test_shipped_model_kinds_are_checked_by_name():
    from scoresde.pretrained import MODEL_KINDS, default_model

    with pytest.raises(ValueError, match=r"unknown model kind 'lcm'; choose one of \['diffusion', 'cd', 'ect', 'latent'\]"):
        default_model("vp", kind="lcm")
    with pytest.raises(ValueError, match="no shipped 'cd' default model for sde 've'"):
        default_model("ve", kind="cd")
    with pytest.raises(ValueError, match="no class-conditional 'cd' model is shipped"):
        default_model("vp", kind="cd", conditional=True)
    assert MODEL_KINDS == ("diffusion", "cd", "ect", "latent")


def test_cli_kind_choices_are_the_shipped_kinds():
    """`scoresde sample --kind` lists its choices without importing torch (--help stays instant): they must be
    MODEL_KINDS."""
    from scoresde.cli import build_parser
    from scoresde.pretrained import MODEL_KINDS

    parser = build_parser("sample")
    sub = next(a for a in parser._actions if a.dest == "command")
    kind = next(a for a in sub.choices["sample"]._actions if a.dest == "kind")
    assert tuple(kind.choices) == MODEL_KINDS and kind.default == "diffusion"


def test_a_student_may_predict_otherwise_when_init_from_names_its_weights(tmp_path, teacher):
    """prediction "v" from an eps teacher: refused while the teacher's weights would start the student; with
    init_from (here the teacher's exported file itself, dropout aside) the run starts from those weights."""
    path, tconfig = teacher
    cfg = replace(tconfig, loss="cd", teacher=path, prediction="v", steps=0, out_dir=str(tmp_path / "v"),
                  net_options={**tconfig.net_options, "dropout": 0.0})
    with pytest.raises(ValueError, match="prediction: 'eps' -> 'v'.*or start from other weights with init_from"):
        train(cfg)
    res = train(replace(cfg, init_from=path))
    t_model = load_model(path)
    assert res.model.net_prediction == "v"
    for k, v in t_model.net.state_dict().items():
        assert torch.equal(res.net.state_dict()[k], v), k


@pytest.mark.parametrize("kind", sorted(__import__("scoresde.pretrained", fromlist=["x"]).FEW_STEP_MODELS))
def test_shipped_few_step_models_load_by_name_and_sample_in_one_evaluation(kind, tmp_path, capsys):
    """Each shipped few-step model: a file of at most 4 MB, a ConsistencyModel of the VP process whose one-step
    sample costs one evaluation, and `scoresde.sample(model)` and the CLI's --kind sample it with the consistency
    sampler by default."""
    from scoresde.cli import main
    from scoresde.pretrained import ASSETS, FEW_STEP_MODELS, default_model

    path = ASSETS / FEW_STEP_MODELS[kind]["vp"]
    assert path.is_file() and path.stat().st_size <= 4 * 2**20, path
    model = default_model("vp", kind=kind)
    assert isinstance(model, ConsistencyModel) and model.image_shape == (1, 8, 8)
    s = scoresde.sample(model, solver="consistency", steps=1, n=8, seed=0)
    assert s.nfe == 1 and float(s.x.abs().max()) < 3  # digits in about [-1, 1]
    own = scoresde.sample(model, n=8, seed=0)  # no solver: the model's own, one step by default
    assert own.settings["solver"] == "consistency" and own.nfe == 1 and torch.equal(own.x, s.x)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model.consistency(x, torch.full((2,), model.t_eps)), x)
    out = tmp_path / "x.png"
    assert main(["sample", "--kind", kind, "--n", "4", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "NFE 1," in printed and '"solver": "consistency"' in printed, printed


@pytest.mark.parametrize("kind", sorted(__import__("scoresde.pretrained", fromlist=["x"]).FEW_STEP_MODELS))
def test_shipped_few_step_models_walk_their_fitted_intermediate_times(kind):
    """A shipped few-step model stores intermediate times for 2-4 steps (benchmarks/fit_consistency_times.py),
    only those that beat the Karras grid on held-out samples (CD: all three; ECT: 2 and 3, its fitted 4-step grid
    lost); sample(steps=k) walks them by default, ending at the boundary time, and an explicit grid still wins."""
    from scoresde.pretrained import default_model

    model = default_model("vp", kind=kind)
    stored = {g.steps: g for g in model.fitted_grids if g.solver == "consistency"}
    assert sorted(stored) == {"cd": [2, 3, 4], "ect": [2, 3]}[kind]
    for steps, g in stored.items():
        assert g.fit["held_out"]["fd"] < g.fit["held_out"]["fd_karras"], g.fit
        s = scoresde.sample(model, solver="consistency", steps=steps, n=2, seed=0)
        assert s.settings["grid"] == "fitted" and s.nfe == steps and s.settings["ts"] == list(g.ts)
        assert g.ts[0] == model.sde.T and g.ts[-1] == model.t_eps
    assert scoresde.sample(model, solver="consistency", steps=2, grid="karras", n=2, seed=0).settings["grid"] == "karras"


def test_cli_times_sets_the_consistency_grid_and_refuses_bad_times(tmp_path, capsys):
    """`scoresde sample --times 0.2,0.1` walks [T, 0.2, 0.1, t_eps] (3 evaluations); unordered, out-of-range or
    non-numeric times and --times with --steps are usage errors naming the problem."""
    from scoresde.cli import main

    out = str(tmp_path / "x.png")
    assert main(["sample", "--kind", "cd", "--times", "0.2,0.1", "--n", "2", "--out", out, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "NFE 3," in printed and '"ts": [1.0, 0.2, 0.1, 0.001]' in printed and '"grid": "custom"' in printed
    for bad, says in [(["--times", "0.1,0.2"], "strictly decreasing"), (["--times", "1.5"], "times[0]"),
                      (["--times", "0.2", "--steps", "3"], "leave out --steps"), (["--times", "x"], "comma-separated")]:
        try:
            code = main(["sample", "--kind", "cd", "--n", "2", "--out", out, "--quiet", *bad])
        except SystemExit as e:  # argparse's own refusal of a value its type rejects
            code = e.code
        assert code == 2 and says in capsys.readouterr().err, bad
