"""Reliability of training runs and of the files they and the classifiers write (issue 17).

A resumed run logs the uninterrupted run's losses when log intervals straddle checkpoints; a run
killed with SIGKILL at random moments (some inside checkpoint writes) and resumed each time ends
where the uninterrupted run ends, leaving no corrupt checkpoint and no temporary file; the classifier
files carry the SHA-256 digest that checkpoints carry, and a flipped byte is refused.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from scoresde.files import DIGEST_KEY, write_safetensors
from scoresde.train import TrainConfig, load_checkpoint, train

from .helpers import metrics_records, train_killed_in_step

TINY = dict(net_options={"ch": 8, "num_res_blocks": 1, "ch_mult": (1, 2), "attn_resolutions": (4,)},
            batch_size=16, lr=1e-3, warmup_steps=3, ema_decay=0.9, progress=False, device="cpu")
LOGGED = ("step", "loss", "lr", "grad_norm")  # images_per_s measures the clock


def _logged(out_dir) -> list[tuple]:
    return [tuple(r[k] for k in LOGGED) for r in metrics_records(out_dir)]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- 1. log intervals that straddle a checkpoint --------------------------------------------------

def test_resume_logs_the_uninterrupted_losses_when_log_every_does_not_divide_ckpt_every(tmp_path, monkeypatch):
    base = TrainConfig(**TINY, steps=30, log_every=7, ckpt_every=10, seed=2)
    ref = train(replace(base, out_dir=str(tmp_path / "ref")))
    out = tmp_path / "run"
    cfg = replace(base, out_dir=str(out))
    # dies in step 15: checkpoint 10 holds the interval of steps 8-10; the line of step 14 is dropped on resume
    train_killed_in_step(monkeypatch, cfg, "dsm_loss", 15)
    counts = [_open_count(out)]
    assert [r["step"] for r in metrics_records(out)] == [7, 14]
    # the resumed run dies in its 13th step (step 23), after checkpoint 20 (interval of steps 15-20)
    train_killed_in_step(monkeypatch, cfg, "dsm_loss", 13)
    counts.append(_open_count(out))
    res = train(cfg)
    assert [r["step"] for r in metrics_records(out)] == [7, 14, 21, 28, 30]
    assert _logged(out) == _logged(tmp_path / "ref")  # bit for bit
    _assert_same_weights(res.net.state_dict(), ref.net.state_dict())
    _assert_same_weights(res.ema.state_dict(), ref.ema.state_dict())
    assert counts + [_open_count(out)] == [3, 6, 0]  # the last interval closed at the end


def _open_count(out: Path) -> int:
    """The step count of the log interval open at out's checkpoint (an old checkpoint has none: -1)."""
    interval = getattr(load_checkpoint(out / "checkpoint.safetensors"), "log_interval", None)
    return -1 if interval is None else interval.count


DDP_WORKER = """
import os, sys, torch
torch.set_num_threads(1)
from dataclasses import replace
from scoresde.train import TrainConfig, setup_distributed, train
from scoresde.training import step as train_step
setup_distributed()
cfg = TrainConfig(net_options={"ch": 8, "num_res_blocks": 1, "ch_mult": (1, 2), "attn_resolutions": (4,)},
                  batch_size=16, steps=5, lr=1e-3, warmup_steps=2, ema_decay=0.9, log_every=3, ckpt_every=2,
                  progress=False, device="cpu", out_dir=sys.argv[1] + "/ref")
train(cfg)
cfg = replace(cfg, out_dir=sys.argv[1] + "/run")
real, calls = train_step.dsm_loss, [0]
def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 4:  # every rank dies in step 4, after checkpoint 2 and the log of step 3
        raise KeyboardInterrupt
    return real(*args, **kwargs)
train_step.dsm_loss = dying
try:
    train(cfg)
except KeyboardInterrupt:
    pass
train_step.dsm_loss = real
train(cfg)
# leave without the interpreter's teardown: after the interrupted run, gloo's threads aborted it at exit in about
# 1 run in 7 ("terminate called without an active exception", SIGABRT) even after destroy_process_group, once all
# of the above had finished and been written; os._exit skips that teardown, and any earlier failure still exits nonzero
sys.stdout.flush()
os._exit(0)
"""


def test_ddp_resume_logs_the_uninterrupted_losses(tmp_path):
    # torchrun, 2 processes, gloo: checkpoint 2 holds both ranks' loss sums of the open interval (steps 1-2)
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "worker.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in metrics_records(tmp_path / "run")] == [3, 5]
    assert _logged(tmp_path / "run") == _logged(tmp_path / "ref")
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.safetensors") for name in ("run", "ref"))
    assert a.step == b.step == 5
    _assert_same_weights(a.net, b.net)


def _rewrite_meta(path: Path, out: Path, **entries: str | None) -> Path:
    """A copy of the checkpoint at `path` with metadata entries replaced (None: removed), digest renewed."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta.pop(DIGEST_KEY)
    for k, v in entries.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    return write_safetensors(out, tensors, meta)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of a 1-step tiny run, shared by the tests that edit copies of it."""
    out = tmp_path_factory.mktemp("small")
    train(TrainConfig(**TINY, steps=1, out_dir=str(out)))
    return out / "checkpoint.safetensors"


@pytest.mark.parametrize("value,match", [
    ('{"count": 2}', r"'log_interval' must hold exactly 'count' and 'loss_sums'"),
    ('{"count": -1, "loss_sums": [1.0]}', r"'log_interval' count must be an integer in \[0, "),
    ('{"count": true, "loss_sums": [1.0]}', r"'log_interval' count must be an integer"),
    ('{"count": 2, "loss_sums": ["1.0"]}', r"'log_interval' loss_sums must be a list of at most 1024 numbers"),
    ('{"count": 2, "loss_sums": [99999999999999999999]}', r"'log_interval' loss_sums must be a list"),  # not a float
    ('{"count": 2, "loss_sums": []}', r"'log_interval' has count 2 and 0 loss sums"),
    ('[1, 2]', r"metadata 'log_interval' must be a JSON dict, got list"),
    ('{"count": 2,', r"metadata 'log_interval' is not valid JSON"),
])
def test_a_malformed_log_interval_is_one_error_naming_the_file(small_checkpoint, tmp_path, value, match):
    bad = _rewrite_meta(small_checkpoint, tmp_path / "bad.safetensors", log_interval=value)
    with pytest.raises(ValueError, match=match) as e:
        load_checkpoint(bad)
    assert str(e.value).startswith(str(bad)) and "\n" not in str(e.value)


def test_a_checkpoint_without_log_interval_loads_and_resumes_with_an_empty_interval(tmp_path, monkeypatch):
    # checkpoints written before the entry existed: the open interval is lost, as it always was
    cfg = TrainConfig(**TINY, steps=4, log_every=3, ckpt_every=2, out_dir=str(tmp_path))
    train_killed_in_step(monkeypatch, cfg, "dsm_loss", 3)  # checkpoint 2 holds the interval of steps 1-2
    path = tmp_path / "checkpoint.safetensors"
    from scoresde.training.checkpoints import LogInterval

    assert load_checkpoint(path).log_interval.count == 2
    _rewrite_meta(path, path, log_interval=None)
    assert load_checkpoint(path).log_interval == LogInterval(0, ())
    assert train(cfg).step == 4 and [r["step"] for r in metrics_records(tmp_path)] == [3, 4]


def test_a_resume_on_another_world_size_continues_with_the_ranks_mean_loss_sum(tmp_path, monkeypatch):
    # a checkpoint of 2 ranks resumed by 1 process: its interval starts from the mean of the ranks' sums
    base = TrainConfig(**TINY, steps=4, log_every=3, ckpt_every=2)
    train(replace(base, out_dir=str(tmp_path / "ref")))
    cfg = replace(base, out_dir=str(tmp_path / "run"))
    train_killed_in_step(monkeypatch, cfg, "dsm_loss", 3)  # checkpoint 2 holds the interval of steps 1-2
    path = tmp_path / "run" / "checkpoint.safetensors"
    (s,) = load_checkpoint(path).log_interval.loss_sums
    _rewrite_meta(path, path, log_interval=json.dumps({"count": 2, "loss_sums": [s - 0.25, s + 0.25]}))
    train(cfg)
    assert _logged(tmp_path / "run") == _logged(tmp_path / "ref")  # (s - 1/4 + s + 1/4) / 2 is s, exactly


# --- 2. SIGKILL at random moments, some inside checkpoint writes ----------------------------------

SLOW_NET = {"ch": 32, "num_res_blocks": 2, "ch_mult": (1, 2), "attn_resolutions": (4,)}  # an 18 MB checkpoint
STEPS = 20
CKPT_TMP = ".checkpoint.safetensors.tmp"  # files.atomic_write's temporary name, before the pid


def _start(out: Path) -> subprocess.Popen:
    """`scoresde train` on one thread in a subprocess: a new run, or --resume when out has a checkpoint."""
    args = [sys.executable, "-m", "scoresde", "train", "--out-dir", str(out), "--steps", str(STEPS),
            "--net-options", repr(SLOW_NET), "--batch-size", "4", "--lr", "1e-3", "--warmup-steps", "3",
            "--ema-decay", "0.9", "--log-every", "7", "--ckpt-every", "5", "--seed", "3", "--device", "cpu",
            "--no-progress"] + (["--resume"] if (out / "checkpoint.safetensors").exists() else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _tmp_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if ".tmp" in p.name} if out.is_dir() else set()


def _kill_in_write(proc: subprocess.Popen, out: Path, nth: int) -> bool:
    """SIGKILL proc while it writes its nth checkpoint (the temporary file seen appearing, polled every
    millisecond); True if it was killed with that file still there, False if it ended first."""
    name, seen, present = f"{CKPT_TMP}{proc.pid}", 0, False
    while proc.poll() is None:
        now = (out / name).exists()
        seen, present = seen + (now and not present), now
        if seen >= nth and now:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return (out / name).exists()  # killed inside the write: atomic_write never renamed it
        time.sleep(0.001)
    return False


def _kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL proc `seconds` after now; False if it ended first."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _checkpoint_step(out: Path) -> int:
    """The step of out's checkpoint (0 if none), after checking that it carries a digest and loads (which checks it)."""
    path = out / "checkpoint.safetensors"
    if not path.exists():
        return 0
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        assert DIGEST_KEY in f.metadata()
    return load_checkpoint(path).step


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_as_the_uninterrupted_run(tmp_path):
    # 20 steps of a net with an 18 MB checkpoint every 5 steps; the uninterrupted run goes beside the
    # killed one (one thread each). Kills: three inside a checkpoint write (the 1st or 2nd of that
    # process), two at seeded random moments (some land in start-up), each followed by a resume (a new
    # run while no checkpoint exists), then a last run to the end. Seven starts of `scoresde train`:
    # about 40 s of CPU, 1-3 minutes on the shared 2-core machine (3.5 minutes at load 7).
    ref_out, out, rng = tmp_path / "ref", tmp_path / "run", random.Random(17)
    ref = _start(ref_out)
    plan = [("write", 2), ("random", rng.uniform(2, 10)), ("write", 1), ("write", 2), ("random", rng.uniform(2, 10))]
    kills = {"write": 0, "random": 0}
    for kind, arg in plan:
        proc = _start(out)
        killed = _kill_in_write(proc, out, arg) if kind == "write" else _kill_after(proc, arg)
        kills[kind] += killed
        if proc.returncode not in (0, -signal.SIGKILL):
            pytest.fail(f"a run ended with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        if _checkpoint_step(out) == STEPS:  # every kill leaves a checkpoint that loads
            break
    assert kills["write"] >= 2, kills
    if _checkpoint_step(out) < STEPS:
        last = _start(out)
        assert last.wait(timeout=600) == 0, last.stderr.read()[-2000:]
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-2000:]
    assert _tmp_files(out) == set()  # starts removed what the killed writes left
    assert _checkpoint_step(out) == _checkpoint_step(ref_out) == STEPS
    a, b = load_checkpoint(out / "checkpoint.safetensors"), load_checkpoint(ref_out / "checkpoint.safetensors")
    for name in ("net", "ema"):
        _assert_same_weights(getattr(a, name), getattr(b, name))
    assert all(torch.equal(a.opt[i][k], b.opt[i][k]) for i in b.opt for k in b.opt[i])
    assert _logged(out) == _logged(ref_out)  # every logged step, loss, lr and gradient norm, bit for bit


# --- 3. classifier files carry a digest ------------------------------------------------------------

def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor's bytes
    path.write_bytes(bytes(data))


def test_digits_classifier_file_carries_a_digest_and_a_flipped_byte_is_refused(tmp_path):
    from scoresde.classifier import DigitsClassifier, DigitsClassifierConfig, load_digits_classifier, read_metadata
    from scoresde.classifier import save_digits_classifier

    torch.manual_seed(0)
    path = tmp_path / "clf.safetensors"
    save_digits_classifier(DigitsClassifier(DigitsClassifierConfig()), path, extra={"note": "x"})
    meta = read_metadata(path)
    assert len(meta[DIGEST_KEY]) == 64 and meta["extra"] == {"note": "x"}
    load_digits_classifier(path)
    _flip_last_byte(path)
    with pytest.raises(ValueError, match="digest does not match") as e:
        load_digits_classifier(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    load_digits_classifier()  # the shipped file has no digest and still loads


def test_noisy_classifier_file_carries_a_digest_and_a_flipped_byte_is_refused(tmp_path):
    from scoresde.noisy_classifier import NoisyClassifier, NoisyClassifierConfig, load_noisy_classifier, read_metadata
    from scoresde.noisy_classifier import save_noisy_classifier
    from scoresde.sde import VPSDE

    torch.manual_seed(0)
    clf = NoisyClassifier(NoisyClassifierConfig(channels=(4, 8), hidden=16, emb_dim=8), VPSDE())
    for dtype in (torch.float32, torch.float16):
        path = tmp_path / f"clf_{str(dtype)[6:]}.safetensors"
        save_noisy_classifier(clf, path, extra={"note": "x"}, dtype=dtype)
        meta = read_metadata(path)
        assert len(meta[DIGEST_KEY]) == 64 and meta["extra"] == {"note": "x"}
        load_noisy_classifier(path)
        _flip_last_byte(path)
        with pytest.raises(ValueError, match="digest does not match") as e:
            load_noisy_classifier(path)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    load_noisy_classifier()  # the shipped file has no digest and still loads
    assert DIGEST_KEY not in read_metadata()


def test_shipped_classifier_assets_have_no_digest():
    # they load as files from before digests (not rewritten): the readers check a digest only when present
    from safetensors import safe_open

    from scoresde.classifier import ASSET
    from scoresde.noisy_classifier import ASSETS, SHIPPED

    for path in (ASSET, *(ASSETS / f for f in SHIPPED.values())):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            assert DIGEST_KEY not in (f.metadata() or {}), path


def test_images_per_second_of_a_resumed_interval_counts_only_the_steps_since_the_clock_started(tmp_path, monkeypatch):
    """A resumed run's first log line counted the checkpoint's open steps against the time since the
    resume (found by review): 5 restored + 1 new step in 2 s was 6 x 8 / 2 = 24 images/s, not 4."""
    import json

    import scoresde.training.metrics_log as ml

    clock = iter([100.0, 102.0])
    monkeypatch.setattr(ml.time, "perf_counter", lambda: next(clock))
    log = ml.MetricsLog(tmp_path, rank=0, world=1, device=torch.device("cpu"), batch_size=8,
                        open_log=ml.LogInterval(5, (2.5,)))
    log.add(torch.tensor(0.5))
    log.write(6, 1e-3, torch.tensor(1.0))
    record = json.loads((tmp_path / ml.METRICS).read_text())
    assert record["loss"] == pytest.approx(0.5) and record["images_per_s"] == pytest.approx(4.0)
