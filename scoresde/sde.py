"""Forward diffusion processes: VP (linear, cosine), sub-VP, VE, flow, and a discrete DDPM schedule.

Every process here is affine, x_t = alpha(t) x_0 + sigma(t) eps with eps ~ N(0, I), and solves the
linear SDE dx = a(t) x dt + g(t) dw with a(t) = d log alpha / dt and
g(t)^2 = d sigma^2 / dt - 2 a(t) sigma^2 (the moment equations of a linear SDE).

A subclass supplies `log_alpha`, `sigma`, `dlog_alpha_dt`, `g2`, `t_of_lambda`; everything else
(lambda, drift, prior, perturbation, reverse and probability-flow drifts) is shared. Times are float
tensors of shape (B,) in [0, T]; results are (B,) unless noted. See docs/sde.md for the math.

The discrete DDPM schedule (`DiscreteVPSDE`, `ddpm_betas`) lives in `scoresde.sde_discrete` and the
table of SDE names (`SDE_TABLE`, `make_sde`, `sde_from_config`) in `scoresde.sde_names`; both are
importable from here too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.protocol import GeneratorArg, bcast, pf_drift, randn, randn_like, reverse_drift
from solvers.validate import check_number

__all__ = ["SDE", "FlowSDE", "SubVPSDE", "VESDE", "VPSDE", "check_time"]  # and, lazily, the names in _ELSEWHERE


def values_checked(t: Tensor) -> bool:
    """Whether argument checks read t's values: only on the CPU, where reading them costs no device
    synchronization (on accelerators only shapes and dtypes are checked)."""
    return t.device.type == "cpu" and t.numel() > 0


def check_time(t: Tensor, T: float) -> None:
    """Raise ValueError unless t is a 1-D float tensor with values in [0, T] and no NaN.

    Value checks need the values on the host, so they run only for CPU tensors; on accelerators
    only the shape and dtype are checked (no host sync in sampling loops).
    """
    if not isinstance(t, Tensor):
        raise ValueError(f"t must be a torch.Tensor of shape (B,), got {type(t).__name__}")
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"t must be a float tensor, got {t.dtype}")
    if values_checked(t):
        if bool(torch.isnan(t).any()):
            raise ValueError("t contains NaN; valid times are in [0, T]")
        lo, hi = float(t.detach().min()), float(t.detach().max())  # t may carry grad (solvers.fit_grid)
        if lo < 0.0 or hi > T * (1 + 2 * torch.finfo(t.dtype).eps):  # T itself after rounding to t's dtype
            raise ValueError(f"t must lie in [0, T={T}], got values in [{lo}, {hi}]")


class SDE:
    """Base class: x_t = alpha(t) x_0 + sigma(t) eps, dx = a(t) x dt + g(t) dw.

    Attributes: kind ("vp", "subvp", "ve"), T (terminal time), t_eps (default end time of
    sampling), t_eps_likelihood (default start time of the likelihood ODE), prior_std (the prior
    is N(0, prior_std^2 I)).
    """

    kind: str = ""
    T: float = 1.0
    t_eps: float = 1e-3
    t_eps_likelihood: float = 1e-5
    prior_std: float = 1.0

    # --- supplied by subclasses (inputs already checked) ---
    def _log_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _dlog_alpha_dt(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _g2(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _t_of_lambda(self, lam: Tensor) -> Tensor:
        raise NotImplementedError

    # --- public ---
    def log_alpha(self, t: Tensor) -> Tensor:
        """log alpha(t), (B,)."""
        check_time(t, self.T)
        return self._log_alpha(t)

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale alpha(t), (B,)."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale sigma(t), (B,)."""
        check_time(t, self.T)
        return self._sigma(t)

    def lambda_(self, t: Tensor) -> Tensor:
        """Half log-SNR lambda(t) = log(alpha / sigma), strictly decreasing, (B,)."""
        check_time(t, self.T)
        return self._log_alpha(t) - torch.log(self._sigma(t))

    def t_of_lambda(self, lam: Tensor) -> Tensor:
        """Exact inverse of `lambda_`: the time whose half log-SNR is lam, (B,)."""
        if not isinstance(lam, Tensor) or lam.ndim != 1 or not lam.is_floating_point():
            raise ValueError(f"lam must be a 1-D float tensor, got {getattr(lam, 'shape', type(lam).__name__)}")
        if values_checked(lam):
            if bool(torch.isnan(lam).any()):
                raise ValueError("lam contains NaN")
            # valid: [lambda(T), lambda(0)], widened by round-off (lambda(0) = inf where sigma(0) = 0)
            ends = self.lambda_(torch.tensor([self.T, 0.0], dtype=torch.float64))
            lo, hi = float(ends[0]), float(ends[1])
            tol = 256 * torch.finfo(lam.dtype).eps  # lambda(T) computed in float32 differs by ~1e-5
            lam_min, lam_max = float(lam.detach().min()), float(lam.detach().max())
            if lam_min < lo - tol * max(1.0, abs(lo)) or lam_max > hi + tol * max(1.0, abs(hi)):
                raise ValueError(
                    f"lam must lie in [lambda(T), lambda(0)] = [{lo}, {hi}], got values in [{lam_min}, {lam_max}]"
                )
        return self._t_of_lambda(lam)

    def dlog_alpha_dt(self, t: Tensor) -> Tensor:
        """Drift coefficient a(t) = d log alpha / dt, so that f(x, t) = a(t) x; (B,)."""
        check_time(t, self.T)
        return self._dlog_alpha_dt(t)

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient g(t)^2 = d sigma^2/dt - 2 a(t) sigma^2, (B,)."""
        check_time(t, self.T)
        return self._g2(t)

    def dalpha_dt(self, t: Tensor) -> Tensor:
        """d alpha / dt = a(t) alpha(t), (B,)."""
        return self.dlog_alpha_dt(t) * self.alpha(t)

    def dsigma_dt(self, t: Tensor) -> Tensor:
        """d sigma / dt = (g^2 + 2 a sigma^2) / (2 sigma), from the moment equation, (B,)."""
        sigma = self.sigma(t)
        return (self.g2(t) + 2.0 * self.dlog_alpha_dt(t) * sigma**2) / (2.0 * sigma)

    def g(self, t: Tensor) -> Tensor:
        """Diffusion coefficient g(t), (B,)."""
        return torch.sqrt(self.g2(t))

    def f(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift f(x, t) = a(t) x; x (B, *D) -> (B, *D)."""
        return bcast(self.dlog_alpha_dt(t), x) * x

    def perturb(self, x0: Tensor, t: Tensor, *, generator: GeneratorArg = None) -> tuple[Tensor, Tensor]:
        """Sample x_t ~ p(x_t | x_0): returns (x_t, eps) with x_t = alpha x_0 + sigma eps, both (B, *D)."""
        eps = randn_like(x0, generator)
        return bcast(self.alpha(t), x0) * x0 + bcast(self.sigma(t), x0) * eps, eps

    def prior_sample(self, shape, *, generator: GeneratorArg = None, device=None, dtype=None) -> Tensor:
        """A sample of the prior N(0, prior_std^2 I) of `shape` (B, *D)."""
        return self.prior_std * randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log-density of the prior N(0, prior_std^2 I) at z (B, *D), in nats, (B,)."""
        d = z[0].numel()
        s2 = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * s2) - z.flatten(1).pow(2).sum(1) / (2 * s2)

    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the reverse-time SDE f - g^2 score (Song et al. 2021, Eq. 6), (B, *D)."""
        return reverse_drift(self, x, t, score)

    def pf_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the probability-flow ODE f - g^2 score / 2 (Song et al. 2021, Eq. 13), (B, *D)."""
        return pf_drift(self, x, t, score)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    def _config(self) -> dict:
        return {}

    def config(self) -> dict:
        """JSON-serializable description: {"type": class name, **constructor arguments}."""
        return {"type": type(self).__name__, **self._config()}


def _vp_log_alpha_from_lambda(lam: Tensor) -> Tensor:
    # alpha^2 + sigma^2 = 1 and lambda = log(alpha/sigma)  =>  alpha^2 = sigmoid(2 lambda)
    return -0.5 * torch.nn.functional.softplus(-2.0 * lam)


def _vp_sigma(log_alpha: Tensor) -> Tensor:
    # sigma = sqrt(1 - alpha^2), computed as sqrt(-expm1(2 log alpha)) to keep precision near t = 0;
    # the clamp removes round-off only (log alpha is 0 up to rounding at t = 0)
    return torch.sqrt(torch.clamp(-torch.expm1(2.0 * log_alpha), min=0.0))


SCHEDULES = ("linear", "cosine")


class VPSDE(SDE):
    """Variance-preserving SDE dx = -beta(t)/2 x dt + sqrt(beta(t)) dw (Song et al. 2021, Eq. 11).

    schedule="linear": beta(t) = beta_min + t (beta_max - beta_min), T = 1 (DDPM in continuous time).
    schedule="cosine": alpha(t)^2 = cos^2(pi/2 (t + s)/(1 + s)) / cos^2(pi/2 s/(1 + s)) (Nichol &
    Dhariwal 2021); alpha reaches 0 at t = 1, so T = 0.9946 keeps the log-SNR finite
    (lambda(T) ≈ -4.78, the end time DPM-Solver uses). beta_min, beta_max are for "linear" only; s
    for "cosine" only. Defaults: beta_min = 0.1, beta_max = 20, s = 0.008.
    """

    kind = "vp"

    def __init__(
        self,
        beta_min: float | None = None,
        beta_max: float | None = None,
        *,
        schedule: str = "linear",
        s: float | None = None,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")
        self.schedule = schedule
        if schedule == "linear":
            if s is not None:
                raise ValueError("s applies to schedule='cosine' only")
            self.beta_min = 0.1 if beta_min is None else check_number("beta_min", beta_min, 0)
            self.beta_max = 20.0 if beta_max is None else check_number("beta_max", beta_max, 0, low_open=True)
            if not self.beta_min < self.beta_max:
                raise ValueError(f"need beta_min < beta_max, got beta_min={self.beta_min}, beta_max={self.beta_max}")
            self.T = 1.0
        else:
            if beta_min is not None or beta_max is not None:
                raise ValueError("beta_min and beta_max apply to schedule='linear' only; the cosine schedule takes s")
            self.s = 0.008 if s is None else check_number("s", s, 0, low_open=True)
            self.T = 0.9946
            theta_0 = 0.5 * math.pi * self.s / (1 + self.s)
            self._cos0, self._sin0, self._tan0 = math.cos(theta_0), math.sin(theta_0), math.tan(theta_0)

    def _config(self) -> dict:
        if self.schedule == "linear":
            return {"beta_min": self.beta_min, "beta_max": self.beta_max, "schedule": "linear"}
        return {"schedule": "cosine", "s": self.s}

    def _log_alpha(self, t: Tensor) -> Tensor:
        if self.schedule == "linear":
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        # alpha = cos(theta_0 + delta) / cos(theta_0) = cos(delta) - tan(theta_0) sin(delta), delta = pi t / (2 (1 + s)),
        # written with log1p so that it stays exact for small t
        delta = 0.5 * math.pi * t / (1 + self.s)
        return torch.log1p(-2.0 * torch.sin(0.5 * delta) ** 2 - self._tan0 * torch.sin(delta))

    def _sigma(self, t: Tensor) -> Tensor:
        return _vp_sigma(self._log_alpha(t))

    def _beta(self, t: Tensor) -> Tensor:
        if self.schedule == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        # beta = -2 d log alpha / dt = pi/(1+s) tan(pi/2 (t+s)/(1+s))
        return math.pi / (1 + self.s) * torch.tan(0.5 * math.pi * (t + self.s) / (1 + self.s))

    def _dlog_alpha_dt(self, t: Tensor) -> Tensor:
        return -0.5 * self._beta(t)

    def _g2(self, t: Tensor) -> Tensor:
        return self._beta(t)

    def _log_alpha_from_lambda(self, lam: Tensor) -> Tensor:
        return _vp_log_alpha_from_lambda(lam)

    def _t_of_lambda(self, lam: Tensor) -> Tensor:
        return self._t_of_log_alpha(self._log_alpha_from_lambda(lam))

    def _t_of_log_alpha(self, log_alpha: Tensor) -> Tensor:
        if self.schedule == "linear":
            # solve (bmax - bmin)/4 t^2 + bmin/2 t + log_alpha = 0 in the cancellation-free form
            b = 0.5 * self.beta_min
            return -2.0 * log_alpha / (b + torch.sqrt(b**2 - (self.beta_max - self.beta_min) * log_alpha))
        # delta = theta - theta_0 with cos(theta) = alpha cos(theta_0), as atan2(sin(delta), cos(delta)) where
        # sin(theta) - alpha sin(theta_0) = (1 - alpha^2) / (sin(theta) + alpha sin(theta_0)) avoids cancellation
        alpha = torch.exp(log_alpha)
        one_minus_a2 = -torch.expm1(2.0 * log_alpha)
        sin_theta = torch.sqrt(1.0 - (alpha * self._cos0) ** 2)
        sin_delta = self._cos0 * one_minus_a2 / (sin_theta + alpha * self._sin0)
        cos_delta = alpha * self._cos0**2 + sin_theta * self._sin0
        return 2.0 * (1 + self.s) / math.pi * torch.atan2(sin_delta, cos_delta)


class SubVPSDE(VPSDE):
    """Sub-VP SDE dx = -beta/2 x dt + sqrt(beta (1 - exp(-2 int_0^t beta))) dw (Song et al. 2021, Eq. 12).

    Same alpha as the linear VP SDE; sigma = 1 - alpha^2 (so its variance stays below VP's).
    """

    kind = "subvp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        super().__init__(beta_min, beta_max, schedule="linear")

    def _config(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def _sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(2.0 * self._log_alpha(t))

    def _g2(self, t: Tensor) -> Tensor:
        # g^2 = beta (1 - alpha^4) = beta (1 - exp(-2 int beta))
        return self._beta(t) * -torch.expm1(4.0 * self._log_alpha(t))

    def _log_alpha_from_lambda(self, lam: Tensor) -> Tensor:
        # alpha / (1 - alpha^2) = e^lam  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^(2 lam)))
        #                                       = 2 / (e^-lam + sqrt(e^(-2 lam) + 4))  for lam > 0, where
        # the first form gives inf - inf at lam = inf (t = 0); each form sees only its half of the line
        neg, pos = lam.clamp(max=0.0), lam.clamp(min=0.0)
        root = torch.exp(0.5 * torch.logaddexp(torch.zeros_like(neg), 2.0 * neg + math.log(4.0)))
        e = torch.exp(-pos)
        high = math.log(2.0) - torch.log(e + torch.sqrt(e**2 + 4.0))
        return torch.where(lam > 0, high, neg + math.log(2.0) - torch.log1p(root))


class VESDE(SDE):
    """Variance-exploding SDE dx = sqrt(d sigma^2/dt) dw with sigma(t) = sigma_min (sigma_max/sigma_min)^t
    (Song et al. 2021, Eq. 9); alpha = 1, g = sigma(t) sqrt(2 log(sigma_max/sigma_min)).

    The prior is N(0, sigma_max^2 I). Defaults sigma_min = 0.01, sigma_max = 50.
    """

    kind = "ve"
    t_eps = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min = check_number("sigma_min", sigma_min, 0, low_open=True)
        self.sigma_max = check_number("sigma_max", sigma_max, 0, low_open=True)
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}")
        self.prior_std = self.sigma_max
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _config(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _dlog_alpha_dt(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _g2(self, t: Tensor) -> Tensor:
        return 2.0 * self._log_ratio * self._sigma(t) ** 2

    def _t_of_lambda(self, lam: Tensor) -> Tensor:
        # alpha = 1, so lambda = -log sigma = -log sigma_min - t log(sigma_max / sigma_min)
        return (-lam - math.log(self.sigma_min)) / self._log_ratio


class FlowSDE(SDE):
    """The flow-matching / rectified-flow path x_t = (1 - t) x_0 + t eps (Lipman et al. 2023; Liu et al. 2023).

    As an SDE: a(t) = d log alpha/dt = -1/(1 - t) and g(t)^2 = d sigma^2/dt - 2 a sigma^2 = 2t/(1 - t),
    so its probability-flow ODE is the flow-matching ODE dx/dt = E[eps - x_0 | x_t].
    lambda = log((1 - t)/t), t = sigmoid(-lambda). alpha reaches 0 at t = 1, so T = 0.999
    (lambda(T) ≈ -6.9) keeps the log-SNR finite; the prior is N(0, I).
    """

    kind = "flow"
    T = 0.999

    def _config(self) -> dict:
        return {}

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.log1p(-t)

    def _sigma(self, t: Tensor) -> Tensor:
        return t

    def _dlog_alpha_dt(self, t: Tensor) -> Tensor:
        return -1.0 / (1.0 - t)

    def _g2(self, t: Tensor) -> Tensor:
        return 2.0 * t / (1.0 - t)

    def _t_of_lambda(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-lam)

    def dsigma_dt(self, t: Tensor) -> Tensor:
        check_time(t, self.T)
        return torch.ones_like(t)


# names defined in the two modules beside this one (imported on first use: they import this one)
_ELSEWHERE = {
    "DISCRETE_SCHEDULES": "sde_discrete", "DiscreteVPSDE": "sde_discrete", "ddpm_betas": "sde_discrete",
    "SDE_NAMES": "sde_names", "SDE_TABLE": "sde_names", "make_sde": "sde_names", "sde_from_config": "sde_names",
}


def __getattr__(name: str):
    if name == "AffineSDE":
        import warnings

        warnings.warn("scoresde.AffineSDE is deprecated; use scoresde.SDE", DeprecationWarning, stacklevel=2)
        return SDE
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(f"scoresde.{_ELSEWHERE[name]}"), name)
    raise AttributeError(f"module 'scoresde.sde' has no attribute {name!r}")
