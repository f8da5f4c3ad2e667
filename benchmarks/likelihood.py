"""Likelihood benchmark: scoresde.log_likelihood against the scheme of the original Score SDE code.

    python benchmarks/likelihood.py --quick --threads 1   # a few minutes on a CPU
    python benchmarks/likelihood.py --threads 1        # full sizes (DDPM++ CIFAR-10 U-Net): ~15 min
    python benchmarks/likelihood.py --device cuda --batch 128 --unet-batch 128

Cases: the analytic d = 3072 (3x32x32) Gaussian (per-dimension means in [-0.8, 0.8], stds in
[0.05, 0.3]; its probability-flow map is closed-form, so "exact" there is the exact answer of the ODE
with the N(0, I) prior) and ten-component Gaussian mixture (exact: log p_{t_eps}(x), which differs
from the ODE's answer by the prior's error, about 4e-5 bits/dim) under the VP SDE, float64, and a
DDPM++ CIFAR-10-size U-Net with random weights (float32, timing only; --quick uses a narrower one).
Rows: the baseline (scipy solve_ivp RK45 on flattened float64 CPU numpy arrays, one model call for
the drift and another for the divergence at every evaluation, as the original code does), this
library's adaptive mode (dopri5) at the same tolerances, and its fixed-budget modes (--methods,
default dpm_solver, dpm_solver_4m, dpm_solver_6m) at several budgets (--budgets: steps, NFE = steps + 1). Every row uses the same Rademacher probe. Columns: NFE
(right-hand-side evaluations), model forward passes, wall seconds per batch, mean bits/dim, mean
|bpd error| against the exact log p_{t_eps}(x) (analytic case), mean |bpd - adaptive bpd|, and the
speed-up over the baseline (baseline seconds / seconds). On a CPU shared with other jobs pass
--threads 1: oversubscribed intra-op threads made every row 10-30x slower in our runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Python puts this script's folder first on sys.path, where a benchmark named like a package
# (benchmarks/solvers.py) would shadow that package: import the installed packages instead
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np
import torch
from scipy.integrate import solve_ivp

from scoresde.analytic import AnalyticModel, Gaussian, GaussianMixture
from scoresde.likelihood import bpd_from_logp, draw_probes, log_likelihood
from scoresde.param import ScoreModel
from scoresde.sde import VPSDE


def baseline_scipy(model, x: torch.Tensor, probe: torch.Tensor, *, rtol: float, atol: float, t_eps: float):
    """The original code's scheme: RK45 on the flattened float64 state [x, delta] on the host.

    Each evaluation copies the state to a tensor in the model's dtype and device, calls the model
    once for the drift and once more (with grad) for the Hutchinson divergence of the drift, and
    copies both back to numpy. Returns logp (B,) nats, z, NFE, forward passes.
    """
    sde, shape, B = model.sde, x.shape, x.shape[0]
    calls = {"nfe": 0}

    def drift(xt, tt):
        return sde.pf_drift(xt, tt, model.score(xt, tt))

    def rhs(t, state):
        calls["nfe"] += 1
        xt = torch.from_numpy(state[:-B].reshape(shape)).to(device=x.device, dtype=x.dtype)
        tt = torch.full((B,), float(t), device=x.device, dtype=x.dtype)
        with torch.no_grad():
            f = drift(xt, tt)
        with torch.enable_grad():
            xg = xt.detach().requires_grad_(True)
            (vjp,) = torch.autograd.grad((drift(xg, tt) * probe).sum(), xg)
        div = (vjp * probe).flatten(1).sum(1)
        return np.concatenate([f.detach().cpu().double().numpy().ravel(), div.cpu().double().numpy()])

    y0 = np.concatenate([x.detach().cpu().double().numpy().ravel(), np.zeros(B)])
    sol = solve_ivp(rhs, (t_eps, sde.T), y0, method="RK45", rtol=rtol, atol=atol)
    z = torch.from_numpy(sol.y[:-B, -1].reshape(shape)).to(x)
    logp = sde.prior_logp(z) + torch.from_numpy(sol.y[-B:, -1]).to(x)
    return logp, z, calls["nfe"], 2 * calls["nfe"]


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run_case(name, model, x, *, exact_bpd, budgets, rtol, atol, seed, methods=("dpm_solver",)):
    """Rows of one case: baseline, adaptive, fixed budgets (same Rademacher probe everywhere), and
    for a model with a closed-form divergence the adaptive mode with it (ODE error alone)."""
    d = x[0].numel()
    t_eps = model.sde.t_eps_likelihood
    probe = draw_probes(x, 1, "rademacher", torch.Generator(device=x.device).manual_seed(seed))
    rows = []

    (logp, _, nfe, fwd), sec = timed(lambda: baseline_scipy(model, x, probe[:, 0], rtol=rtol, atol=atol, t_eps=t_eps))
    rows.append(("baseline scipy RK45", nfe, fwd, sec, bpd_from_logp(logp, d)))

    def ours(**kw):
        gen = torch.Generator(device=x.device).manual_seed(seed)  # draws the same probe as above
        return log_likelihood(model, x, generator=gen, **kw)

    res, sec = timed(lambda: ours(rtol=rtol, atol=atol))
    rows.append(("scoresde dopri5", res.nfe, res.nfe, sec, res.bpd))
    adaptive_bpd = res.bpd
    if hasattr(model, "pf_divergence"):
        res, sec = timed(lambda: ours(rtol=rtol, atol=atol, divergence="analytic"))
        rows.append(("scoresde dopri5, closed-form div", res.nfe, res.nfe, sec, res.bpd))
    for method in methods:
        for steps in budgets:
            res, sec = timed(lambda: ours(method=method, steps=steps))
            rows.append((f"scoresde {method} steps={steps}", res.nfe, res.nfe, sec, res.bpd))

    base_sec = rows[0][3]
    print(f"\n{name}  (batch {x.shape[0]}, d = {d}, {x.dtype}, {x.device}, rtol = atol = {rtol:g})")
    head = f"{'mode':<36}{'NFE':>6}{'fwd':>6}{'s/batch':>10}{'bpd':>10}{'|err| exact':>13}{'|d| adapt':>11}{'speed-up':>10}"
    print(head)
    print("-" * len(head))
    for label, nfe, fwd, sec, bpd in rows:
        err = f"{float((bpd - exact_bpd).abs().mean()):13.2e}" if exact_bpd is not None else f"{'-':>13}"
        dad = float((bpd - adaptive_bpd).abs().mean())
        print(f"{label:<36}{nfe:>6}{fwd:>6}{sec:>10.2f}{float(bpd.mean()):>10.4f}{err}{dad:>11.2e}{base_sec / sec:>9.2f}x")


def gaussian_case(args, device):
    gen = torch.Generator().manual_seed(0)
    mean = torch.rand(3, 32, 32, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    std = torch.rand(3, 32, 32, generator=gen, dtype=torch.float64) * 0.25 + 0.05
    data = Gaussian(mean.to(device), std.to(device))
    sde = VPSDE()
    model = AnalyticModel(data, sde)
    x = data.sample(args.batch, generator=torch.Generator(device=device).manual_seed(1))
    t_eps = torch.full((x.shape[0],), sde.t_eps_likelihood, dtype=x.dtype, device=device)
    t_T = torch.full_like(t_eps, sde.T)
    z = model.flow_map(x, sde.t_eps_likelihood, sde.T)  # closed form: the exact answer of the ODE
    exact = bpd_from_logp(model.log_prob(x, t_eps) - model.log_prob(z, t_T) + sde.prior_logp(z), x[0].numel())
    run_case("analytic Gaussian, VP (exact: the probability-flow answer)", model, x, exact_bpd=exact,
             budgets=args.budgets, rtol=args.rtol, atol=args.atol, seed=2, methods=args.methods)


def analytic_case(args, device):
    gen = torch.Generator().manual_seed(0)
    K = 10
    data = GaussianMixture(
        torch.ones(K, dtype=torch.float64),
        torch.rand(K, 3, 32, 32, generator=gen, dtype=torch.float64) * 1.6 - 0.8,
        torch.linspace(0.05, 0.3, K, dtype=torch.float64),
    )
    data = GaussianMixture(data.weights.to(device), data.means.to(device), data.stds.to(device))
    sde = VPSDE()
    model = AnalyticModel(data, sde)
    x = data.sample(args.batch, generator=torch.Generator(device=device).manual_seed(1))
    t = torch.full((x.shape[0],), sde.t_eps_likelihood, dtype=x.dtype, device=device)
    exact = bpd_from_logp(model.log_prob(x, t), x[0].numel())
    run_case("analytic 10-component Gaussian mixture, VP (exact: log p_t_eps)", model, x, exact_bpd=exact,
             budgets=args.budgets, rtol=args.rtol, atol=args.atol, seed=2, methods=args.methods)


def unet_case(args, device):
    try:
        from scoresde.nn import UNet, count_parameters, ddpmpp_cifar10
    except ImportError as err:  # the network package is optional for this benchmark
        print(f"\nU-Net case skipped: scoresde.nn is not available ({err})")
        return
    overrides = dict(ch=32, num_res_blocks=1) if args.quick else {}
    torch.manual_seed(0)  # random weights for timing; the benchmark script owns its global state
    net = UNet(ddpmpp_cifar10(dropout=0.0, **overrides)).to(device).eval()
    # the output layer starts at zero (a zero score makes the ODE trivial): give it random weights
    torch.nn.init.normal_(net.conv_out.weight, std=0.02)
    n_params = count_parameters(net)
    for p in net.parameters():
        p.requires_grad_(False)
    model = ScoreModel(net, VPSDE(), prediction="eps", c_noise="999t")
    x = torch.rand(args.unet_batch, 3, 32, 32, generator=torch.Generator().manual_seed(3)).to(device) * 2 - 1
    size = "reduced: ch 32, 1 block/level" if args.quick else "DDPM++ CIFAR-10 size"
    name = f"U-Net ({size}), {n_params:,} parameters, random weights, VP, c_noise=999t"
    run_case(name, model, x, exact_bpd=None, budgets=args.budgets, rtol=args.rtol, atol=args.atol, seed=4,
             methods=args.methods)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches and a narrower U-Net (a few minutes on CPU)")
    ap.add_argument("--device", default="cpu", help="torch device for this library and the models (default cpu)")
    ap.add_argument("--batch", type=int, default=None, help="analytic-case batch (default 16; 4 with --quick)")
    ap.add_argument("--unet-batch", type=int, default=None, help="U-Net batch (default 4; 2 with --quick)")
    ap.add_argument("--budgets", type=int, nargs="+", default=None,
                    help="fixed-budget step counts (default 10 19 29 39: 11, 20, 30, 40 evaluations)")
    ap.add_argument("--methods", nargs="+", default=["dpm_solver", "dpm_solver_4m", "dpm_solver_6m"],
                    help="fixed-budget methods (default dpm_solver dpm_solver_4m dpm_solver_6m)")
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--skip-unet", action="store_true")
    ap.add_argument("--skip-analytic", action="store_true", help="skip both analytic cases")
    ap.add_argument("--skip-gaussian", action="store_true")
    ap.add_argument("--skip-mixture", action="store_true")
    args = ap.parse_args()
    if args.batch is None:
        args.batch = 4 if args.quick else 16
    if args.unet_batch is None:
        args.unet_batch = 2 if args.quick else 4
    if args.budgets is None:
        args.budgets = [10, 19, 29] if args.quick else [10, 19, 29, 39]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"likelihood benchmark on {card}; torch {torch.__version__}")
    if not args.skip_analytic and not args.skip_gaussian:
        gaussian_case(args, device)
    if not args.skip_analytic and not args.skip_mixture:
        analytic_case(args, device)
    if not args.skip_unet:
        unet_case(args, device)
    print("\nNFE: right-hand-side evaluations; fwd: model forward passes (the baseline calls the model twice per"
          " evaluation).\n|err| exact: mean |bpd - the exact bpd named in the case title|; |d| adapt: mean |bpd - scoresde"
          " dopri5 bpd|; speed-up: baseline s / s.")


if __name__ == "__main__":
    main()
