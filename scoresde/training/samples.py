"""The sample grids a training run draws from its EMA model (`sample_every`) and PNG grids in general."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import torch
from torch import Tensor

import solvers

from ..files import atomic_write
from ..nn import UNetConfig
from ..param import ScoreModel
from .config import TrainConfig

__all__ = ["sample_images", "save_image_grid", "write_samples"]


class _Labelled:
    """A Model with fixed labels y (B,) bound, so that samplers see the plain protocol."""

    def __init__(self, model: ScoreModel, y: Tensor):
        self.model, self.y, self.sde = model, y, model.sde

    def _predict(self, kind: str, x: Tensor, t: Tensor) -> Tensor:
        return getattr(self.model, kind)(x, t, self.y)

    eps = functools.partialmethod(_predict, "eps")
    x0 = functools.partialmethod(_predict, "x0")
    score = functools.partialmethod(_predict, "score")
    v = functools.partialmethod(_predict, "v")


@torch.no_grad()
def sample_images(model: ScoreModel, shape, *, steps: int = 250, y: Tensor | None = None,
                  generator: torch.Generator | None = None, device=None, ddim_grid: Tensor | None = None) -> Tensor:
    """Samples (B, *D) in [-1, 1]: Euler-Maruyama on a uniform t grid, then Tweedie's denoising
    (`steps` evaluations plus one); from a consistency model (one with `consistency`), multistep consistency
    sampling on the Karras grid (`steps` evaluations); with `ddim_grid` (a progressive-distillation student's
    grid, or a reflow student's few-step uniform grid), DDIM on it (`steps` unused). y (B,) labels for a conditional model (None: unconditional).
    """
    m = model if y is None else _Labelled(model, y)
    x_T = model.sde.prior_sample(shape, generator=generator, device=device, dtype=torch.float32)
    if ddim_grid is not None:
        x = solvers.get("ddim")(m, x_T, ddim_grid).x
    elif callable(getattr(model, "consistency", None)):
        ts = solvers.grids.karras(model.sde, steps, t_end=model.t_eps)
        x = solvers.get("consistency")(m, x_T, ts, generator=generator).x
    else:
        ts = solvers.grids.uniform_t(model.sde, steps)
        x = solvers.get("euler_maruyama", denoise_final=True)(m, x_T, ts, generator=generator).x
    return x.clamp(-1.0, 1.0)


# file suffix -> the format Pillow writes for a grid
GRID_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def save_image_grid(x: Tensor, path: str | os.PathLike, *, nrow: int | None = None, scale: int = 1) -> None:
    """Save images x (B, C, H, W) in [-1, 1] as one grid (1 pixel border), each upscaled `scale` times.

    nrow: images per row (default: about sqrt(B)). The format follows the suffix of `path`: .png,
    .jpg / .jpeg (quality 95) or .webp (lossless); another suffix is a ValueError."""
    from PIL import Image

    fmt = GRID_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"image grid {str(path)!r}: use a file name ending in {', '.join(GRID_FORMATS)}")

    B, C, H, W = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(B)))
    ncol = math.ceil(B / nrow)
    img = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = torch.zeros(C, ncol * (H + 1) + 1, nrow * (W + 1) + 1, dtype=torch.uint8)
    for k in range(B):
        r, c = divmod(k, nrow)
        grid[:, 1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = img[k]
    arr = grid.permute(1, 2, 0).numpy()
    im = Image.fromarray(arr[..., 0] if C == 1 else arr, mode="L" if C == 1 else "RGB")
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    atomic_write(Path(path), lambda tmp: im.save(tmp, format=fmt, **options))


def write_samples(model: ScoreModel, unet_config: UNetConfig, config: TrainConfig, step: int, out: Path,
                   device: torch.device) -> None:
    """Write the grid of step `step` to out/samples/ (the same noise at every step)."""
    gen = torch.Generator(device).manual_seed(config.seed)
    n = config.sample_n
    y = None
    if unet_config.num_classes is not None:
        y = torch.arange(n, device=device) % unet_config.num_classes
    shape = (n, unet_config.in_channels, unet_config.image_size, unet_config.image_size)
    # a pd student is right on its own grid only, a rectified flow is for one Euler step: DDIM there, as `scoresde sample`
    distilled = config.ddim_sampling()
    ddim_grid = None if distilled is None else solvers.grids.make(distilled[1], model.sde, distilled[0])
    with torch.no_grad():
        x = sample_images(model, shape, steps=config.sample_steps, y=y, generator=gen, device=device, ddim_grid=ddim_grid)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    save_image_grid(x, out / "samples" / f"step_{step:07d}.png", scale=max(1, 32 // unet_config.image_size))
