"""Non-leaking data augmentation: transform training images and tell the network how.

A network trained on augmented images learns their distribution, not the data's, unless it is told
which transformation each image went through. Following Karras et al. 2022 (EDM,
arXiv:2206.00364, App. C.4; the same idea as the distribution augmentation of Jun et al. 2020,
arXiv:2003.08614), every training image is transformed with probability `p` per kind and the
network receives the transformation's parameters as a conditioning vector. The vector of the
identity transformation is all zeros, and a U-Net with `augment_dim > 0` called without it uses
zeros, so sampling and likelihood see the un-augmented data distribution with no extra argument,
while the shared weights are regularized by the transformed copies (useful for small data sets
such as the 1,437 training digits).

Kinds (applied in this order, each independently with probability p per image):

- "xflip": mirror left-right; label (1,).
- "yflip": mirror top-bottom; label (1,).
- "rot90": rotate by k quarter turns, k uniform in {1, 2, 3}; label one-hot of k (3,). Square images.
- "translate": shift by integers (dx, dy), each uniform in {-max_shift, ..., max_shift}, filling
  the uncovered border with `fill` (0: the background level of digits); label (dx, dy) / max_shift (2,).

Transformations act on the integer images before dequantization, so the dequantization noise of
the training input stays uniform inside every bin.
"""

from __future__ import annotations

import torch
from torch import Tensor

from solvers.validate import check_int, check_number

__all__ = ["AUGMENTATIONS", "augment", "augment_dim"]

AUGMENTATIONS: tuple[str, ...] = ("xflip", "yflip", "rot90", "translate")
_LABEL_DIMS = {"xflip": 1, "yflip": 1, "rot90": 3, "translate": 2}


def check_kinds(kinds) -> tuple[str, ...]:
    """`kinds` as a tuple, checked: known names, each at most once."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in AUGMENTATIONS]
    if bad:
        raise ValueError(f"unknown augmentation(s) {bad}; choose from {list(AUGMENTATIONS)}")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"augmentations repeat: {list(kinds)}")
    return kinds


def augment_dim(kinds) -> int:
    """Length of the conditioning vector for these kinds (0 for none)."""
    return sum(_LABEL_DIMS[k] for k in check_kinds(kinds))


def _translate(x: Tensor, dx: Tensor, dy: Tensor, s: int, fill: float) -> Tensor:
    """x (B, C, H, W) shifted right by dx (B,) and down by dy (B,) pixels, |dx|, |dy| <= s."""
    H, W = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (s, s, s, s), value=fill)
    out = x
    for ox in range(-s, s + 1):
        for oy in range(-s, s + 1):
            shifted = padded[..., s - oy:s - oy + H, s - ox:s - ox + W]
            out = torch.where(((dx == ox) & (dy == oy)).view(-1, 1, 1, 1), shifted, out)
    return out


def augment(
    images: Tensor, kinds, p: float, *, max_shift: int = 1, fill: float = 0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Augmented images (B, C, H, W) (same dtype) and their conditioning vectors (B, augment_dim(kinds)) float32.

    Draws from `generator` (on the images' device) only for the kinds given, in the module's order.
    """
    kinds = check_kinds(kinds)
    check_number("augmentation probability p", p, 0, 1)
    check_int("max_shift", max_shift, 1)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    B, dev = images.shape[0], images.device

    def coin() -> Tensor:
        return torch.rand(B, generator=generator, device=dev) < p

    x, labels = images, []
    for kind in AUGMENTATIONS:
        if kind not in kinds:
            continue
        on = coin()
        if kind in ("xflip", "yflip"):
            x = torch.where(on.view(-1, 1, 1, 1), x.flip(-1 if kind == "xflip" else -2), x)
            labels.append(on[:, None].float())
        elif kind == "rot90":
            if x.shape[-1] != x.shape[-2]:
                raise ValueError(f"rot90 needs square images, got {tuple(x.shape[-2:])}")
            k = torch.randint(1, 4, (B,), generator=generator, device=dev) * on
            for q in (1, 2, 3):
                x = torch.where((k == q).view(-1, 1, 1, 1), torch.rot90(x, q, dims=(-2, -1)), x)
            labels.append(torch.stack([(k == q).float() for q in (1, 2, 3)], dim=1))
        else:
            shift = torch.randint(-max_shift, max_shift + 1, (2, B), generator=generator, device=dev) * on
            x = _translate(x, shift[0], shift[1], max_shift, fill)
            labels.append(shift.t().float() / max_shift)
    vec = torch.cat(labels, dim=1) if labels else images.new_zeros((B, 0), dtype=torch.float32)
    return x, vec
