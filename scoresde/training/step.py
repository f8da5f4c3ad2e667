"""What one training step does after drawing its batch: the loss, then the parameter update (gradient
clipping, Adam or AdamW, EMA), eager or compiled as one function (docs/gpu.md)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..losses import HybridLoss, LossHistory, dsm_loss, flow_matching_loss, hybrid_loss
from ..param import ScoreModel
from .builders import build_sr_stage
from .config import TrainConfig

__all__ = ["ParameterUpdate", "compute_loss", "ema_update", "make_optimizer", "optimizer_impl"]


def optimizer_impl(config: TrainConfig, device: torch.device) -> str:
    """The optimizer implementation a run on `device` uses: "fused", "foreach" or "for_loop".

    config.optimizer_impl, with "auto" meaning fused Adam on CUDA (one kernel for all parameters)
    and foreach (multi-tensor kernels) elsewhere and under compile="step" (PyTorch's compiled
    optimizer path: inductor fuses the foreach update itself).
    """
    if config.optimizer_impl != "auto":
        return config.optimizer_impl
    return "fused" if torch.device(device).type == "cuda" and config.compile != "step" else "foreach"


def make_optimizer(config: TrainConfig, net: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW over net's parameters (on `device`) in the implementation `optimizer_impl` picks.

    With compile="step" the learning rate is a 0-d tensor on `device` (`ParameterUpdate` fills it
    each step; a Python float would be a constant of the compiled graph and recompile it at every
    warm-up step), and the non-fused implementations keep their state on the device (capturable).
    """
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    impl = optimizer_impl(config, device)
    options = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    lr: float | Tensor = config.lr
    if config.compile == "step":
        lr = torch.tensor(config.lr, device=device)
        if impl != "fused":
            options["capturable"] = True
    return cls(net.parameters(), lr=lr, betas=config.betas, eps=config.adam_eps, weight_decay=config.weight_decay,
               **options)


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float | Tensor) -> None:
    """ema <- decay * ema + (1 - decay) * net for parameters; buffers are copied.

    decay: a float, or a 0-d tensor on the parameters' device (inside a compiled update).
    """
    e_params = [p for p in ema.parameters()]
    n_params = [p.detach() for p in net.parameters()]
    # Polyak averaging as in Song et al.'s ExponentialMovingAverage: lerp towards the weights by 1 - decay
    torch._foreach_lerp_(e_params, n_params, 1.0 - decay)
    for be, bn in zip(ema.buffers(), net.buffers()):
        be.copy_(bn)


class ParameterUpdate:
    """What follows loss.backward(): clip the gradients' global norm, step the optimizer, update the EMA.

    Called as update(lr, decay) -> grad_norm, the 0-d tensor of the global gradient norm before
    clipping, with this step's learning rate and EMA decay (floats). grad_clip 0 disables
    clipping. compiled=False runs eagerly, the learning rate written into the param groups.
    compiled=True runs the three as one torch.compile'd function (`backend`); lr and decay then
    reach it through 0-d device tensors filled each step, so the optimizer must hold a tensor
    learning rate (`make_optimizer` with compile="step"). No host synchronization either way.
    """

    def __init__(self, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, *, grad_clip: float,
                 compiled: bool = False, backend: str = "inductor"):
        self.net, self.ema, self.opt = net, ema, opt
        self.params = list(net.parameters())
        self.max_norm = grad_clip if grad_clip > 0 else math.inf
        self.compiled = compiled
        if compiled:
            if not all(isinstance(g["lr"], Tensor) for g in opt.param_groups):
                raise ValueError("a compiled update needs an optimizer with a tensor lr "
                                 "(make_optimizer with compile='step')")
            self.decay = torch.zeros((), device=self.params[0].device)
            self._update = torch.compile(self._step, backend=backend)

    def _step(self, decay: float | Tensor) -> Tensor:
        grad_norm = nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.opt.step()
        ema_update(self.ema, self.net, decay)
        return grad_norm

    def __call__(self, lr: float, decay: float) -> Tensor:
        if not self.compiled:
            for group in self.opt.param_groups:
                group["lr"] = lr
            return self._step(decay)
        for group in self.opt.param_groups:
            group["lr"].fill_(lr)
        self.decay.fill_(decay)
        return self._update(self.decay)


def compute_loss(
    config: TrainConfig, model: ScoreModel, x0: Tensor, *, y: Tensor | None, null_label: int | None, levels: int,
    history: LossHistory | None, generator: torch.Generator,
) -> tuple[Tensor, HybridLoss | None]:
    """The batch's mean loss (0-d) under config.loss and config.precision, and for the hybrid loss its parts
    (an SR run, config.sr_factor > 1: `sr_loss` of the SR stage over model's network).

    x0: (B, *D) model inputs; y: (B,) labels of a conditional model (None: unconditional);
    null_label: the network's num_classes; levels: the data's quantization levels (hybrid loss);
    history: the hybrid loss's LossHistory (None for the other losses). Draws from `generator`.
    """
    hybrid = None
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        if config.loss == "hybrid":
            hybrid = hybrid_loss(model, x0, history, levels=levels, lam=config.hybrid_lambda, y=y,
                                 null_label=null_label, p_uncond=config.p_uncond, generator=generator)
            loss = hybrid.loss.mean()
        elif config.sr_factor > 1:  # the SR stage of a cascade: denoising x given its pooled, augmented image
            from ..latent.sr_stage import sr_loss

            stage = build_sr_stage(config, model.net, model.sde, tuple(x0.shape[1:]))
            loss = sr_loss(stage, x0, s_max=config.sr_options(), generator=generator).mean()
        elif config.loss == "flow_matching":
            loss = flow_matching_loss(model, x0, y=y, null_label=null_label, p_uncond=config.p_uncond,
                                      t_eps=config.t_eps, generator=generator).mean()
        else:
            loss = dsm_loss(model, x0, y=y, null_label=null_label, p_uncond=config.p_uncond,
                            time_sampling=config.time_sampling, t_eps=config.t_eps, generator=generator).mean()
    return loss, hybrid
