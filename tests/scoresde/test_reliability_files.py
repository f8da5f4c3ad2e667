"""Files the project reads are not trusted: bounded configurations, malformed metadata, digests,
stale temporaries, torn metrics, crafted CIFAR-10 pickles. Each refusal is one ValueError line that
names the file and what is wrong."""

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from scoresde.files import DIGEST_KEY, tensor_digest
from scoresde.train import TrainConfig, load_checkpoint, load_model, train
from scoresde.training.checkpoints import ASSETS, DEFAULT_MODELS, export_model, load_pretrained

TINY = dict(net_options={"ch": 8, "num_res_blocks": 1, "ch_mult": (1, 2), "attn_resolutions": (4,)},
            batch_size=16, lr=1e-3, warmup_steps=3, ema_decay=0.9, log_every=1, progress=False, device="cpu",
            sample_every=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """out_dir of a one-step tiny run (its checkpoint holds net, ema and optimizer state)."""
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(**TINY, steps=1, out_dir=str(out)))
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    return export_model(run / "checkpoint.safetensors", tmp_path_factory.mktemp("exp") / "model.safetensors")


def read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def rewrite(src, dst, *, tensors=None, meta=None, digest=True) -> Path:
    """Copy of src with tensors / metadata changed by the given functions; digest: recompute it
    (so that the check under test, not the digest, is what refuses the file), else drop it."""
    t, m = read(src)
    t = tensors(t) if tensors else t
    m = meta(m) if meta else m
    m.pop(DIGEST_KEY, None)
    if digest:
        m[DIGEST_KEY] = tensor_digest(t, m)
    save_file(t, str(dst), metadata=m)
    return Path(dst)


def set_json(key, **fields):
    return lambda m: {**m, key: json.dumps({**json.loads(m[key]), **fields})}


def refused(load, path, match):
    """load(path) raises one ValueError line naming the file and matching `match`, within 5 s."""
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=match) as info:
        load(path)
    assert time.perf_counter() - t0 < 5
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and len(msg) < 600, msg


# --- 1. bounded configurations ---------------------------------------------------------------------

@pytest.mark.parametrize("fields,match", [
    (dict(ch=2**20), "ch must be an integer <= 2048"),
    (dict(image_size=65536), "image_size must be an integer <= 2048"),
    (dict(in_channels=10**6), "in_channels"),
    (dict(num_res_blocks=10**6), "num_res_blocks"),
    (dict(ch_mult=[1] * 100, image_size=8), "ch_mult must be"),
    (dict(num_classes=10**12), "num_classes"),
    (dict(augment_dim=10**9), "augment_dim"),
])
@pytest.mark.parametrize("kind", ["checkpoint", "exported"])
def test_oversized_unet_config_is_refused_before_building(run, exported, tmp_path, fields, match, kind):
    src = run / "checkpoint.safetensors" if kind == "checkpoint" else exported
    bad = rewrite(src, tmp_path / "bad.safetensors", meta=set_json("unet_config", **fields))
    assert bad.stat().st_size < 1_000_000
    refused(load_model, bad, f"unet_config.*{match}")


def test_config_within_field_bounds_but_huge_parameter_count_is_refused(exported, tmp_path):
    bad = rewrite(exported, tmp_path / "bad.safetensors",
                  meta=set_json("unet_config", ch=2048, ch_mult=[64, 64], attn_resolutions=[], image_size=8))
    refused(load_model, bad, "parameters")


# --- 2. malformed metadata -------------------------------------------------------------------------

def _drop(key):
    return lambda m: {k: v for k, v in m.items() if k != key}


@pytest.mark.parametrize("edit,match", [
    (dict(meta=_drop("config")), "lacks 'config'"),
    (dict(meta=_drop("unet_config")), "lacks 'unet_config'"),
    (dict(meta=_drop("step")), "lacks 'step'"),
    (dict(meta=lambda m: {**m, "config": "{not json"}), "'config' is not valid JSON"),
    (dict(meta=lambda m: {**m, "unet_config": "[1, 2]"}), "must be a JSON dict"),
    (dict(meta=lambda m: {**m, "step": "abc"}), "'step' must be an integer"),
    (dict(meta=lambda m: {**m, "step": "-3"}), "'step' must be an integer"),
    (dict(meta=lambda m: {**m, "sde": "[" * 100_000 + "]" * 100_000}), "'sde' nests deeper"),
    (dict(meta=set_json("unet_config", ch="eight")), "'unet_config'.*ch must be"),
    (dict(meta=set_json("config", lr="fast")), "'config'"),
    (dict(meta=set_json("config", bogus=1)), "unknown TrainConfig"),
    (dict(tensors=lambda t: {**t, "opt.7": torch.zeros(1)}), "'opt.7' is not of the form"),
    (dict(tensors=lambda t: {**t, "opt.x.exp_avg": torch.zeros(1)}), "is not of the form"),
    (dict(tensors=lambda t: {**t, "ema.conv_in.weight": torch.zeros(3, 3)}), "has shape"),
    (dict(tensors=lambda t: {k: v for k, v in t.items() if k != "net.conv_in.bias"}), "missing"),
    (dict(tensors=lambda t: {**t, "net.extra": torch.zeros(1)}), "unexpected"),
    (dict(tensors=lambda t: {**t, "junk": torch.zeros(1)}), "unexpected tensor"),
])
def test_malformed_checkpoint_is_one_value_error(run, tmp_path, edit, match):
    bad = rewrite(run / "checkpoint.safetensors", tmp_path / "bad.safetensors", **edit)
    refused(load_checkpoint, bad, match)
    refused(load_model, bad, match)


def test_malformed_exported_model_is_one_value_error(exported, tmp_path):
    bad = rewrite(exported, tmp_path / "bad.safetensors", meta=lambda m: {**m, "step": "1.5"})
    refused(load_pretrained, bad, "'step' must be an integer")
    bad = rewrite(exported, tmp_path / "bad2.safetensors", tensors=lambda t: {**t, "conv_in.weight": torch.zeros(2)})
    refused(load_model, bad, "'conv_in.weight' has shape")


# --- 3. integrity ----------------------------------------------------------------------------------

def test_written_files_carry_a_digest_that_load_checks(run, exported):
    for path in (run / "checkpoint.safetensors", exported):
        t, m = read(path)
        assert m[DIGEST_KEY] == tensor_digest(t, m)
    assert load_checkpoint(run / "checkpoint.safetensors").step == 1 and load_pretrained(exported).step == 1


@pytest.mark.parametrize("where", ["data", "metadata"])
def test_a_flipped_bit_is_refused(run, tmp_path, where):
    raw = bytearray((run / "checkpoint.safetensors").read_bytes())
    header = int.from_bytes(raw[:8], "little")
    if where == "data":
        pos = len(raw) - 5  # inside the last tensor's bytes
    else:
        pos = raw.index(b'"step":"') + len(b'"step":"')  # the step's digit in the header
    for bit in (0, 6):  # a low bit (a small change) and a high one
        bad = bytearray(raw)
        bad[pos] ^= 1 << bit
        path = tmp_path / f"flip_{bit}.safetensors"
        path.write_bytes(bytes(bad))
        assert (pos > 8 + header) == (where == "data")
        refused(load_checkpoint, path, "corrupt|must be an integer" if where == "metadata" else "corrupt")


def test_digest_mismatch_message(run, tmp_path):
    t, m = read(run / "checkpoint.safetensors")
    t["net.conv_in.bias"] = t["net.conv_in.bias"] + 1
    save_file(t, str(tmp_path / "x.safetensors"), metadata=m)
    refused(load_checkpoint, tmp_path / "x.safetensors", "digest does not match")


def test_shipped_assets_have_no_digest_and_still_load():
    path = ASSETS / DEFAULT_MODELS["vp"]
    assert DIGEST_KEY not in read(path)[1]
    assert load_pretrained(path).step > 0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["net.conv_in.weight", "ema.conv_out.bias", "opt.0.exp_avg"])
def test_non_finite_weights_are_refused(run, tmp_path, value, name):
    def poison(t):
        t = dict(t)
        t[name] = t[name].clone()
        t[name].view(-1)[0] = value
        return t

    bad = rewrite(run / "checkpoint.safetensors", tmp_path / "bad.safetensors", tensors=poison)
    refused(load_checkpoint, bad, f"'{name.split('.', 1)[1] if not name.startswith('opt') else name}'.*non-finite")


def test_negative_optimizer_step_is_refused(run, tmp_path):
    bad = rewrite(run / "checkpoint.safetensors", tmp_path / "bad.safetensors",
                  tensors=lambda t: {**t, "opt.0.step": torch.tensor(-5.0)})
    refused(load_checkpoint, bad, "counter 'opt.0.step' is negative")


# --- 4. stale temporaries and torn metrics ---------------------------------------------------------

def _dead_pid() -> int:
    """The id of a process that has exited."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_are_cleaned_at_the_next_start(tmp_path):
    cfg = TrainConfig(**TINY, steps=1, out_dir=str(tmp_path))
    train(cfg)
    dead = _dead_pid()
    stale = [tmp_path / f".checkpoint.safetensors.tmp{dead}", tmp_path / f".metrics.jsonl.tmp{dead}"]
    for p in stale:
        p.write_bytes(b"\x00" * 1000)  # what a kill during a checkpoint write leaves
    live = tmp_path / f".checkpoint.safetensors.tmp{os.getppid()}"  # a live process's (mid-write): kept
    others = [tmp_path / ".notes.tmp", tmp_path / "checkpoint.safetensors.tmp123", tmp_path / ".x.tmpabc", live]
    for p in others:
        p.write_text("keep")
    train(replace(cfg, steps=2))
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "keep" for p in others)
    assert load_checkpoint(tmp_path / "checkpoint.safetensors").step == 2


def test_torn_last_metrics_line_does_not_block_resume(tmp_path):
    cfg = TrainConfig(**TINY, steps=2, ckpt_every=1, out_dir=str(tmp_path))
    train(cfg)
    metrics = tmp_path / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + '{"step": 3, "loss": 0.12')  # killed while appending a line
    train(replace(cfg, steps=3))
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_a_broken_metrics_line_before_the_end_is_one_value_error(tmp_path):
    cfg = TrainConfig(**TINY, steps=2, ckpt_every=1, out_dir=str(tmp_path))
    train(cfg)
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(["{torn", *lines]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 1 is not a JSON object"):
        train(replace(cfg, steps=3))


# --- 5. crafted CIFAR-10 pickles -------------------------------------------------------------------

def _cifar_folder(tmp_path, payload: bytes) -> Path:
    """A train folder whose data_batch_1 is `payload` (the others are never reached)."""
    import pickle

    import numpy as np

    good = pickle.dumps({b"labels": [1, 2], b"data": np.zeros((2, 3072), np.uint8)})
    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}").write_bytes(payload if i == 1 else good)
    return tmp_path


def _shared_rows() -> bytes:
    """~10 KB: 1000 references to a list of 1000 references to one row of 3072 ints (24 GB as int64)."""
    import pickle

    row = [0] * 3072
    mid = [row] * 1000
    return pickle.dumps({b"labels": [0] * 1000, b"data": [mid] * 1000}, protocol=2)


def _deep_tuple_key(depth=27) -> bytes:
    """144 bytes: a dict key t_27 with t_{i+1} = (t_i, t_i); hashing it visits 2^27 tuples."""
    ops = [b"\x80\x02}", b")q\x00"]  # PROTO 2, EMPTY_DICT, EMPTY_TUPLE, BINPUT 0
    for i in range(depth):
        ops.append(b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]))  # GET, GET, TUPLE2, PUT
    ops.append(b"K\x01s.")  # BININT1 1, SETITEM, STOP
    return b"".join(ops)


def _deep_lists(depth=5000) -> bytes:
    return b"\x80\x02" + b"(" * depth + b"l" * depth + b"."  # MARK ... LIST, nested `depth` deep


def _float_labels() -> bytes:
    import pickle

    import numpy as np

    return pickle.dumps({b"labels": [1.7, 2.2], b"data": np.zeros((2, 3072), np.uint8)})


def _set_key() -> bytes:
    import pickle

    return pickle.dumps({b"labels": [0], b"data": {frozenset([1])}})


@pytest.mark.parametrize("payload,match", [
    (_shared_rows(), "more than 1,000,000 objects"),
    (_deep_tuple_key(), "dict key of more than|nested more than"),
    (_deep_lists(), "nested more than"),
    (_float_labels(), r"expected 2 integer labels in 0..9, got list of 2 \(float\)"),
    (_set_key(), "refusing pickle opcode"),
], ids=["shared_rows", "deep_tuple_key", "deep_lists", "float_labels", "set"])
def test_crafted_cifar_batches_are_refused_quickly_in_little_memory(tmp_path, payload, match):
    import tracemalloc

    from scoresde import data

    assert len(payload) < 1_000_000
    root = _cifar_folder(tmp_path, payload)
    tracemalloc.start()
    try:
        refused(lambda p: data.cifar10(p, "train"), root, f"data_batch_1: .*{match}")
        assert tracemalloc.get_traced_memory()[1] < 2**30
    finally:
        tracemalloc.stop()


def test_cifar_check_accepts_protocol_2_and_4_batches_with_filenames(tmp_path):
    import pickle

    import numpy as np

    from scoresde import data

    arr = np.arange(4 * 3072, dtype=np.int64).astype(np.uint8).reshape(4, 3072)
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [0, 9, 3, 3], b"data": arr,
             b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"]}
    for proto in (2, 4):
        for i in range(1, 6):
            (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=proto))
        ds = data.cifar10(tmp_path, "train")
        assert ds.labels.tolist() == [0, 9, 3, 3] * 5 and np.array_equal(ds.images[:4].numpy().reshape(4, -1), arr)


def test_atomic_write_flushes_the_folder_after_the_rename(tmp_path, monkeypatch):
    """After os.replace the folder's entry is fsynced too; without it a power loss can undo the rename."""
    from scoresde import files

    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None)
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", recording_fsync)
    files.atomic_write(tmp_path / "a.txt", lambda p: p.write_text("x"))
    assert (tmp_path / "a.txt").read_text() == "x"
    assert synced[-1] in (True, None) and len(synced) == 2  # the file, then its folder
    if synced[-1] is None:
        pytest.skip("no /proc here to tell a folder's descriptor from a file's")
