"""Training the VAE (`scoresde.latent.vae`) and its latent scaling factor.

Loss per batch (Rombach et al. 2022, arXiv:2112.10752, App. G, without the perceptual and adversarial
terms, which are not included here):

    L = mean over pixels (x - D(z))^2 + kl_weight * mean over latent elements KL(q(z | x) || N(0, I)),

z = mean + std e one posterior draw. Batches are drawn by a generator seeded from (seed, step), so a
resumed run draws what the uninterrupted one would have. The file at `path` (`vae_files.save_vae`,
atomic) is written every `save_every` steps and at the end, with the optimizer state; calling
`train_vae` again with the same path resumes from it (with more `steps`, the finished run is extended;
every other setting must be the same). At the end the scaling factor 1 / std of the
encoded training latents (posterior means) is computed and stored (Rombach et al., Sec. 4.3.2); a save
before the end stores none ("none", read as scale_factor None), which `LatentModel` refuses: set
`vae.scale_factor = compute_scale_factor(vae, images)` to use such a file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from solvers.validate import check_int, check_number, dataclass_from_dict

from .vae import VAE, VAEConfig, kl_to_standard_normal
from .vae_files import read_vae_file, save_vae

__all__ = ["VAETrainConfig", "compute_scale_factor", "train_vae", "vae_loss"]


@dataclass(frozen=True)
class VAETrainConfig:
    """steps: optimizer steps in all; batch_size; lr: Adam's; kl_weight: beta of the loss (module doc);
    seed: of the initialization and the batches; save_every: steps between saves; lr_halve_every: K > 0
    halves the learning rate every K steps (lr 0.5^floor(step / K): a function of the step alone, so that
    an extended run continues the schedule), 0 keeps it constant."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    kl_weight: float = 1e-3
    seed: int = 0
    save_every: int = 250
    lr_halve_every: int = 0

    def __post_init__(self):
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_number("lr", self.lr, 0, low_open=True)
        check_number("kl_weight", self.kl_weight, 0)
        check_int("seed", self.seed, 0, 2**62)
        check_int("save_every", self.save_every, 1)
        check_int("lr_halve_every", self.lr_halve_every, 0)

    def lr_at(self, step: int) -> float:
        """The learning rate of the step that starts at `step` (0-based)."""
        return self.lr * 0.5 ** (step // self.lr_halve_every) if self.lr_halve_every else self.lr

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VAETrainConfig:
        return dataclass_from_dict(cls, d)


def vae_loss(vae: VAE, x: Tensor, kl_weight: float, *, generator: torch.Generator | None = None):
    """(loss, reconstruction MSE, KL per latent element), scalars, for images x (B, C, H, W) in [-1, 1]."""
    recon, mean, logvar = vae(x, generator=generator)
    mse = (recon - x).square().mean()
    kl = kl_to_standard_normal(mean, logvar).mean()
    return mse + kl_weight * kl, mse, kl


@torch.no_grad()
def compute_scale_factor(vae: VAE, images: Tensor, *, batch_size: int = 256) -> float:
    """1 / std of the posterior means over `images` (N, C, H, W), all elements together."""
    z = torch.cat([vae.encode(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])
    return float(1.0 / z.double().std())


def _batch_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def train_vae(images: Tensor, vae_config: VAEConfig, config: VAETrainConfig, path: str | os.PathLike, *,
              log: Callable[[dict], None] | None = None) -> VAE:
    """Train a VAE on images (N, C, H, W) in [-1, 1] (float), saving to `path`; resumes when path exists.

    log(record) is called every save with {"step", "loss", "mse", "kl"} (means since the last save).
    Returns the trained VAE (eval mode) with its scale_factor; the file at path holds the same.
    """
    if images.ndim != 4 or tuple(images.shape[1:]) != (vae_config.in_channels, vae_config.image_size,
                                                        vae_config.image_size) or not images.is_floating_point():
        raise ValueError(f"images must be floats of shape (N, {vae_config.in_channels}, {vae_config.image_size}, "
                         f"{vae_config.image_size}), got {images.dtype} {tuple(images.shape)}")
    path = Path(path)
    with torch.random.fork_rng(devices=[]):  # the initialization, seeded, without touching the global state
        torch.manual_seed(config.seed)
        vae, step = VAE(vae_config), 0
    opt = torch.optim.Adam(vae.parameters(), lr=config.lr)
    if path.exists():
        saved = read_vae_file(path)
        same = {k: v for k, v in config.to_dict().items() if k != "steps"}
        try:  # a file written before a field existed reads with that field's default
            saved_config = VAETrainConfig.from_dict(saved.train_config).to_dict()
        except (TypeError, ValueError):
            saved_config = saved.train_config
        if saved.vae.config != vae_config or {k: v for k, v in saved_config.items() if k != "steps"} != same:
            raise ValueError(f"{path} holds a run with another configuration; choose a new path or the same configs "
                             "(only steps may differ: a run is extended to more steps)")
        if saved.step > config.steps:
            raise ValueError(f"{path} is at step {saved.step}, past steps={config.steps}")
        vae.load_state_dict(saved.vae.state_dict())
        vae.scale_factor = saved.vae.scale_factor
        if saved.optimizer_state is not None:
            opt.load_state_dict(saved.optimizer_state)
        step = saved.step
    vae.train()
    sums = torch.zeros(3, dtype=torch.float64)
    since = 0
    while step < config.steps:
        gen = _batch_generator(config.seed, step)
        idx = torch.randint(images.shape[0], (config.batch_size,), generator=gen)
        loss, mse, kl = vae_loss(vae, images[idx], config.kl_weight, generator=gen)
        for group in opt.param_groups:
            group["lr"] = config.lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        vae.scale_factor = None  # that of the weights before this step, if any: computed anew at the end
        sums += torch.tensor([loss.item(), mse.item(), kl.item()], dtype=torch.float64)
        since += 1
        if step % config.save_every == 0 or step == config.steps:
            vae.eval()
            if step == config.steps:
                vae.scale_factor = compute_scale_factor(vae, images)
            save_vae(path, vae, step=step, train_config=config.to_dict(), optimizer=opt)
            vae.train()
            if log is not None:
                mean = (sums / since).tolist()
                log({"step": step, "loss": mean[0], "mse": mean[1], "kl": mean[2]})
            sums.zero_()
            since = 0
    return vae.eval()
