"""Consistency models (Song et al. 2023, arXiv:2303.01469) on every affine process of the toolkit.

A consistency function maps any point x_t of a probability-flow trajectory to the trajectory's point at
the boundary time t_eps. It is parameterized so that the boundary condition f(x, t_eps) = x holds by
construction:

    f(x, t) = c_skip(t) x + c_out(t) F(c_in(t) x, c_noise(t)),

F a free network. The coefficients generalize the EDM-style ones of Song et al. 2023 (App. C), which are
written for VE in the noise level sigma (there sigma_min = t_eps). On an affine process x_t = alpha x_0 +
sigma eps, x_t / alpha is a VE process in the noise level nu = sigma / alpha (`noise_level`), and its
boundary point x_eps / alpha_eps is rescaled by alpha_eps. So with nu_eps = nu(t_eps), a_eps = alpha(t_eps),
s_d = sigma_data:

    c_skip(t) = (a_eps / alpha) s_d^2 / ((nu - nu_eps)^2 + s_d^2)
    c_out(t)  = a_eps s_d (nu - nu_eps) / sqrt(s_d^2 + nu^2)
    c_in(t)   = 1 / (alpha sqrt(s_d^2 + nu^2)) = 1 / sqrt(sigma^2 + s_d^2 alpha^2)

On VE (alpha = 1, nu = sigma) these are Song et al.'s c_skip = s_d^2 / ((sigma - sigma_min)^2 + s_d^2),
c_out = s_d (sigma - sigma_min) / sqrt(s_d^2 + sigma^2) and EDM's c_in. At t = t_eps, c_skip = 1 and
c_out = 0 exactly (at t = t_eps, nu - nu_eps and a_eps / alpha are set to 0 and 1, not left to round-off).
The boundary time is t_eps rounded to t's dtype, so the condition is exact in float32 too.

`ConsistencyModel` wraps a network like `scoresde.ScoreModel` (the same noise inputs `c_noise`, dtype
handling and shape checks); its data prediction x0 is f, and eps / score / v / flow follow by the shared
conversions, so it is a `Model` that `scoresde.sample(model, solver="consistency")` can use. Its extra
method `consistency(x, t)` (= x0) is what the "consistency" solver calls. `FlowMapConsistency` is the exact
consistency function of an analytic model (its probability-flow map to t_eps), the yardstick of the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from solvers.conversions import convert
from solvers.protocol import PredictionWrapper, coef
from solvers.validate import check_bool, check_number

from ..param import ScoreModel
from ..sde import SDE

__all__ = [
    "DEFAULT_BOUNDARY_WIDTH", "ConsistencyModel", "FlowMapConsistency", "boundary_coefficients", "check_boundary_time",
    "noise_gap", "noise_level",
]

DEFAULT_BOUNDARY_WIDTH = 0.01  # noise level over which a denoiser-form model blends from x (at t_eps) to D


def noise_level(sde: SDE, t: Tensor) -> Tensor:
    """nu = sigma(t) / alpha(t), the EDM/VE noise level of x_t / alpha(t), (B,)."""
    return sde.sigma(t) / sde.alpha(t)


def check_boundary_time(sde: SDE, t_eps) -> float:
    """t_eps as a float in [0, T) (the process's own t_eps when None)."""
    if t_eps is None:
        return float(sde.t_eps)
    return check_number("t_eps", t_eps, 0.0, float(sde.T), high_open=True)


def _boundary(t_eps: float, t: Tensor) -> Tensor:
    """The boundary time t_eps rounded to t's dtype, as a float64 (1,) tensor on t's device."""
    return torch.tensor([t_eps], dtype=t.dtype, device=t.device).to(torch.float64)


def _time64(sde: SDE, t: Tensor) -> Tensor:
    """t (B,) as float64, where the terminal time T rounded to t's dtype (above T in float32 when T = 0.999, as
    on FlowSDE) is T itself: the time it stands for, which the SDE's float64 functions accept."""
    t64 = t.to(torch.float64)
    if t.dtype == torch.float64:
        return t64
    return torch.where(t == torch.tensor(sde.T, dtype=t.dtype, device=t.device), torch.full_like(t64, sde.T), t64)


def noise_gap(sde: SDE, t: Tensor, t_eps: float) -> Tensor:
    """nu(t) - nu(t_eps), float64 (B,), exactly 0 where t is the boundary time (t_eps rounded to t's dtype)."""
    t64, t_b = _time64(sde, t), _boundary(t_eps, t)
    d_nu = noise_level(sde, t64) - noise_level(sde, t_b)
    return torch.where(t64 == t_b, torch.zeros_like(d_nu), d_nu)


def boundary_coefficients(sde: SDE, t: Tensor, t_eps: float, sigma_data: float) -> tuple[Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in), each (B,) float64, at times t (B,) for the boundary time t_eps (rounded to t's dtype).

    c_skip(t_eps) = 1 and c_out(t_eps) = 0 exactly; see the module docstring for the formulas.
    """
    t64 = _time64(sde, t)
    t_b = _boundary(t_eps, t)
    alpha, nu = sde.alpha(t64), noise_level(sde, t64)
    a_eps = sde.alpha(t_b)
    at_boundary = t64 == t_b  # exact there, whatever path the vectorized exp / log took
    d_nu = noise_gap(sde, t, t_eps)
    ratio = torch.where(at_boundary, torch.ones_like(alpha), a_eps / alpha)
    sd2 = sigma_data**2
    # Song et al. 2023, App. C (c_skip, c_out in the noise level), with nu = sigma / alpha and the rescaling by alpha
    c_skip = ratio * sd2 / (d_nu**2 + sd2)
    c_out = a_eps * sigma_data * d_nu / torch.sqrt(sd2 + nu**2)
    c_in = 1.0 / (alpha * torch.sqrt(sd2 + nu**2))  # EDM's c_in of x / alpha (Karras et al. 2022, Table 1)
    return c_skip, c_out, c_in


class ConsistencyModel(ScoreModel):
    """A network F as a consistency model f(x, t) = c_skip(t) x + c_out(t) F(c_in x, c_noise(t)[, y]).

    net(x, c_noise[, y]) -> tensor of x's shape, as for `ScoreModel` (c_noise: "t", "999t", "timestep",
    "log_noise", "sigma" or a callable). sigma_data > 0: the data's standard deviation in the
    coefficients (0.5 for images in [-1, 1], Song et al. 2023). t_eps: the boundary time (the process's
    t_eps when None). scale_input: feed F the input c_in(t) x (EDM's scaling) instead of x itself
    (False keeps the input a `ScoreModel` teacher's network saw, so a student can start from its weights).
    net_prediction: None for the free network F above (Song et al. 2023); or the prediction kind of a
    diffusion network ("eps", "x0", "score", "v", "flow", as in `ScoreModel`), whose data prediction D(x, t)
    replaces F: f = c_skip x + c_den D with c_skip as above but with s_d = boundary_width and
    c_den = (nu - nu_eps) / sqrt((nu - nu_eps)^2 + boundary_width^2) (LCM, Luo et al. 2023, arXiv:2310.04378,
    in the noise level). With a narrow blend (boundary_width, default 0.01) f is D except just above t_eps,
    which is what a consistency function is there (the trajectory's end is x_t's denoised value), so a student
    that starts from a teacher's weights starts as the teacher's one-step denoiser, and the boundary condition
    still holds exactly (c_skip = 1, c_den = 0 at t_eps). sigma_data and scale_input then play no part
    (scale_input must stay False).

    x0(x, t) = consistency(x, t) = f, (B, *D); eps, score, v, flow are converted from it. One network
    evaluation per call.
    """

    def __init__(self, net: Callable[..., Tensor], sde: SDE, *, sigma_data: float = 0.5, t_eps: float | None = None,
                 c_noise: str | Callable = "t", scale_input: bool = False, net_prediction: str | None = None,
                 boundary_width: float | None = None):
        super().__init__(net, sde, "x0", c_noise=c_noise)
        self.sigma_data = check_number("sigma_data", sigma_data, 0.0, low_open=True)
        self.t_eps = check_boundary_time(sde, t_eps)
        self.scale_input = check_bool("scale_input", scale_input)
        self.net_prediction = net_prediction
        self._denoiser = None
        if net_prediction is None:
            if boundary_width is not None:
                raise ValueError("boundary_width is for net_prediction (a denoising network); net_prediction is None")
        else:
            if self.scale_input:
                raise ValueError("scale_input must be False with net_prediction: a denoising network sees x itself")
            self._denoiser = ScoreModel(net, sde, net_prediction, c_noise=c_noise)  # checks the name
            boundary_width = DEFAULT_BOUNDARY_WIDTH if boundary_width is None else boundary_width
            self.boundary_width = check_number("boundary_width", boundary_width, 0.0, low_open=True)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in) at t (B,), float64 (B,) each."""
        return boundary_coefficients(self.sde, t, self.t_eps, self.sigma_data)

    def predict(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """f(x, t) for x (B, *D), t (B,), in x's dtype (the model's native prediction, x0)."""
        if self._denoiser is not None:
            w = self.boundary_width
            c_skip = boundary_coefficients(self.sde, t, self.t_eps, w)[0]
            d_nu = noise_gap(self.sde, t, self.t_eps)
            # Luo et al. 2023 (LCM), Eq. (9) in the noise level: f = c_skip x + c_den D(x, t), D the net's data prediction
            c_den = d_nu / torch.sqrt(d_nu**2 + w**2)
            return coef(c_skip, x) * x + coef(c_den, x) * self._denoiser.x0(x, t, y)
        c_skip, c_out, c_in = self.coefficients(t)
        net_input = coef(c_in, x) * x if self.scale_input else x
        # Song et al. 2023, Eq. (7): f = c_skip x + c_out F
        return coef(c_skip, x) * x + coef(c_out, x) * self._forward(net_input, t, y)

    def consistency(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The consistency function f(x, t): the trajectory's point at t_eps, (B, *D)."""
        return self.predict(x, t, y)

    def config(self) -> dict:
        """The parameterization's options (JSON-serializable, c_noise when it is a name)."""
        return {"sigma_data": self.sigma_data, "t_eps": self.t_eps, "scale_input": self.scale_input,
                "net_prediction": self.net_prediction, "boundary_width": getattr(self, "boundary_width", None),
                "c_noise": self.c_noise if isinstance(self.c_noise, str) else "callable"}


class FlowMapConsistency(PredictionWrapper):
    """The exact consistency function of a model with an exact `flow_map(x, t, s)` (a single-Gaussian
    `scoresde.AnalyticModel`): f(x, t) = flow_map(x, t, t_eps). A `Model` whose x0 is f, like
    `ConsistencyModel`; the yardstick of the consistency tests."""

    def __init__(self, model, t_eps: float | None = None):
        if not callable(getattr(model, "flow_map", None)):
            raise ValueError(f"model must have an exact flow_map(x, t, s), got {type(model).__name__}")
        super().__init__(model)
        self.t_eps = check_boundary_time(model.sde, t_eps)

    def consistency(self, x: Tensor, t: Tensor) -> Tensor:
        """flow_map(x, t, t_eps), (B, *D); x itself where t = t_eps (rounded to t's dtype)."""
        out = self.model.flow_map(x, t, self.t_eps)
        t_b = torch.tensor(self.t_eps, dtype=t.dtype, device=t.device)
        return torch.where((t == t_b).reshape(-1, *([1] * (x.ndim - 1))), x, out)

    def predict(self, kind: str, x: Tensor, t: Tensor) -> Tensor:
        x0 = self.consistency(x, t)
        return convert(x0, "x0", kind, x, self.sde.alpha(t), self.sde.sigma(t))
