"""Argument validators shared by both packages: each raises ValueError naming the value and what is valid.

Booleans are never accepted as numbers (``True`` is not an order or a step size).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

__all__ = ["check_bool", "check_choice", "check_int", "check_name", "check_number", "dataclass_from_dict"]


def check_bool(name: str, value) -> bool:
    """value itself, unless it is not a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value, choices: Iterable):
    """value itself, unless it is not one of `choices` ("order must be one of [1, 2, 3], got 4")."""
    choices = list(choices)
    bool_mixup = isinstance(value, bool) and not all(isinstance(c, bool) for c in choices)
    # 2.0 == 2: among integer choices a float would pass `in` and be recorded as given
    type_mixup = all(type(c) is int for c in choices) and not isinstance(value, numbers.Integral)
    if bool_mixup or type_mixup or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_name(kind: str, value, names: Iterable[str]) -> str:
    """value itself, unless it is not one of `names` ("unknown grid 'x'; choose one of [...]")."""
    names = list(names)
    if not isinstance(value, str) or value not in names:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {names}")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range(kind: str, low, high, low_open: bool, high_open: bool) -> str:
    """'an integer in [1, 4]', 'a finite number > 0', 'a number in (0, 1]', ... for the messages."""
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    finite = "" if kind == "an integer" else "finite "
    article, noun = kind.split(" ", 1)
    if low is not None:
        return f"{article} {finite}{noun} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{article} {finite}{noun} {'<' if high_open else '<='} {high}"
    return f"{article} {finite}{noun}"


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """value itself, unless it is not an integer in [low, high] (either end may be open: None)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        raise ValueError(f"{name} must be {_range('an integer', low, high, False, False)}, got {value!r}")
    return value


def check_number(
    name: str,
    value,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """float(value), unless it is not a finite number in the interval from low to high.

    Open ends (`low_open`, `high_open`) exclude the bound. With both bounds the message reads
    "must be a number in (0, 1]"; with one, "must be a finite number > 0".
    """
    ok = _is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{name} must be {_range('a number', low, high, low_open, high_open)}, got {value!r}")
    return float(value)


def dataclass_from_dict(cls, d: dict):
    """cls(**d) for a configuration dataclass, naming unknown keys and the valid ones in the error."""
    if not isinstance(d, dict):
        raise ValueError(f"a {cls.__name__} must be read from a dict, got {type(d).__name__}")
    names = set(cls.__dataclass_fields__)
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid: {sorted(names)}")
    return cls(**d)
