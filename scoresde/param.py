"""Parameterizations: `ScoreModel`, and the conversions among eps, x0, score, v and flow.

The conversions live in the ground floor, `solvers.conversions` (one copy for both packages), and
are re-exported here. They use the general affine form x = alpha x0 + sigma eps, so they hold for
VP, sub-VP and VE alike (no alpha^2 + sigma^2 = 1 shortcut). Per-sample alpha, sigma are (B,);
x and predictions are (B, *D).

v is the velocity of Salimans & Ho (2022, arXiv:2202.00512): v = alpha eps - sigma x0. The flow
velocity u = dx_t/dt = alpha' x0 + sigma' eps (flow matching; u = eps - x0 on FlowSDE) is a
different quantity; its conversions also need alpha' and sigma'.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from solvers.conversions import (
    convert,
    eps_from_flow,
    eps_from_score,
    eps_from_v,
    eps_from_x0,
    flow_from,
    from_eps,
    score_from_eps,
    to_eps,
    v_from,
    x0_from_eps,
    x0_from_flow,
    x0_from_v,
)
from solvers.protocol import PREDICTIONS
from solvers.validate import check_bool, check_name

from .sde import SDE
from .sde_discrete import DiscreteVPSDE

__all__ = [
    "C_NOISE", "NATIVE_PREDICTIONS", "ScoreModel", "check_c_noise", "convert", "eps_from_flow", "eps_from_score",
    "eps_from_v", "eps_from_x0", "flow_from", "from_eps", "has_learned_variance", "noise_input", "score_from_eps",
    "to_eps", "v_from", "x0_from_eps", "x0_from_flow", "x0_from_v",
]


NATIVE_PREDICTIONS = (*PREDICTIONS, "flow")


def _c_noise_t(sde: SDE, t: Tensor) -> Tensor:
    return t


def _c_noise_999t(sde: SDE, t: Tensor) -> Tensor:
    return 999.0 * t


def _c_noise_timestep(sde: SDE, t: Tensor) -> Tensor:
    if not isinstance(sde, DiscreteVPSDE):
        raise ValueError(f"c_noise='timestep' needs a DiscreteVPSDE, got {type(sde).__name__}")
    return sde.timestep(t)


def _c_noise_log_noise(sde: SDE, t: Tensor) -> Tensor:
    return -sde.lambda_(t)  # log(sigma / alpha)


def _c_noise_sigma(sde: SDE, t: Tensor) -> Tensor:
    return sde.sigma(t)


C_NOISE: dict[str, Callable[[SDE, Tensor], Tensor]] = {
    "t": _c_noise_t,
    "999t": _c_noise_999t,
    "timestep": _c_noise_timestep,
    "log_noise": _c_noise_log_noise,
    "sigma": _c_noise_sigma,
}


def check_c_noise(c_noise, sde: SDE | None = None):
    """c_noise itself if it names a C_NOISE map ("timestep" only with a DiscreteVPSDE, when `sde` is
    given) or is a callable t -> (B,); raise ValueError otherwise."""
    if isinstance(c_noise, str):
        if c_noise not in C_NOISE:
            raise ValueError(f"unknown c_noise {c_noise!r}; choose one of {sorted(C_NOISE)} or pass a callable")
        if c_noise == "timestep" and sde is not None and not isinstance(sde, DiscreteVPSDE):
            raise ValueError(f"c_noise='timestep' needs a DiscreteVPSDE, got {type(sde).__name__}")
    elif not callable(c_noise):
        raise ValueError(f"c_noise must be one of {sorted(C_NOISE)} or a callable, got {c_noise!r}")
    return c_noise


def noise_input(c_noise: str | Callable[[Tensor], Tensor], sde: SDE, t: Tensor) -> Tensor:
    """A network's time input for continuous times t (B,): the C_NOISE map named c_noise, or c_noise(t)."""
    if isinstance(c_noise, str):
        return C_NOISE[c_noise](sde, t)
    return c_noise(t)


def has_learned_variance(model) -> bool:
    """Whether `model` offers eps_and_variance(x, t) -> (eps, v) (and is not a ScoreModel built without it)."""
    return callable(getattr(model, "eps_and_variance", None)) and getattr(model, "learned_variance", True) is not False


class ScoreModel:
    """Wrap a network into the solvers' Model protocol.

    net(x, c_noise) or net(x, c_noise, y) returns a tensor of x's shape holding a prediction of
    kind `prediction` ("eps", "x0", "score", "v", or "flow": the velocity dx_t/dt = alpha' x0 +
    sigma' eps, which is eps - x0 on FlowSDE). `c_noise` maps continuous time t (B,) to the
    network's time input: "t"; "999t" (Song et al.'s continuous VP models); "timestep" (t N - 1
    for a network trained on a DiscreteVPSDE's integer steps); "log_noise" (log(sigma/alpha) =
    -lambda, a smooth low-frequency input); "sigma" (VE models); or a callable t -> (B,).

    learned_variance=True: the network returns twice x's channels (dim 1), the prediction first
    and then the raw variance output v_raw of Improved DDPM (Nichol & Dhariwal 2021,
    arXiv:2102.09672, Eq. 15; e.g. a UNet with learn_variance=True). The predictions use the first
    half; `eps_and_variance` returns eps and the interpolation weight v = (v_raw + 1) / 2 from the
    same evaluation, the reverse variance between grid times being exp(v log beta + (1 - v) log
    beta_tilde). (This v is the variance weight, not the velocity of `v()`.)

    Inputs are cast to the network's parameter dtype and outputs back to x's dtype. Every call of
    eps / x0 / score / v / flow / eps_and_variance is one network evaluation.
    """

    def __init__(
        self,
        net: Callable[..., Tensor],
        sde: SDE,
        prediction: str = "eps",
        *,
        c_noise: str | Callable = "t",
        learned_variance: bool = False,
    ):
        check_name("prediction", prediction, NATIVE_PREDICTIONS)
        if not callable(net):
            raise ValueError(f"net must be callable, got {type(net).__name__}")
        check_c_noise(c_noise, sde)
        check_bool("learned_variance", learned_variance)
        self.net = net
        self.sde = sde
        self.prediction = prediction
        self.c_noise = c_noise
        self.learned_variance = learned_variance

    def noise_input(self, t: Tensor) -> Tensor:
        """The network's time input for continuous times t (B,)."""
        return noise_input(self.c_noise, self.sde, t)

    def _net_dtype(self, x: Tensor) -> torch.dtype:
        if isinstance(self.net, nn.Module):
            for p in self.net.parameters():
                return p.dtype
        return x.dtype

    def _forward(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        """The network's whole output at x (B, *D), t (B,), in x's dtype, shape-checked."""
        if x.ndim < 1 or t.shape != (x.shape[0],):
            raise ValueError(f"expected t of shape ({x.shape[0] if x.ndim else '?'},), got {tuple(t.shape)}")
        if self.learned_variance and x.ndim < 2:
            raise ValueError(f"learned_variance needs data of shape (B, C, ...), got {tuple(x.shape)}")
        dtype = self._net_dtype(x)
        c = self.noise_input(t).to(dtype)
        out = self.net(x.to(dtype), c) if y is None else self.net(x.to(dtype), c, y)
        expected = (x.shape[0], 2 * x.shape[1], *x.shape[2:]) if self.learned_variance else tuple(x.shape)
        if out.shape != expected:
            raise ValueError(f"net returned shape {tuple(out.shape)}, expected {tuple(expected)}")
        return out.to(x.dtype)

    def predict(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The network's native prediction at x (B, *D), t (B,), in x's dtype."""
        out = self._forward(x, t, y)
        return out[:, : x.shape[1]] if self.learned_variance else out

    def _convert(self, out: Tensor, dst: str, x: Tensor, t: Tensor) -> Tensor:
        """The native prediction `out` at (x, t) as kind `dst` (eps, x0, score, v or flow)."""
        if dst == self.prediction:
            return out
        alpha, sigma = self.sde.alpha(t).to(x.dtype), self.sde.sigma(t).to(x.dtype)
        if self.prediction == "flow" or dst == "flow":
            d_alpha, d_sigma = self.sde.dalpha_dt(t).to(x.dtype), self.sde.dsigma_dt(t).to(x.dtype)
            if dst == "flow":
                eps = convert(out, self.prediction, "eps", x, alpha, sigma)
                return flow_from(x0_from_eps(x, eps, alpha, sigma), eps, d_alpha, d_sigma)
            if dst == "x0":
                return x0_from_flow(x, out, alpha, sigma, d_alpha, d_sigma)
            return convert(eps_from_flow(x, out, alpha, sigma, d_alpha, d_sigma), "eps", dst, x, alpha, sigma)
        return convert(out, self.prediction, dst, x, alpha, sigma)

    def _as(self, dst: str, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        return self._convert(self.predict(x, t, y), dst, x, t)

    def eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Noise prediction, (B, *D)."""
        return self._as("eps", x, t, y)

    def x0(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Data prediction E[x0 | x_t], (B, *D)."""
        return self._as("x0", x, t, y)

    def score(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Score grad_x log p_t(x), (B, *D)."""
        return self._as("score", x, t, y)

    def v(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Velocity alpha eps - sigma x0, (B, *D)."""
        return self._as("v", x, t, y)

    def flow(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Flow velocity dx_t/dt = alpha' x0 + sigma' eps (eps - x0 on FlowSDE), (B, *D)."""
        return self._as("flow", x, t, y)

    def eps_and_variance(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """eps (B, *D) and the variance weight v = (v_raw + 1) / 2 (B, *D) from one evaluation.

        The reverse variance from t to an earlier grid time s is exp(v log beta + (1 - v) log
        beta_tilde) (Nichol & Dhariwal 2021, Eq. 15). Needs learned_variance=True.
        """
        if not self.learned_variance:
            raise ValueError("eps_and_variance needs a ScoreModel built with learned_variance=True")
        out = self._forward(x, t, y)
        C = x.shape[1]
        # Nichol & Dhariwal 2021, Sec. 3.1: the network's output in [-1, 1] maps to the weight (v + 1) / 2
        return self._convert(out[:, :C], "eps", x, t), (out[:, C:] + 1.0) / 2.0
