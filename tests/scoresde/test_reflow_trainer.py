"""Rectified-flow reflow in the trainer (TrainConfig.loss "reflow", scoresde.training.reflow): config checks, the
pairs (the teacher's ODE solutions, made once, reused on resume and checked against the run), the student starting as
its teacher, exact resume, the objective measured (the student's flow is straighter and its one Euler step lands
nearer the teacher's ODE endpoint than the teacher's own), the teacher's checks and rounds, and the model file that
`scoresde sample` walks with one Euler (DDIM) step."""

import copy
import inspect
import json
import re
from dataclasses import replace

import pytest
import torch

import solvers
from scoresde import cli_args
from scoresde.cli import main
from scoresde.fewstep import reflow as fewstep_reflow
from scoresde.fewstep.reflow import one_step, straightness
from scoresde.param import ScoreModel
from scoresde.pretrained import export_model
from scoresde.train import TrainConfig, load_model, save_checkpoint, train
from scoresde.training import loop as train_loop
from scoresde.training.checkpoints import ASSETS
from scoresde.training.config import REFLOW_DEFAULTS, REFLOW_SOLVERS
from scoresde.training.reflow import PAIRS, reflow_sampling, teacher_round
from solvers import grids

from .helpers import resumed_equals_uninterrupted, sampled_with_ddim_by_default, trained_and_exported

NET = {"ch": 8, "num_res_blocks": 1, "ch_mult": (1, 2), "attn_resolutions": (4,), "dropout": 0.0}
# a flow-matching teacher whose weights start a flow-prediction student (the run's process, network and prediction)
TINY = dict(net_options=NET, sde="flow", prediction="flow", batch_size=32, lr=2e-3, warmup_steps=0, ema_decay=0.9,
            log_every=1, progress=False, device="cpu")
REFLOW = dict(loss="reflow", reflow_pairs=64, reflow_steps=4)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny digits flow model (flow matching, 60 steps of batch 32, EMA 0.99) exported: (its file, its TrainConfig).
    Trained enough that its ODE trajectories are curved (straightness S 5.9 on 16 Heun steps, one Euler step 0.53 RMS
    from its 8-step Heun endpoint), which an untrained network's nearly constant velocity is not (4 steps: S 4e-6)."""
    config = TrainConfig(**{**TINY, "ema_decay": 0.99, "log_every": 60}, loss="flow_matching", steps=60, ckpt_every=60)
    return trained_and_exported(config, tmp_path_factory.mktemp("reflow_teacher")), config


def reflow_config(fixture, out, **kw) -> TrainConfig:
    """A "reflow" run in folder `out` from the teacher fixture (its file, its config); kw: fields to change."""
    path, tconfig = fixture
    return replace(tconfig, **{**REFLOW, "teacher": path, "ema_decay": 0.9, "log_every": 1, "out_dir": str(out), **kw})


@pytest.mark.parametrize("kw,match", [
    (dict(loss="reflow"), r"loss 'reflow' needs sde 'flow' \(it straightens a flow model\), got 'vp'"),
    (dict(loss="reflow", sde="flow"), "loss 'reflow' needs teacher"),
    (dict(loss="reflow", sde="flow", teacher="t"), r"loss 'reflow' needs reflow_pairs >= batch_size 128 .* got None"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=8, batch_size=16), "reflow_pairs >= batch_size 16"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=0), "reflow_pairs must be an integer >= 1, got 0"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=True), "reflow_pairs must be an integer"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=128, reflow_steps=0),
     r"reflow_steps must be an integer in \[1, 1000000\]"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=128, reflow_round=0), "reflow_round must be an integer >= 1"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=128, reflow_solver="euler_maruyama"),
     r"unknown reflow_solver 'euler_maruyama'; choose one of \['heun', 'ddim', "),
    (dict(loss="dsm", reflow_pairs=128), r"\['reflow_pairs'\] apply to loss 'reflow' \(rectified-flow reflow\); loss is"),
    (dict(loss="pd", teacher="t", pd_steps=2, reflow_solver="heun", reflow_round=2),
     r"\['reflow_solver', 'reflow_round'\] apply to loss 'reflow'"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=128, pd_steps=2), r"\['pd_steps'\] apply to loss 'pd'"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=128, distance="l2"),
     r"\['distance'\] apply to the consistency losses"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=128, conditional=True),
     r"loss 'reflow' does not support \['conditional'\] yet"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=128, learn_variance=True, augment="xflip", augment_p=0.5),
     r"does not support \['learn_variance', 'augment_p'\]"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=128, flip=True, dequantize=True),
     r"loss 'reflow' does not support \['flip', 'dequantize'\]: it trains on the teacher's \(noise, sample\) pairs"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=128, time_sampling="likelihood"),
     "time_sampling must stay 'uniform'"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=128, vae="v.safetensors"), r"does not support \[\"loss 'reflow'\"\]"),
    (dict(loss="reflow", sde="flow", teacher="t", reflow_pairs=128, precision="bf16", device="cuda"),
     r"does not support \['precision bf16'\]"),
    (dict(loss="dsm", teacher="t"), "teacher is for loss 'cd', 'ect', 'pd' or 'reflow', got loss 'dsm'"),
])
def test_bad_reflow_configs_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_reflow_defaults_and_solvers_agree_with_the_function_level_api():
    config = TrainConfig(loss="reflow", sde="flow", teacher="t", reflow_pairs=128)
    assert config.reflow_options() == ("heun", 50, 1)
    assert replace(config, reflow_solver="ddim", reflow_steps=3, reflow_round=2).reflow_options() == ("ddim", 3, 2)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    signature = inspect.signature(fewstep_reflow.reflow_pairs).parameters
    assert REFLOW_DEFAULTS == (signature["solver"].default, signature["steps"].default)
    for name in REFLOW_SOLVERS:  # each integrates the ODE deterministically on a fixed grid
        assert not solvers.get(name).stochastic, name
    described = cli_args.field_help(TrainConfig)["reflow_solver"][1]  # what `scoresde train --help` lists
    assert re.split(", | or ", described.split("pairs: ")[1].split(";")[0]) == list(REFLOW_SOLVERS)


def test_reflow_makes_its_pairs_once_and_resumes_exactly(monkeypatch, tmp_path, teacher):
    """A 0-step run is its teacher and writes the pairs: P noises and the teacher's ODE solutions from them (the first
    batch recomputed with fewstep.reflow.reflow_pairs equals the file's bit for bit); a later start with other pair
    settings and no checkpoint is refused, naming the difference. A run killed in its fifth step and resumed equals
    the uninterrupted run bit for bit (logged losses, net, EMA), reading the pairs file instead of writing it again
    (same inode and modification time), and both runs' pairs are equal."""
    path, _ = teacher
    zero = tmp_path / "zero"
    res0 = train(reflow_config(teacher, zero, steps=0))
    t_model = load_model(path)
    assert type(res0.model) is ScoreModel and res0.model.prediction == "flow"
    for k, v in t_model.net.state_dict().items():
        assert torch.equal(res0.ema.state_dict()[k], v), k
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(zero / PAIRS), "pt") as f:
        meta = json.loads(f.metadata()["reflow"])
        noise, x = f.get_tensor("noise"), f.get_tensor("x")
    assert noise.shape == x.shape == (64, 1, 8, 8)
    assert {k: meta[k] for k in ("solver", "steps", "pairs", "round", "chunk")} == \
        {"solver": "heun", "steps": 4, "pairs": 64, "round": 1, "chunk": 32}
    assert torch.equal(fewstep_reflow.reflow_pairs(t_model, noise[:32], steps=4)[1], x[:32])
    with pytest.raises(ValueError, match=r"holds pairs made otherwise than this run would make them \(file -> run\): "
                                         r"steps: 4 -> 3; delete it"):
        train(reflow_config(teacher, zero, steps=0, reflow_steps=3))

    def unchanged(out):
        stat = (out / PAIRS).stat()
        seen.append((stat.st_ino, stat.st_mtime_ns, (out / PAIRS).read_bytes()))

    seen = []
    run = reflow_config(teacher, tmp_path / "unused", steps=6, ckpt_every=3)
    res, _, out = resumed_equals_uninterrupted(monkeypatch, run, tmp_path, "reflow_batch_loss", train_loop,
                                               between=unchanged)
    unchanged(out)
    assert seen[0] == seen[1]  # the resumed start read the pairs: same file, same time, same bytes
    pairs = [load_file(folder / PAIRS) for folder in (zero, tmp_path / "ref", out)]
    assert all(torch.equal(p[k], pairs[0][k]) for p in pairs[1:] for k in ("noise", "x"))  # made alike every time
    assert res.step == 6 and any(not torch.equal(res.net.state_dict()[k], v) for k, v in t_model.net.state_dict().items())


def test_a_reflow_round_straightens_the_teachers_flow(tmp_path, teacher):
    """The objective, measured on 64 held-out x_T after 30 steps of "reflow" (256 pairs from 8 Heun steps, batch 32,
    lr 2e-3; EMA weights). The student's trajectories are straighter: Liu et al.'s S (16 Heun steps) below 0.4 of the
    teacher's (measured 0.17, and 0.20, 0.20 with teacher and run seeds 1, 2). Its one Euler step lands nearer the
    pairs' solution, the teacher's 8-step Heun endpoint, than the teacher's own one step does: RMS ratio < 0.6
    (measured 0.41, 0.35, 0.35). The same 30 steps of plain flow matching from the teacher's weights give S ratios
    2.1, 3.3, 1.7 and one-step ratios 1.19, 1.17, 1.14, so the check fails if the loss trains anything but the
    straight paths of the pairs. (8 Heun steps are not the teacher's converged ODE endpoint: against 64 steps the
    one-step ratio is 0.95; the student learns the pairs' map, so real runs take more reflow_steps, 50 by default.)"""
    res = train(reflow_config(teacher, tmp_path / "reflow", reflow_pairs=256, reflow_steps=8, steps=30, ckpt_every=30,
                              log_every=30))
    t_model = load_model(teacher[0])
    x_T = t_model.sde.prior_sample((64, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    s_student, s_teacher = (straightness(m, x_T, steps=16).value for m in (res.model, t_model))
    assert s_student < 0.4 * s_teacher, (s_student, s_teacher)
    endpoint = solvers.get("heun")(t_model, x_T, grids.uniform_t(t_model.sde, 8)).x

    def rms(m):
        return float((one_step(m, x_T) - endpoint).square().mean().sqrt())

    assert rms(res.model) < 0.6 * rms(t_model), (rms(res.model), rms(t_model))


def test_the_teacher_is_a_flow_model_of_the_data_from_the_round_before(tmp_path, teacher):
    """Refused before training, each with one line: a VP model, a latent model, a consistency model (even on the flow
    process), a teacher whose round is not reflow_round - 1 (both ways), a teacher file that changed since the pairs
    were made. A reflow student is the next round's teacher (reflow_round 2, recorded in its files)."""
    path, tconfig = teacher
    with pytest.raises(ValueError, match=r"it is a model of sde.kind 'vp'; loss 'reflow' straightens a flow model's ODE"):
        train(reflow_config(teacher, tmp_path / "vp", teacher=str(ASSETS / "digits_vp.safetensors"), steps=0))
    with pytest.raises(ValueError, match=r"it is a latent diffusion model \(its file holds a VAE\); loss 'reflow'"):
        train(reflow_config(teacher, tmp_path / "l", teacher=str(ASSETS / "patches32_latent_vp.safetensors"), steps=0))
    t_model, cd = load_model(path), tmp_path / "cd.safetensors"  # the teacher's weights as a consistency model's file
    save_checkpoint(cd, step=0, config=replace(tconfig, loss="cd", teacher=path), net_config=t_model.net_config,
                    sde=t_model.sde, net=t_model.net, ema=copy.deepcopy(t_model.net),
                    opt=torch.optim.Adam(t_model.net.parameters()))
    with pytest.raises(ValueError, match="it is a consistency model; the teacher must be a diffusion model"):
        train(reflow_config(teacher, tmp_path / "c", teacher=str(cd), steps=0))
    with pytest.raises(ValueError, match=r"is a flow model of no reflow round \(round 0\); this run's reflow_round 2 "
                                         "must be the teacher's round plus one: set reflow_round 1"):
        train(reflow_config(teacher, tmp_path / "r0", reflow_round=2, steps=0))
    r1 = tmp_path / "r1"
    train(reflow_config(teacher, r1, steps=1, ckpt_every=1))
    r1_file = str(export_model(r1 / "checkpoint.safetensors", tmp_path / "r1.safetensors"))
    assert teacher_round(load_model(r1_file)) == 1 and teacher_round(load_model(path)) == 0
    with pytest.raises(ValueError, match=r"is the student of reflow round 1; this run's reflow_round 1 must be the "
                                         "teacher's round plus one: set reflow_round 2"):
        train(reflow_config(teacher, tmp_path / "r2", teacher=r1_file, steps=0))
    res = train(reflow_config(teacher, tmp_path / "r2", teacher=r1_file, reflow_round=2, steps=1, ckpt_every=1))
    assert res.step == 1 and teacher_round(load_model(tmp_path / "r2" / "checkpoint.safetensors")) == 2
    train(reflow_config(teacher, r1, steps=2, ckpt_every=1))
    export_model(r1 / "checkpoint.safetensors", r1_file)  # the teacher file changes (round 1, one step on)
    with pytest.raises(ValueError, match=r"holds pairs made otherwise .* teacher_sha256: '[0-9a-f]{64}' -> "):
        train(reflow_config(teacher, tmp_path / "r2", teacher=r1_file, reflow_round=2, steps=2, ckpt_every=1))


def test_cli_trains_a_round_and_samples_it_with_one_euler_step(tmp_path, capsys, teacher):
    """`scoresde train --loss reflow --teacher F --reflow-pairs 32` runs a round (its progress grid drawn with one Euler
    step); `scoresde sample --model` of the result defaults to DDIM, which is Euler on the flow process, with 1 step
    on uniform_t, and --steps still overrides; a VP teacher is a one-line usage error."""
    path, _ = teacher
    out = tmp_path / "r"
    flags = ["--sde", "flow", "--prediction", "flow", "--net-options", repr(NET), "--batch-size", "16", "--steps", "1",
             "--device", "cpu", "--quiet", "--reflow-pairs", "32", "--reflow-steps", "2"]
    assert main(["train", "--loss", "reflow", "--teacher", path, *flags, "--out-dir", str(out), "--sample-every", "1",
                 "--sample-n", "4"]) == 0
    capsys.readouterr()
    assert (out / "samples" / "step_0000001.png").is_file() and (out / PAIRS).is_file()
    exported = export_model(out / "checkpoint.safetensors", tmp_path / "r.safetensors")
    assert reflow_sampling(load_model(exported)) == (1, "uniform_t") and reflow_sampling(load_model(path)) is None
    sampled_with_ddim_by_default(capsys, exported, tmp_path, nfe=1)
    assert main(["train", "--loss", "reflow", "--teacher", str(ASSETS / "digits_vp.safetensors"), *flags,
                 "--out-dir", str(tmp_path / "bad")]) == 2
    assert "it is a model of sde.kind 'vp'" in capsys.readouterr().err
