"""Faster network evaluation for sampling and likelihoods: torch.compile, bf16 autocast, channels_last.

    from scoresde import speed
    fast = speed.optimize(model, precision="bf16", channels_last=True)      # a ScoreModel
    x = scoresde.sample(fast, solver="dpm_solver++", steps=20, n=128, device="cuda").x

`optimize` returns a new `ScoreModel` over the same network, sde, prediction and time input, whose
network call runs through `FastNet`. Every option is optional and off by default except compiling:

- `compile` (default True): `torch.compile` of the network call (autocast, layout change and the
  cast back included), with `mode` ("default"; "reduce-overhead": CUDA graphs; "max-autotune";
  "max-autotune-no-cudagraphs") and `backend` ("inductor"; "aot_eager" and "eager" only trace,
  for debugging and for fast tests). The first call with a new input shape compiles (seconds on a
  GPU, minutes on a small CPU); later calls reuse the compiled code.
- `precision="bf16"`: the network runs under bfloat16 autocast (matmuls and convolutions in bf16,
  normalizations and softmax in float32); its output is cast back to the input's dtype, so the
  solvers' arithmetic stays in float32. About 3 significant digits per evaluation: fine for
  sampling, too coarse for likelihoods at rtol 1e-5 (use fp32 and compile there). It runs on a
  CPU too (CPU autocast), where it is seldom faster.
- `channels_last=True`: the weights are converted to the channels_last layout in place (values
  unchanged) and the input is laid out alike; the output comes back contiguous (NCHW).

With CUDA graphs (modes "reduce-overhead" and "max-autotune" on CUDA) a call's output memory is
reused by the next call, so `FastNet` marks each call as a new step and returns a copy of the
output (multistep solvers keep earlier outputs).
The network's parameters are frozen in place (requires_grad_(False)): the likelihood's divergence
differentiates the network in x only, and a compiled backward pass would otherwise also compute
every weight gradient. Use `optimize` for inference; training has its own options
(`TrainConfig.compile`, `precision`, `channels_last`, docs/gpu.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from solvers.validate import check_bool, check_name

from .param import ScoreModel

__all__ = ["COMPILE_BACKENDS", "COMPILE_MODES", "CUDA_GRAPH_MODES", "PRECISIONS", "FastNet", "optimize"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the torch.compile modes that capture CUDA graphs on CUDA
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
PRECISIONS = ("fp32", "bf16")


class FastNet(nn.Module):
    """net(x, c_noise[, y]) under bf16 autocast and channels_last inputs, optionally compiled.

    x (B, C, H, W), c_noise (B,), y (B,) labels or None; returns the network's output (B, C_out,
    H, W), contiguous and in x's dtype. `net` is the wrapped module (its weights, unchanged).
    """

    def __init__(self, net: nn.Module, *, precision: str = "fp32", channels_last: bool = False,
                 compile: bool = False, mode: str = "default", backend: str = "inductor"):
        super().__init__()
        check_name("precision", precision, PRECISIONS)
        check_bool("channels_last", channels_last)
        check_bool("compile", compile)
        check_name("mode", mode, COMPILE_MODES)
        check_name("backend", backend, COMPILE_BACKENDS)
        if not compile and (mode != "default" or backend != "inductor"):
            raise ValueError(f"mode {mode!r} and backend {backend!r} apply with compile=True only")
        if compile and backend != "inductor" and mode != "default":
            raise ValueError(f"mode {mode!r} is an inductor mode; backend {backend!r} takes mode 'default'")
        self.net = net
        self.precision, self.channels_last = precision, channels_last
        self.cuda_graphs = compile and mode in CUDA_GRAPH_MODES
        self._run = torch.compile(self._body, mode=mode, backend=backend) if compile else self._body

    def _body(self, x: Tensor, c_noise: Tensor, y: Tensor | None) -> Tensor:
        dtype = x.dtype
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.net(x, c_noise) if y is None else self.net(x, c_noise, y)
        return out.to(dtype).contiguous()

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        if not (self.cuda_graphs and x.is_cuda):
            return self._run(x, c_noise, y)
        # CUDA graphs overwrite their outputs on the next replay: start a new step, keep a copy
        torch.compiler.cudagraph_mark_step_begin()
        return self._run(x, c_noise, y).clone()


def optimize(model: ScoreModel, *, compile: bool = True, mode: str = "default", backend: str = "inductor",
             precision: str = "fp32", channels_last: bool = False) -> ScoreModel:
    """A ScoreModel over `model`'s network run through `FastNet` (module docstring).

    model: a ScoreModel whose net is an nn.Module. The network's parameters are frozen, and with
    channels_last converted to that layout, in place. mode "reduce-overhead" (CUDA graphs) needs
    the network on a CUDA device; "max-autotune" captures CUDA graphs on CUDA only. `image_shape`,
    when the model records one, is carried over. Returns a new ScoreModel; `model` itself keeps
    working (same weights).
    """
    if not isinstance(model, ScoreModel):
        raise ValueError(f"optimize needs a ScoreModel (its network is what runs faster), got {type(model).__name__}")
    net = model.net
    if not isinstance(net, nn.Module):
        raise ValueError(f"optimize needs the ScoreModel's net to be an nn.Module, got {type(net).__name__}")
    params = list(net.parameters())
    device = params[0].device if params else torch.device("cpu")
    if compile and mode == "reduce-overhead" and device.type != "cuda":
        raise ValueError(f"mode 'reduce-overhead' is CUDA graphs; the network is on {device} "
                         f"(choose one of {[m for m in COMPILE_MODES if m != 'reduce-overhead']})")
    fast = FastNet(net, precision=precision, channels_last=channels_last, compile=compile, mode=mode, backend=backend)
    net.requires_grad_(False)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    out = ScoreModel(fast, model.sde, model.prediction, c_noise=model.c_noise, learned_variance=model.learned_variance)
    if hasattr(model, "image_shape"):
        out.image_shape = model.image_shape
    return out
