"""Consistency objectives: distillation (CD), training (CT, iCT) and easy consistency tuning (ECT).

Each loss is a function of (student, target, [teacher,] x0, generator, ...) returning a scalar to minimize:
`student` and `target` are consistency models (`ConsistencyModel`: their x0 is f; the target is the EMA
student, or the student itself for iCT / ECT, and is evaluated without gradients), `teacher` any `Model`
(a `ScoreModel`, an analytic model), x0 a data batch (B, *D).

Noise levels are nu = sigma / alpha (the EDM / VE sigma of x_t / alpha), so the formulas of the papers,
written for VE, carry over to every affine process:

- CD (Song et al. 2023, arXiv:2303.01469, Algorithm 2): x_{n+1} = alpha x0 + sigma z at a random interval
  of an N-point Karras grid, x_n one deterministic teacher step from t_{n+1} to t_n (`TEACHER_STEPS`: "ddim"
  (DDIM, which is EDM's Euler step in the noise level), "heun", "dpm_solver_2", the update functions of
  solvers/ddim.py, heun.py and dpm_solver.py); loss d(f(x_{n+1}, t_{n+1}), f^-(x_n, t_n)).
- CT / iCT (Song & Dhariwal 2023, arXiv:2310.14189): x_n and x_{n+1} share z; the interval is drawn from the
  lognormal noise-level distribution (P_mean = -1.1, P_std = 2), weighted 1 / (nu_{n+1} - nu_n), with the
  pseudo-Huber distance (c = 0.00054 sqrt(d)) and the curriculum N(k) (`ict_discretization`).
- ECT (Geng et al. 2024, arXiv:2406.14548): nu_t lognormal, nu_r = nu_t (1 - n(nu_t) / q^a), n(nu) = 1 + k
  sigmoid(-b nu), clamped at the boundary's nu_min (a = 0: the diffusion denoising loss; the gap shrinks
  towards dt -> 0 stage by stage, `ect_stage`), weighted 1 / (nu_t - nu_r) with the clamped nu_r.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from solvers.ddim import ddim_step_per_sample
from solvers.dpm_solver import dpm_solver_1_step, dpm_solver_2_step
from solvers.grids import karras
from solvers.heun import euler_update, heun_update
from solvers.protocol import coef, randn
from solvers.validate import check_choice, check_int, check_number

from .consistency import noise_level

__all__ = [
    "DISTANCES", "TEACHER_STEPS", "cd_fixed_point", "cd_loss", "cd_pair_loss", "ct_loss", "distance", "ect_loss",
    "ect_stage", "ict_discretization", "karras_times", "teacher_step",
]

TEACHER_STEPS = ("ddim", "heun", "dpm_solver_2")
DISTANCES = ("l2", "pseudo_huber")


# --- the teacher's one deterministic step, per-sample times ----------------------------------------------

def teacher_step(teacher, x: Tensor, s: Tensor, t: Tensor, method: str = "heun") -> Tensor:
    """One probability-flow ODE step of `teacher` from times s to the less noisy t (both (B,) float64); x (B, *D).

    "ddim": 1 evaluation, order 1; "heun" (EDM's Heun in the noise level): 2, order 2; "dpm_solver_2" (r1 = 1/2):
    2, order 2. Returns x_t (B, *D).
    """
    check_choice("teacher step", method, TEACHER_STEPS)
    if method == "ddim":
        return ddim_step_per_sample(teacher, x, s, t)
    sde = teacher.sde
    alpha_s, sigma_s, lam_s = sde.alpha(s), sde.sigma(s), sde.lambda_(s)
    alpha_t, sigma_t, lam_t = sde.alpha(t), sde.sigma(t), sde.lambda_(t)
    eps_s = teacher.eps(x, s.to(x.dtype))
    if method == "heun":
        n_s, n_t = sigma_s / alpha_s, sigma_t / alpha_t  # y = x / alpha integrates dy/dn = eps (solvers/heun.py)
        y_s = x / coef(alpha_s, x)
        y_euler = euler_update(y_s, eps_s, n_s.to(x.dtype), n_t.to(x.dtype))
        eps_t = teacher.eps(coef(alpha_t, x) * y_euler, t.to(x.dtype))
        return coef(alpha_t, x) * heun_update(y_s, eps_s, eps_t, n_s.to(x.dtype), n_t.to(x.dtype))
    h = lam_t - lam_s
    s1 = sde.t_of_lambda(lam_s + 0.5 * h)
    u1 = dpm_solver_1_step(x, eps_s, alpha_s, sde.alpha(s1), sde.sigma(s1), 0.5 * h)
    eps_s1 = teacher.eps(u1, s1.to(x.dtype))
    return dpm_solver_2_step(x, eps_s, eps_s1, alpha_s, alpha_t, sigma_t, h, 0.5)


def cd_fixed_point(teacher, x: Tensor, ts: Tensor, method: str = "heun") -> Tensor:
    """The consistency function CD converges to at a given discretization: the teacher's steps chained along the
    decreasing float64 grid ts (N + 1,) from ts[0] down to ts[-1] (the boundary), x (B, *D) at ts[0]."""
    for i in range(len(ts) - 1):
        s, t = (ts[j].reshape(1).expand(x.shape[0]) for j in (i, i + 1))
        x = teacher_step(teacher, x, s, t, method)
    return x


# --- distances and discretizations ---------------------------------------------------------------------

def distance(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Per-sample distance (B,) between a and b (B, *D): "l2" the mean squared difference, "pseudo_huber"
    sqrt(|a - b|^2 + c^2) - c with c = 0.00054 sqrt(d) (Song & Dhariwal 2023, Sec. 3.3)."""
    check_choice("distance", kind, DISTANCES)
    diff = (a - b).flatten(1)
    if kind == "l2":
        return diff.pow(2).mean(1)
    c = 0.00054 * math.sqrt(diff.shape[1])
    # Song & Dhariwal 2023, Eq. (8): d(x, y) = sqrt(|x - y|^2 + c^2) - c
    return torch.sqrt(diff.pow(2).sum(1) + c**2) - c


def karras_times(sde, N: int, t_eps: float | None = None) -> Tensor:
    """The N boundary times t_1 = t_eps < ... < t_N = T of Song et al. 2023 (Karras et al.'s rho = 7 spacing
    in the noise level), float64 (N,), increasing; t_eps: the consistency model's boundary time (the
    process's t_eps when None). The losses pass the student's, so its net is never evaluated below it."""
    check_int("N", N, 2)
    return karras(sde, N - 1, t_end=t_eps).flip(0)


def ict_discretization(k: int, K: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's curriculum N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2(s1 / s0) + 1)) (Song &
    Dhariwal 2023, Eq. 9), at training step k of K."""
    check_int("K", K, 1)
    check_int("k", k, 0)
    check_int("s0", s0, 1)
    check_int("s1", s1, s0)
    K_prime = max(1, math.floor(K / (math.log2(s1 / s0) + 1)))
    return min(s0 * 2 ** (k // K_prime), s1) + 1


def ect_stage(k: int, K: int, stages: int = 8) -> int:
    """ECT's stage a = floor(k / (K / stages)) at training step k of K: Delta t halves (q = 2) each stage."""
    check_int("K", K, 1)
    check_int("k", k, 0)
    check_int("stages", stages, 1)
    return min(k * stages // K, stages)


def _lognormal_intervals(nu: Tensor, B: int, P_mean: float, P_std: float, generator) -> Tensor:
    """B interval indices n in 0..N-2 drawn with p(n) ∝ erf((log nu_{n+1} - P_mean) / (sqrt2 P_std)) -
    erf((log nu_n - P_mean) / (sqrt2 P_std)) (Song & Dhariwal 2023, Sec. 3.5); nu (N,) increasing."""
    cdf = torch.erf((torch.log(nu) - P_mean) / (math.sqrt(2) * P_std))
    p = (cdf[1:] - cdf[:-1]).clamp_min(0)
    dev = _device(generator) or p.device  # multinomial draws on its generator's device
    return torch.multinomial((p / p.sum()).to(dev), B, replacement=True, generator=_one(generator)).cpu()


def _one(generator):
    """torch.multinomial takes one generator: the first of a list (or None)."""
    return generator[0] if isinstance(generator, (list, tuple)) else generator


def _device(generator):
    """The device of the (first) generator, or None."""
    g = _one(generator)
    return None if g is None else g.device


def _f(model, x: Tensor, t: Tensor) -> Tensor:
    """The consistency function of `model` (its x0) at x (B, *D) and float64 times t (B,), in x's dtype."""
    return model.x0(x, t.to(x.dtype))


# --- the losses --------------------------------------------------------------------------------------------

def cd_pair_loss(student, target, teacher, x0: Tensor, t_next: Tensor, t_cur: Tensor, z: Tensor,
                 method: str = "heun", dist: str = "l2") -> Tensor:
    """Per-sample CD loss (B,) at the intervals t_next > t_cur ((B,) float64) for data x0 and noise z (B, *D)."""
    sde = student.sde
    x_next = coef(sde.alpha(t_next), x0) * x0 + coef(sde.sigma(t_next), x0) * z
    with torch.no_grad():
        x_cur = teacher_step(teacher, x_next, t_next, t_cur, method)
        f_target = _f(target, x_cur, t_cur)
    # Song et al. 2023, Eq. (7) / Algorithm 2: d(f_theta(x_{n+1}, t_{n+1}), f_theta-(x^phi_n, t_n))
    return distance(_f(student, x_next, t_next), f_target, dist)


def cd_loss(student, target, teacher, x0: Tensor, *, generator=None, N: int = 18, method: str = "heun",
            dist: str = "l2") -> Tensor:
    """Consistency distillation (Song et al. 2023, Algorithm 2): scalar mean loss over the batch x0 (B, *D),
    the interval n uniform in 1..N-1 of `karras_times(sde, N, student.t_eps)`."""
    ts = karras_times(student.sde, N, student.t_eps).to(x0.device)
    n = torch.randint(0, N - 1, (x0.shape[0],), generator=_one(generator), device=_device(generator))
    z = randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    n = n.to(x0.device)
    return cd_pair_loss(student, target, teacher, x0, ts[n + 1], ts[n], z, method, dist).mean()


def _consistency_pair(student, target, x0: Tensor, t_next: Tensor, t_cur: Tensor, z: Tensor, weight: Tensor,
                      dist: str) -> Tensor:
    """Mean of weight d(f(x_{t_next}), f^-(x_{t_cur})), x_t = alpha_t x0 + sigma_t z with one z for both."""
    sde = student.sde
    x_next = coef(sde.alpha(t_next), x0) * x0 + coef(sde.sigma(t_next), x0) * z
    x_cur = coef(sde.alpha(t_cur), x0) * x0 + coef(sde.sigma(t_cur), x0) * z
    with torch.no_grad():
        f_target = _f(target, x_cur, t_cur)
    # Song & Dhariwal 2023, Eq. (6): lambda(sigma_i) d(f_theta(x + sigma_{i+1} z), f_theta-(x + sigma_i z))
    return (weight.to(x0.dtype) * distance(_f(student, x_next, t_next), f_target, dist)).mean()


def ct_loss(student, target, x0: Tensor, *, generator=None, N: int = 11, P_mean: float = -1.1, P_std: float = 2.0,
            dist: str = "pseudo_huber") -> Tensor:
    """Improved consistency training (Song & Dhariwal 2023): scalar loss over x0 (B, *D) at the discretization
    N (`ict_discretization(k, K)` at step k of K); target is the student itself (stop-gradient) in iCT."""
    check_number("P_std", P_std, 0, low_open=True)
    check_number("P_mean", P_mean)
    sde = student.sde
    ts = karras_times(sde, N, student.t_eps)  # ends at the student's boundary time
    nu = noise_level(sde, ts)
    n = _lognormal_intervals(nu, x0.shape[0], P_mean, P_std, generator)
    z = randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    weight = 1.0 / (nu[n + 1] - nu[n])  # Song & Dhariwal 2023, Sec. 3.1: lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i)
    return _consistency_pair(student, target, x0, ts[n + 1].to(x0.device), ts[n].to(x0.device), z,
                             weight.to(x0.device), dist)


def ect_loss(student, target, x0: Tensor, *, generator=None, stage: int = 0, q: float = 2.0, k: float = 8.0,
             b: float = 1.0, P_mean: float = -1.1, P_std: float = 2.0, dist: str = "pseudo_huber") -> Tensor:
    """Easy consistency tuning (Geng et al. 2024): scalar loss over x0 (B, *D) at `stage` a (`ect_stage`).

    nu_t ~ lognormal(P_mean, P_std) clipped to the process's noise levels (above the student's boundary level
    nu_min = nu(t_eps)), nu_r = max(nu_t (1 - n(nu_t) / q^a), nu_min) with n(nu) = 1 + k sigmoid(-b nu): the target
    is taken at nu_r (at t_eps where the formula falls below nu_min) and the weight is 1 / (nu_t - nu_r) with that
    same nu_r, so weight and target agree. The student starts from a pretrained diffusion model.
    """
    check_int("stage", stage, 0)
    for name, v in (("q", q), ("k", k), ("b", b), ("P_std", P_std)):
        check_number(name, v, 0, low_open=True)
    sde = student.sde
    ends = torch.tensor([student.t_eps, sde.T], dtype=torch.float64)
    nu_min, nu_max = noise_level(sde, ends)
    log_nu = P_mean + P_std * randn((x0.shape[0],), generator=_one(generator), dtype=torch.float64)
    nu_t = log_nu.exp().clamp(float(nu_min) * (1 + 1e-6), float(nu_max))  # inside the process's noise levels
    # Geng et al. 2024, Eq. (9)-(10): r = t (1 - n(t) / q^a), n(t) = 1 + k sigmoid(-b t); r >= the boundary
    nu_r = nu_t * (1 - (1 + k * torch.sigmoid(-b * nu_t)) / q**stage)
    at_boundary = nu_r <= nu_min
    nu_r = nu_r.clamp_min(float(nu_min))  # the target's noise level: the boundary's where nu_r is below it
    weight = 1.0 / (nu_t - nu_r)  # Geng et al. 2024, Sec. 3: w(t, r) = 1 / (t - r), r the target's level
    t_cur = sde.t_of_lambda(-torch.log(nu_r))
    t_cur = torch.where(at_boundary, torch.full_like(t_cur, student.t_eps), t_cur)  # exactly the boundary there
    t_next = sde.t_of_lambda(-torch.log(nu_t))
    z = randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return _consistency_pair(student, target, x0, t_next.to(x0.device), t_cur.to(x0.device), z,
                             weight.to(x0.device), dist)
