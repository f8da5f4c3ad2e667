"""Reading what a model file's metadata and tensors claim before trusting them: bounded JSON entries, the step,
the backbone and the configurations it records, weights that fit that configuration and are finite, optimizer
state by parameter index. Every error names the file and the entry (scoresde.training.checkpoints reads through
these)."""

from __future__ import annotations

import json
import math

import torch
from torch import Tensor

from ..nn import DiTConfig, UNetConfig
from ..nn.unet import MAX_PARAMETERS
from .builders import build_net, net_kind_of
from .config import NET_KINDS, TrainConfig, net_kind

__all__ = [
    "MAX_JSON_CHARS", "MAX_JSON_DEPTH", "MAX_RANKS", "MAX_STEP", "NetConfig", "check_finite", "check_weights", "config_key",
    "json_depth", "meta_configs", "meta_json", "meta_net_kind", "meta_step", "one_line", "split_opt",
]

NetConfig = UNetConfig | DiTConfig  # a network configuration of either backbone


def config_key(kind: str) -> str:
    """The metadata entry that holds the network configuration of backbone `kind`: "unet_config", "dit_config"."""
    return f"{kind}_config"


MAX_JSON_CHARS = 1_000_000  # per metadata entry
MAX_JSON_DEPTH = 16  # nesting of [ and { (the configs nest 2 deep)
MAX_STEP = 10**15
MAX_RANKS = 1024  # loss sums in "log_interval" (the per-step seeds allow ranks < 2^10)


def json_depth(text: str) -> int:
    """Greatest nesting of [ and { in JSON text, outside strings (a linear scan: no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def meta_json(path, meta: dict[str, str], key: str, kind: type = dict):
    """The JSON object in metadata entry `key`, or ValueError naming the file and the entry."""
    if key not in meta:
        raise ValueError(f"{path}: metadata lacks {key!r}")
    text = meta[key]
    if len(text) > MAX_JSON_CHARS:
        raise ValueError(f"{path}: metadata {key!r} is {len(text)} characters (at most {MAX_JSON_CHARS})")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise ValueError(f"{path}: metadata {key!r} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: metadata {key!r} is not valid JSON ({one_line(e)})") from None
    if not isinstance(value, kind):
        raise ValueError(f"{path}: metadata {key!r} must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def meta_step(path, meta: dict[str, str]) -> int:
    text = meta.get("step")
    if text is None:
        raise ValueError(f"{path}: metadata lacks 'step'")
    if not (text.isascii() and text.isdigit() and len(text) <= 16) or int(text) > MAX_STEP:
        raise ValueError(f"{path}: metadata 'step' must be an integer in [0, {MAX_STEP}], got {text[:40]!r}")
    return int(text)


def meta_net_kind(path, meta: dict[str, str]) -> str:
    """The file's backbone, metadata "net_kind" ("unet" when absent: the files written before the DiT)."""
    kind = meta.get("net_kind", "unet")
    if kind not in NET_KINDS:
        raise ValueError(f"{path}: metadata 'net_kind' must be one of {list(NET_KINDS)}, got {kind[:40]!r}")
    return kind


def meta_configs(path, meta: dict[str, str]) -> tuple[TrainConfig, NetConfig, dict]:
    """(TrainConfig, UNetConfig or DiTConfig as "net_kind" says, SDE JSON) of a file's metadata, each
    checked, errors naming the file and the entry."""
    kind = meta_net_kind(path, meta)
    configs = []
    for key, cls in (("config", TrainConfig), (config_key(kind), NET_KINDS[kind][0])):
        d = meta_json(path, meta, key)
        try:
            configs.append(cls.from_dict(d))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: metadata {key!r}: {one_line(e)}") from None
    if net_kind(configs[0].net) != kind:
        raise ValueError(f"{path}: metadata 'net_kind' is {kind!r} but the config's net {configs[0].net!r} "
                         f"is a {net_kind(configs[0].net)!r} preset")
    return configs[0], configs[1], meta_json(path, meta, "sde")


def check_weights(path, net_config: NetConfig, state: dict[str, Tensor], what: str) -> None:
    """Refuse weights that do not fit `net_config` (names, shapes, count) or are not finite, before any
    network is built: a DiT's count comes from its configuration alone, the expected shapes from a
    network on the meta device (no memory)."""
    key = config_key(net_kind_of(net_config))
    if isinstance(net_config, DiTConfig) and net_config.parameter_count() > MAX_PARAMETERS:
        raise ValueError(f"{path}: {key} implies {net_config.parameter_count():,} parameters "
                         f"(at most {MAX_PARAMETERS:,})")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_net(net_config).state_dict().items()}
    count = sum(math.prod(s) for s in expected.values())
    if count > MAX_PARAMETERS:
        raise ValueError(f"{path}: {key} implies {count:,} parameters (at most {MAX_PARAMETERS:,})")
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{path}: {what} weights do not match {key}: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}" + (" ..." if len(missing) > 5 or len(extra) > 5 else ""))
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise ValueError(f"{path}: {what} weight {k!r} has shape {tuple(state[k].shape)}, {key} implies {shape}")
    check_finite(path, state, what)


def check_finite(path, tensors: dict[str, Tensor], what: str) -> None:
    for k, v in tensors.items():
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{path}: {what} tensor {k!r} holds non-finite values (NaN or inf)")


def split_opt(path, tensors: dict[str, Tensor]) -> dict[int, dict[str, Tensor]]:
    """Optimizer state by parameter index from tensors named "opt.<i>.<key>"."""
    opt: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            parts = k.split(".", 2)
            if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit() and len(parts[1]) <= 9) or not parts[2]:
                raise ValueError(f"{path}: tensor name {k[:80]!r} is not of the form 'opt.<index>.<name>'")
            opt.setdefault(int(parts[1]), {})[parts[2]] = v
    return opt
