"""Fuzzing TrainConfig and its from_dict (the contract: fuzz_common.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .fuzz_common import (
    FUZZ, arg, contract, kwargs, odd, unwrap,
)


# --- training configuration --------------------------------------------------------------------------

TINY_NET = {"ch": 8, "num_res_blocks": 1, "ch_mult": (1, 2), "attn_resolutions": (4,)}
TRAIN_FIELDS = dict(
    data=arg(st.sampled_from(["digits", "folder"])), data_root=arg(st.sampled_from([None, "some/folder"])),
    image_size=arg(st.sampled_from([None, 8])), channels=arg(st.sampled_from([1, 3])), flip=arg(st.booleans()),
    conditional=arg(st.booleans()), p_uncond=arg(st.sampled_from([0.0, 0.1, 1.0])),
    augment=arg(st.sampled_from([(), ("xflip",), "xflip,translate"]), st.sampled_from([[1], "bogus", 5, None, {"xflip": 1}])),
    augment_p=arg(st.sampled_from([0.0, 0.5])), net=arg(st.sampled_from(["digits"])),
    net_options=arg(st.sampled_from([{}, TINY_NET, {"ch": 16}]),
                    st.sampled_from([5, "ch", [("ch", 8)], {1: 2}, {"ch": "x"}, {"bogus": 1}, {"image_size": 8}, None])),
    sde=arg(st.sampled_from(["vp", "ve", "ddpm", "flow"])), beta_min=arg(st.sampled_from([0.1, 1.0])),
    beta_max=arg(st.sampled_from([20.0, 5.0])), sigma_min=arg(st.sampled_from([0.01])), sigma_max=arg(st.sampled_from([50.0])),
    prediction=arg(st.sampled_from(["eps", "x0", "v"])), c_noise=arg(st.sampled_from(["log_noise", "t"])),
    loss=arg(st.sampled_from(["dsm", "hybrid"])), t_eps=arg(st.sampled_from([1e-5, 0.1])),
    lr=arg(st.sampled_from([1e-3])), betas=arg(st.sampled_from([(0.9, 0.999), [0.5, 0.9]]),
                                               st.sampled_from([5, (True, 0.5), (0.9,), "ab", (float("nan"), 0.9), None])),
    warmup_steps=arg(st.integers(0, 10)), batch_size=arg(st.integers(1, 8)), steps=arg(st.integers(0, 10)),
    seed=arg(st.integers(0, 4095)), init_from=arg(st.sampled_from([None, "ckpt.safetensors"])),
    device=arg(st.sampled_from(["auto", "cpu"]), st.sampled_from([5, None, "cpu ", "gpu", 1.5, "meta"])),
    precision=arg(st.sampled_from(["fp32"])), out_dir=arg(st.sampled_from(["runs/x"]), st.sampled_from([None, 5, "", b"x"])),
    ckpt_every=arg(st.integers(1, 10)), sample_every=arg(st.integers(0, 3)), progress=arg(st.booleans()),
)


@FUZZ
@given(fields=kwargs(**TRAIN_FIELDS))
def test_fuzz_train_config(fields):
    from scoresde import TrainConfig

    kw, names = unwrap(fields)
    config = contract(lambda: TrainConfig(**kw), names)
    if config is not None:  # a valid configuration survives its JSON round trip
        assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@FUZZ
@given(d=st.dictionaries(st.sampled_from(["steps", "seed", "lr", "sde", "net_options", "betas", "bogus", "augment", "device"]),
                         odd, max_size=3),
       top=st.sampled_from(["{}", "[]", "null", "5", '"x"', None]))
def test_fuzz_train_config_from_dict(d, top):
    """from_dict of JSON-like dicts with odd values, and of JSON documents that are not objects."""
    from scoresde import TrainConfig

    def load():
        return TrainConfig.from_dict(json.loads(top) if top is not None else d)

    contract(load, set(d) | {"TrainConfig", "field(s)", "dict"})


@pytest.mark.parametrize("fields, match", [
    (dict(betas=5), "betas must be two numbers"), (dict(betas=(True, 0.5)), "betas must be two numbers"),
    (dict(augment=5), "augment must be augmentation names"), (dict(augment="bogus"), "augment: unknown augmentation"),
    (dict(net_options="ch"), "net_options must be a dict"), (dict(net_options={1: 2}), "net_options must be a dict"),
    (dict(data_root=(0.5,)), "data_root must be None or a folder path"), (dict(out_dir=5), "out_dir must be a folder path"),
    (dict(device=5), "device must be 'auto' or a torch device string"), (dict(channels=True), "channels must be 1 or 3"),
])
def test_train_config_names_bad_field_types(fields, match):
    from scoresde import TrainConfig

    with pytest.raises(ValueError, match=match):
        TrainConfig(**fields)
