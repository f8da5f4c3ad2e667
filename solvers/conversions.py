"""Prediction conversions among eps, x0, score, v and the flow velocity: the one copy both packages use.

All conversions use the general affine form x = alpha x0 + sigma eps, so they hold for VP, sub-VP,
VE and flow processes alike (no alpha^2 + sigma^2 = 1 shortcut). Per-sample alpha, sigma are (B,) or
(1,), in any float dtype: they are cast to x's dtype where they meet it. x and predictions are (B, *D).

v is the velocity of Salimans & Ho (2022, arXiv:2202.00512): v = alpha eps - sigma x0. The flow
velocity u = dx_t/dt = alpha' x0 + sigma' eps (flow matching; u = eps - x0 on FlowSDE) is a
different quantity; its conversions also need alpha' and sigma'.
"""

from __future__ import annotations

from torch import Tensor

from .protocol import PREDICTIONS, coef
from .validate import check_name

__all__ = [
    "convert", "eps_from_flow", "eps_from_score", "eps_from_v", "eps_from_x0", "flow_from", "from_eps",
    "score_from_eps", "to_eps", "v_from", "x0_from_eps", "x0_from_flow", "x0_from_v",
]


def eps_from_x0(x: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps = (x - alpha x0) / sigma."""
    return (x - coef(alpha, x) * x0) / coef(sigma, x)


def x0_from_eps(x: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x0 = (x - sigma eps) / alpha."""
    return (x - coef(sigma, x) * eps) / coef(alpha, x)


def score_from_eps(eps: Tensor, sigma: Tensor) -> Tensor:
    """score = grad log p_t(x) = -eps / sigma (Tweedie; Vincent 2011)."""
    return -eps / coef(sigma, eps)


def eps_from_score(score: Tensor, sigma: Tensor) -> Tensor:
    """eps = -sigma score."""
    return -coef(sigma, score) * score


def v_from(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """v = alpha eps - sigma x0."""
    return coef(alpha, x0) * eps - coef(sigma, x0) * x0


def eps_from_v(x: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps = (alpha v + sigma x) / (alpha^2 + sigma^2)."""
    a, s = coef(alpha, x), coef(sigma, x)
    return (a * v + s * x) / (a**2 + s**2)


def x0_from_v(x: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)."""
    a, s = coef(alpha, x), coef(sigma, x)
    return (a * x - s * v) / (a**2 + s**2)


def flow_from(x0: Tensor, eps: Tensor, d_alpha: Tensor, d_sigma: Tensor) -> Tensor:
    """Flow velocity u = dx_t/dt = alpha' x0 + sigma' eps (for FlowSDE: u = eps - x0)."""
    return coef(d_alpha, x0) * x0 + coef(d_sigma, x0) * eps


def eps_from_flow(x: Tensor, u: Tensor, alpha: Tensor, sigma: Tensor, d_alpha: Tensor, d_sigma: Tensor) -> Tensor:
    """eps = (alpha u - alpha' x) / (alpha sigma' - sigma alpha'), solving x = alpha x0 + sigma eps, u = alpha' x0 + sigma' eps."""
    a, s, da, ds = (coef(c, x) for c in (alpha, sigma, d_alpha, d_sigma))
    return (a * u - da * x) / (a * ds - s * da)


def x0_from_flow(x: Tensor, u: Tensor, alpha: Tensor, sigma: Tensor, d_alpha: Tensor, d_sigma: Tensor) -> Tensor:
    """x0 = (sigma' x - sigma u) / (alpha sigma' - sigma alpha')."""
    a, s, da, ds = (coef(c, x) for c in (alpha, sigma, d_alpha, d_sigma))
    return (ds * x - s * u) / (a * ds - s * da)


def to_eps(out: Tensor, src: str, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Convert a prediction of kind `src` at x to eps."""
    check_name("prediction", src, PREDICTIONS)
    if src == "eps":
        return out
    if src == "x0":
        return eps_from_x0(x, out, alpha, sigma)
    if src == "score":
        return eps_from_score(out, sigma)
    return eps_from_v(x, out, alpha, sigma)


def from_eps(eps: Tensor, dst: str, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Convert eps at x to a prediction of kind `dst`."""
    check_name("prediction", dst, PREDICTIONS)
    if dst == "eps":
        return eps
    if dst == "score":
        return score_from_eps(eps, sigma)
    x0 = x0_from_eps(x, eps, alpha, sigma)
    return x0 if dst == "x0" else v_from(x0, eps, alpha, sigma)


def convert(out: Tensor, src: str, dst: str, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Convert a prediction `out` of kind `src` at x to kind `dst` (kinds: eps, x0, score, v).

    x0 is taken directly where it is the source (x0 -> v does not pass through eps).
    """
    check_name("prediction", src, PREDICTIONS)
    check_name("prediction", dst, PREDICTIONS)
    if src == dst:
        return out
    if src == "x0" and dst == "v":
        return v_from(out, eps_from_x0(x, out, alpha, sigma), alpha, sigma)
    if src == "v" and dst == "x0":
        return x0_from_v(x, out, alpha, sigma)
    return from_eps(to_eps(out, src, x, alpha, sigma), dst, x, alpha, sigma)
