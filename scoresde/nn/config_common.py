"""What the backbone configurations (`UNetConfig`, `DiTConfig`) share: bounded integers, the
conditioning fields' checks, the output width and the JSON round trip."""

from __future__ import annotations

import dataclasses

from solvers.validate import check_bool, check_int, check_name, check_number, dataclass_from_dict

__all__ = ["EMBEDDINGS", "NetConfig", "bounded_int"]

EMBEDDINGS = ("positional", "fourier")


def bounded_int(name: str, value, low: int, high: int) -> None:
    """An integer >= low (that message first: it is the usual mistake), then <= high (a file's bound)."""
    check_int(name, value, low)
    check_int(name, value, None, high)


class NetConfig:
    """Mixin of a frozen dataclass config with the fields in_channels, out_channels, embedding,
    embedding_scale, num_classes, learn_variance and augment_dim, and a class attribute LIMITS."""

    LIMITS: dict

    def check_conditioning(self) -> None:
        """Check out_channels and the conditioning fields against LIMITS (ValueError naming the field)."""
        if self.out_channels is not None:
            bounded_int("out_channels", self.out_channels, 1, self.LIMITS["out_channels"])
        check_name("embedding", self.embedding, EMBEDDINGS)
        check_number("embedding_scale", self.embedding_scale, 0, low_open=True)
        if self.num_classes is not None:
            bounded_int("num_classes", self.num_classes, 1, self.LIMITS["num_classes"])
        check_bool("learn_variance", self.learn_variance)
        bounded_int("augment_dim", self.augment_dim, 0, self.LIMITS["augment_dim"])

    @property
    def output_channels(self) -> int:
        """Channels of the output: out_channels (or in_channels), doubled when learn_variance."""
        return (self.out_channels or self.in_channels) * (2 if self.learn_variance else 1)

    def to_dict(self) -> dict:
        """JSON-serializable fields (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        """Inverse of `to_dict`; unknown keys raise."""
        return dataclass_from_dict(cls, d)
