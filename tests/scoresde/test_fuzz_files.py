"""Fuzzing what reads data and model files: to_model_input, data.load, load_model (the contract: fuzz_common.py)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from .fuzz_common import (
    FUZZ, arg, contract, kwargs, odd, unwrap, generators,
)


# --- data --------------------------------------------------------------------------------------------

@FUZZ
@given(
    images=arg(st.builds(lambda b, k: torch.randint(0, k, (b, 1, 2, 2), generator=torch.Generator().manual_seed(b)),
                         st.integers(1, 3), st.just(2)),
               st.sampled_from([torch.full((1, 1, 2, 2), 300), torch.full((1, 1, 2, 2), -1), torch.full((1, 1, 2, 2), 0.5),
                                torch.full((1, 1, 2, 2), float("nan")), torch.zeros(1, 1, 2, 2, dtype=torch.bool),
                                torch.zeros(1, 1, 2, 2, dtype=torch.complex64), torch.zeros(0, 1, 2, 2), torch.zeros(2, 2),
                                [[0, 1]], None, "img"])),
    levels=arg(st.sampled_from([2, 17, 256])),
    options=kwargs(flip=arg(st.booleans()), dequantize=arg(st.booleans()), generator=arg(generators),
                   dtype=arg(st.sampled_from([torch.float32, torch.float64]),
                             st.sampled_from([torch.int64, torch.bool, "float32", torch.complex64, None]))),
)
def test_fuzz_to_model_input(images, levels, options):
    from scoresde.data import to_model_input

    kw, names = unwrap(options)
    names |= {n for n, a in (("images", images), ("levels", levels)) if a.odd}
    x = contract(lambda: to_model_input(images.value, levels.value, **kw), names)
    if x is not None:
        assert x.is_floating_point() and bool((x >= -1).all() and (x <= 1).all())


@FUZZ
@given(
    name=arg(st.sampled_from(["cifar10", "folder"]), st.sampled_from(["digits ", "DIGITS", "", None, 3, ["folder"]])),
    options=kwargs(root=arg(st.sampled_from(["missing", "empty", "file", "junk"])),
                   split=arg(st.sampled_from(["train", "test"])),
                   image_size=arg(st.integers(1, 4)),
                   channels=arg(st.sampled_from([1, 3])),
                   class_subfolders=arg(st.booleans())),
)
def test_fuzz_data_load(name, options, tmp_path_factory):
    """load(...) of folders that are missing, empty, a file, or hold a non-image file (digits needs
    scikit-learn and reads no argument but split: it is left to tests/scoresde/test_data.py)."""
    from scoresde.data import load

    kw, names = unwrap(options)
    base = tmp_path_factory.mktemp("data")
    (base / "empty").mkdir()
    (base / "file").write_text("not a folder")
    (base / "junk").mkdir()
    (base / "junk" / "a.png").write_bytes(b"not a png")
    if isinstance(kw.get("root"), str) and kw["root"] in ("missing", "empty", "file", "junk"):
        kw["root"] = str(base / kw["root"])
    names |= {"name", "data set", "root"} if name.odd else {"root"}
    root = kw.get("root")
    paths = [str(root)] if isinstance(root, str) and root else []
    contract(lambda: load(name.value, **kw), names, paths=paths)


# --- model files -------------------------------------------------------------------------------------

def _safetensors(path, meta: dict, tensors: dict | None = None):
    from safetensors.torch import save_file

    save_file(tensors if tensors is not None else {"w": torch.zeros(2)}, str(path), metadata=meta)
    return path


META_VALUES = st.sampled_from(["", "x", "{}", "[]", "null", "5", '{"a": [1, 2]}', "[" * 40, '{"steps": -1}', "99999999999999999999"])


def _shipped():
    """(tensors, metadata) of the shipped VP model, read once."""
    from safetensors import safe_open

    from scoresde.training.checkpoints import ASSETS, DEFAULT_MODELS

    if not hasattr(_shipped, "cache"):
        with safe_open(str(ASSETS / DEFAULT_MODELS["vp"]), "pt") as f:
            _shipped.cache = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    return _shipped.cache


@FUZZ
@given(field=st.sampled_from(["sde", "net", "prediction", "c_noise", "image_size", "channels", "net_options", "seed", "betas"]),
       value=odd, json_key=st.sampled_from(["config", "sde", "unet_config"]))
def test_fuzz_load_model_shipped_with_odd_config(field, value, json_key, tmp_path):
    """The shipped model's file with one field of its recorded configuration set to an odd value."""
    from scoresde import load_model
    from scoresde.files import DIGEST_KEY, tensor_digest

    tensors, meta = _shipped()
    entry = json.loads(meta[json_key])
    try:
        entry[field] = value
        text = json.dumps(entry)
    except (TypeError, ValueError):  # not JSON (complex, bytes, NaN is written as NaN)
        return
    meta = {**meta, json_key: text}
    meta.pop(DIGEST_KEY, None)
    meta[DIGEST_KEY] = tensor_digest(tensors, meta)
    path = _safetensors(tmp_path / "m.safetensors", meta, tensors)
    contract(lambda: load_model(path), {str(path)}, paths=[path])


@FUZZ
@given(kind=st.sampled_from(["missing", "folder", "empty", "text", "tensors", "meta"]),
       fmt=st.sampled_from(["scoresde-pretrained-1", "scoresde.train/1", "other", None]),
       meta=st.dictionaries(st.sampled_from(["step", "config", "unet_config", "sde"]), META_VALUES, max_size=4),
       options=kwargs(ema=arg(st.booleans()), device=arg(st.sampled_from([None, "cpu"]))))
def test_fuzz_load_model(kind, fmt, meta, options, tmp_path_factory):
    """load_model on paths that are missing or a folder, and on small crafted files: empty, text, a
    safetensors file without metadata, or with a format and odd metadata entries."""
    from scoresde import load_model

    kw, names = unwrap(options)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a model")
    elif kind == "tensors":
        _safetensors(path, {})
    elif kind == "meta":
        _safetensors(path, {**({"format": fmt} if fmt else {}), **meta})
    # a refusal of the file names the file
    contract(lambda: load_model(path, **kw), names | {str(path), "ema"}, paths=[path])


def test_data_functions_name_their_bad_arguments():
    from scoresde.data import image_folder, load, to_model_input

    images = torch.zeros(1, 1, 2, 2, dtype=torch.uint8)
    for kw, match in [(dict(generator=True, dequantize=True), "generator must be None or a torch.Generator"),
                      (dict(flip=1), "flip must be True or False"), (dict(dtype=torch.int64), "dtype must be a floating")]:
        with pytest.raises(ValueError, match=match):
            to_model_input(images, 2, **kw)
    with pytest.raises(ValueError, match="root must be a folder path"):
        load("folder", root=True, image_size=2)
    with pytest.raises(ValueError, match="image_size must be an integer >= 1, got True"):
        load("folder", root="x", image_size=True)
    with pytest.raises(ValueError, match="channels must be 1 or 3, got True"):
        image_folder("x", 2, channels=True)
