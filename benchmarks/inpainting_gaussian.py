"""How far replacement inpainting is from the exact conditional, on a correlated Gaussian.

Data: a 16-point Gaussian process on a line, C_ij = exp(-(i - j)^2 / 18) + 0.05 delta_ij (VP SDE);
coordinates 5..10 are unknown, the others known (one fixed data sample). The exact law of the
unknown part given the known one is Gaussian (`CorrelatedGaussian.conditional`). For each sampler
the table gives, over n samples: the RMS error of the mean over the 6 unknown coordinates, the
relative Frobenius error of their covariance, and the same for exact samples (the Monte Carlo
floor). Multistep solvers keep their history across the replacement (it is the solvers' hook); rows
with noise "fixed" draw the replacement noise once. Also: colorization of a 2x2 RGB image with
correlated channels.

    python -P benchmarks/inpainting_gaussian.py [n]   (default n = 8000; about 2 minutes on one core;
    -P keeps benchmarks/solvers.py from shadowing the solvers package)
"""

from __future__ import annotations

import sys
import time

import torch

from scoresde import VPSDE, CorrelatedGaussian, CorrelatedGaussianModel, colorize, inpaint
from scoresde.controllable import COLOR_BASIS, to_basis

F64 = torch.float64


def gp_problem():
    d, ell = 16, 3.0
    i = torch.arange(d, dtype=F64)
    cov = torch.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * ell**2)) + 0.05 * torch.eye(d, dtype=F64)
    data = CorrelatedGaussian(torch.zeros(d, dtype=F64), cov)
    mask = torch.ones(d, dtype=torch.bool)
    mask[5:11] = False
    known = data.sample(1, generator=torch.Generator().manual_seed(1))[0]
    return data, mask, known


def errors(xu: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """(RMS error of the mean, relative Frobenius error of the covariance) of samples xu (n, u)."""
    e_mean = float((xu.mean(0) - mean).pow(2).mean().sqrt())
    e_cov = float(torch.linalg.norm(torch.cov(xu.T) - cov) / torch.linalg.norm(cov))
    return e_mean, e_cov


def main(n: int) -> None:
    torch.set_num_threads(1)
    data, mask, x_known = gp_problem()
    model = CorrelatedGaussianModel(data, VPSDE())
    mean, cov = data.conditional(x_known, mask)
    known = x_known.expand(n, -1).clone()
    exact = mean + torch.randn(n, mean.numel(), dtype=F64, generator=torch.Generator().manual_seed(5)) @ torch.linalg.cholesky(cov).T
    print(f"n = {n}; exact samples (Monte Carlo floor): mean {errors(exact, mean, cov)[0]:.3f}, cov {errors(exact, mean, cov)[1]:.3f}")
    print("| sampler | options | steps | NFE | mean RMS error | cov rel. error |\n|---|---|---|---|---|---|")
    runs = [
        ("euler_maruyama", {}, 100), ("euler_maruyama", {}, 400),
        ("pc", {"corrector": "none"}, 100), ("pc", {}, 100), ("pc", {"n_corrector": 2}, 100),
        ("pc", {"n_corrector": 5}, 100), ("pc", {"n_corrector": 10}, 100),
        ("ode", {"method": "rk4"}, 25), ("ode", {"method": "euler"}, 100),
        ("dpm_solver", {"order": 1}, 25), ("dpm_solver", {"order": 2, "lower_order_final": False}, 25),
        ("dpm_solver", {"order": 3, "lower_order_final": False}, 25), ("dpm_solver++", {}, 25),
        ("dpm_solver++", {}, 100), ("dpm_solver++", {"noise": "fixed"}, 25), ("unipc", {}, 25),
        ("unipc", {"noise": "fixed"}, 25),
    ]
    for solver, opts, steps in runs:
        start = time.perf_counter()
        res = inpaint(model, known, mask, solver=solver, steps=steps, seed=0, **opts)
        assert torch.equal(res.x[:, mask], known[:, mask])
        e_mean, e_cov = errors(res.x[:, ~mask], mean, cov)
        print(f"| {solver} | {opts or ''} | {steps} | {res.nfe} | {e_mean:.3f} | {e_cov:.3f} |  ({time.perf_counter() - start:.1f} s)")

    # colorization: 2x2 RGB image, channels and pixels correlated
    g = torch.Generator().manual_seed(3)
    A = torch.randn(12, 12, dtype=F64, generator=g)
    img_cov = A @ A.T / 12 + 0.1 * torch.eye(12, dtype=F64)
    img = CorrelatedGaussian(0.3 * torch.randn(3, 2, 2, dtype=F64, generator=g), img_cov)
    img_model = CorrelatedGaussianModel(img, VPSDE())
    truth = img.sample(1, generator=g)
    gray = truth.mean(1, keepdim=True)
    # exact law of the chroma given the gray channel, in the colour basis
    R = torch.kron(COLOR_BASIS, torch.eye(4, dtype=F64))  # acts on the flattened (3, 2, 2) image
    rotated = CorrelatedGaussian((R @ img.mean.reshape(-1)).reshape(3, 2, 2), R @ img_cov @ R.T)
    cmask = torch.zeros(3, 2, 2, dtype=torch.bool)
    cmask[0] = True
    c_mean, c_cov = rotated.conditional(to_basis(truth, COLOR_BASIS)[0], cmask)
    for solver, opts, steps in [("euler_maruyama", {}, 100), ("pc", {"n_corrector": 5}, 100), ("dpm_solver++", {}, 25)]:
        res = colorize(img_model, gray.expand(n, -1, -1, -1), solver=solver, steps=steps, seed=0, **opts)
        z = to_basis(res.x, COLOR_BASIS)
        gray_err = float((res.x.mean(1, keepdim=True) - gray).abs().max())
        e_mean, e_cov = errors(z[:, ~cmask], c_mean, c_cov)
        print(f"| colorize {solver} | {opts or ''} | {steps} | {res.nfe} | {e_mean:.3f} | {e_cov:.3f} | gray error {gray_err:.1e}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
