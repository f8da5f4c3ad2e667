"""Training by denoising score matching, Improved DDPM's hybrid loss, flow matching, a consistency loss
(cd, ct, ect: scoresde.training.consistency, docs/few_step.md), a round of progressive distillation (pd:
scoresde.training.progressive) or of rectified-flow reflow (reflow: scoresde.training.reflow; both
docs/distillation.md), on one device or many (DDP launched by torchrun).

    from scoresde.train import TrainConfig, train
    res = train(TrainConfig(data="digits", net="digits", steps=2000, out_dir="runs/digits"))
    res.model.eps(x, t)                                  # ScoreModel over the EMA weights
    train(TrainConfig(net="dit_digits", ...))            # a DiT: any preset of TrainConfig.net

The network is built from its configuration (`builders.build_net`: UNet(UNetConfig) or DiT(DiTConfig));
nothing here depends on which: EMA, autocast, torch.compile, DDP and checkpoints see an nn.Module.

What a run writes to `out_dir` (rank 0 only):

- `checkpoint.safetensors`, every `ckpt_every` steps and at the end, written to a temporary file
  and renamed over the previous one (an interrupted write leaves the previous checkpoint intact).
  It holds the weights, their EMA, the optimizer state and the hybrid loss's timestep history, with
  the step and the configurations (scoresde.training.checkpoints). Loading reads tensors and JSON only.
- `config.json`, a readable copy of that configuration and step (never read back).
- `metrics.jsonl`, one JSON object per `log_every` steps: step, loss (mean over the interval and
  over ranks), lr, grad_norm, images_per_s (scoresde.training.metrics_log).
- `samples/step_XXXXXXX.png`, every `sample_every` steps: a grid drawn from the EMA model.
- `reflow_pairs.safetensors` (loss "reflow"): the teacher's (noise, sample) pairs, made at the first start and
  read back by every later one (scoresde.training.reflow).

Exact resume. When `out_dir` holds a checkpoint, `train` continues from it. All randomness of a
step (training times, noise, label dropout, flips, augmentations, dequantization and dropout) is drawn
from generators seeded with a function of (seed, rank, step), and the data order of an epoch is a
function of (seed, epoch) (DistributedSampler), so the checkpoint's step is the whole RNG state
(the hybrid loss's timestep history, the only other state a step depends on, is checkpointed
too). The checkpoint also holds the open log interval (each rank's loss sum since the last metrics
line), and a resumed run first drops the metrics lines logged after its checkpoint. So a resumed run
repeats the uninterrupted run's weights and logged losses exactly (same device,
world size, `compile` and `optimizer_impl`: compiled and fused kernels may round differently, and
inductor may draw dropout masks with its own random kernels). The caller's global RNG state is
saved and restored around training.

Optimizer details: Adam or AdamW, learning rate warmed up linearly over `warmup_steps`, gradients
clipped to global norm `grad_clip`, EMA with decay min(ema_decay, (1 + n) / (10 + n)) after n
updates (the warm-up of Song et al.'s `ExponentialMovingAverage`). On CUDA: TF32 matmuls and
convolutions (`tf32`), bf16 autocast (`precision="bf16"`), channels_last (`channels_last`).

Speed (docs/gpu.md): `optimizer_impl` "auto" takes PyTorch's fused Adam on CUDA and the foreach
(multi-tensor) implementation elsewhere or when the update is compiled. `compile` "net" runs the network's forward and backward
through torch.compile; "step" also compiles what follows the backward pass (gradient clipping, the
optimizer step and the EMA update) into one function, with the learning rate and the EMA decay
held in device tensors so that warm-up does not recompile. The loss's random draws stay eager
(dynamo does not trace torch.Generator arguments). A step makes no host synchronization: the loss
and gradient norm are read once per log interval. Checkpoints hold the uncompiled modules' state
(no `_orig_mod.` prefixes), so a run may resume with a different `compile` or `optimizer_impl`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import data as datasets
from ..augment import augment
from ..files import clean_stale_tmp
from ..losses import LossHistory
from ..nn import DiTConfig, UNetConfig
from ..param import ScoreModel
from ..sde import SDE
from ..files import safetensors_format
from .checkpoints import (
    CHECKPOINT, PRETRAINED_FORMAT, LogInterval, load_checkpoint, load_model, read_pretrained, save_checkpoint,
    write_run_config,
)
from .builders import build_net, build_net_config, build_sde, build_sr_stage, net_config_diff, net_kind_of
from .config import CONSISTENCY_LOSSES, TrainConfig, check_resume
from .consistency import check_teacher, consistency_loss, consistency_model
from .metrics_log import METRICS, MetricsLog, truncate_metrics
from .progressive import check_pd_teacher, pd_loss, pd_teacher_grid
from .reflow import check_reflow_teacher, reflow_batch_loss, training_pairs
from .samples import write_samples
from .ranks import rank_world, record_losses, resolve_device, seed_generator, setup_distributed, step_seed
from .step import ParameterUpdate, compute_loss, ema_update, make_optimizer

__all__ = ["METRICS", "TrainResult", "setup_distributed", "train"]

_NET_NAMES = {"unet": "U-Net", "dit": "DiT"}  # for messages


# --- a run ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainResult:
    """What `train` returns: the step reached, the last logged loss (None if none), the raw and EMA
    networks (a UNet or a DiT, unwrapped from DDP) and `model`, a ScoreModel over the EMA network for sampling
    (for an SR run, sr_factor > 1, the SRStage over it: `model.conditioned(w, s)` is the ScoreModel; for a latent
    run, vae set, the LatentModel of that ScoreModel and the VAE)."""

    step: int
    loss: float | None
    net: nn.Module
    ema: nn.Module
    model: ScoreModel


@dataclass(frozen=True)
class _Run:
    """What stays fixed while a run trains: its setting, data (on the device) and modules.

    net_config: the network's UNetConfig or DiTConfig; net, ema: the raw and EMA networks
    (checkpointed); ddp: net wrapped for DDP and torch.compile (the
    one the loss calls); history: the hybrid loss's LossHistory, else None; start: the first step;
    open_log: the log interval open at `start` (from the checkpoint; empty for a new run); target: a
    consistency loss's target network (target_decay > 0), else None; teacher: the teacher model of loss
    "cd" or "pd", else None; teacher_ts: the teacher's (2N + 1,) grid of loss "pd", else None; vae: a latent
    run's VAE (config.vae, on the device, eval mode), else None; pairs: the (noise, samples) pairs of loss "reflow",
    each (P, *D) on the device, which its batch indices pick from, else None.
    """

    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    out: Path
    net_config: UNetConfig | DiTConfig
    sde: SDE
    images: Tensor
    labels: Tensor | None
    levels: int
    net: nn.Module
    ema: nn.Module
    ddp: nn.Module
    opt: torch.optim.Optimizer
    update: ParameterUpdate
    history: LossHistory | None
    start: int
    open_log: LogInterval
    target: nn.Module | None = None
    teacher: ScoreModel | None = None
    teacher_ts: Tensor | None = None
    vae: nn.Module | None = None
    pairs: tuple[Tensor, Tensor] | None = None

    def score_model(self, net: nn.Module | functools.partial) -> ScoreModel:
        """A ScoreModel over `net` with the run's SDE and parameterization (a ConsistencyModel for a
        consistency loss)."""
        c = self.config
        if c.loss in CONSISTENCY_LOSSES:
            return consistency_model(c, net, self.sde)
        return ScoreModel(net, self.sde, c.prediction, c_noise=c.c_noise, learned_variance=c.learn_variance)


def _init_weights(net: nn.Module, ema: nn.Module, net_config: UNetConfig | DiTConfig, path: Path) -> None:
    """Start from the network and EMA weights of the checkpoint at `path` (TrainConfig.init_from), or from the
    weights of an exported model file there (both). Its network configuration must be this run's but for dropout."""
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no checkpoint at {path}")
    if safetensors_format(path) == PRETRAINED_FORMAT:
        file = read_pretrained(path)
        weights, ema_weights, source_config, source_net = file.state, file.state, file.net_config, file.config.net
    else:
        ckpt = load_checkpoint(path)
        source_config, weights, ema_weights, source_net = ckpt.net_config, ckpt.net, ckpt.ema, ckpt.config.net
    kind, source_kind = net_kind_of(net_config), net_kind_of(source_config)
    if source_kind != kind:
        raise ValueError(f"init_from {path}: it holds a {_NET_NAMES[source_kind]} (net {source_net!r}); "
                         f"this run trains a {_NET_NAMES[kind]}")
    diff = net_config_diff(source_config, net_config)
    if diff:
        raise ValueError(f"init_from {path}: its {_NET_NAMES[kind]} configuration differs from this run's in "
                         f"{', '.join(diff)}")
    net.load_state_dict(weights)
    ema.load_state_dict(ema_weights)


def _load_teacher(config: TrainConfig, net_config: UNetConfig | DiTConfig, sde: SDE, device: torch.device) -> ScoreModel:
    """The teacher model file of loss "cd", "ect", "pd" or "reflow" (config.teacher), checked against the run
    (check_teacher; for "pd" also check_pd_teacher: its recorded steps and grid; for "reflow" first
    check_reflow_teacher: a flow model of the data, of the round before)."""
    if not Path(config.teacher).is_file():
        raise FileNotFoundError(f"teacher: no model file at {config.teacher}")
    teacher = load_model(config.teacher, device=device)
    if config.loss == "reflow":
        check_reflow_teacher(config, teacher, net_config)
    check_teacher(config, teacher, net_config, sde, weights=config.init_from is None)
    if config.loss == "pd":
        check_pd_teacher(config, teacher, net_config)
    return teacher


def _restore(config: TrainConfig, path: Path, net_config: UNetConfig | DiTConfig, net: nn.Module, ema: nn.Module,
             opt: torch.optim.Optimizer, history: LossHistory | None, target: nn.Module | None,
             teacher: ScoreModel | None, vae: nn.Module | None) -> tuple[int, LogInterval]:
    """Resume from the checkpoint at `path` if there is one, else start from config.init_from if set, or
    from the teacher's weights (losses "cd", "ect", "pd", "reflow"); returns the step to continue from and the log interval
    open at that step. The target network (if any) starts as the network."""
    if not path.is_file():
        if config.init_from is not None:
            _init_weights(net, ema, net_config, Path(config.init_from))
        elif teacher is not None:
            net.load_state_dict(teacher.net.state_dict())
            ema.load_state_dict(teacher.net.state_dict())
        if target is not None:
            target.load_state_dict(net.state_dict())
        return 0, LogInterval(0, ())
    ckpt = load_checkpoint(path)
    check_resume(ckpt.config, config, path)
    if vae is not None:
        _check_same_vae(path, ckpt.vae, vae)
    if target is not None and not ckpt.target:
        raise ValueError(f"{path}: the checkpoint holds no target network, which loss {config.loss!r} needs")
    net.load_state_dict(ckpt.net)
    ema.load_state_dict(ckpt.ema)
    if target is not None:
        target.load_state_dict(ckpt.target)
    state = opt.state_dict()
    state["state"] = ckpt.opt
    opt.load_state_dict(state)
    if history is not None:
        history.load_state_dict(ckpt.loss_history)
    return ckpt.step, ckpt.log_interval


def _load_vae(config: TrainConfig, shape: tuple[int, int, int]):
    """The VAE of a latent run (config.vae), whose image shape must be `shape`, the data's (after downsample)."""
    from ..latent.model import check_autoencoder
    from ..latent.vae_files import load_vae

    if not Path(config.vae).is_file():
        raise FileNotFoundError(f"vae: no VAE file at {config.vae}")
    vae = load_vae(config.vae).float().requires_grad_(False)
    check_autoencoder(vae)  # e.g. a scale factor not computed yet
    if tuple(vae.image_shape) != tuple(shape):
        raise ValueError(f"vae {config.vae}: it encodes images {tuple(vae.image_shape)}, the run's data are {tuple(shape)}")
    return vae


def _check_same_vae(path: Path, saved, vae) -> None:
    """Refuse to resume a latent run whose VAE file changed since the checkpoint was written."""
    same = saved.config == vae.config and saved.scale_factor == vae.scale_factor and all(
        torch.equal(a, b) for a, b in zip(saved.state_dict().values(), vae.state_dict().values()))
    if not same:
        raise ValueError(f"cannot resume from {path}: the VAE file differs from the VAE the run started with "
                         "(the checkpoint holds that one)")


def _setup(config: TrainConfig, data: datasets.ImageData, sde: SDE, net_config: UNetConfig | DiTConfig, rank: int,
           world: int, device: torch.device, vae: nn.Module | None = None) -> _Run:
    """Build the networks, optimizer and loss history on `device`, restored from out_dir's checkpoint
    (resumption) or config.init_from, and wrap the network for DDP and torch.compile."""
    torch.manual_seed(config.seed)  # the initial weights (same on every rank)
    net = build_net(net_config)
    ema = copy.deepcopy(net).requires_grad_(False)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    net.to(device, memory_format=memory_format)
    ema.to(device, memory_format=memory_format).eval()
    opt = make_optimizer(config, net, device)
    history = LossHistory(sde.N, device=device) if config.loss == "hybrid" else None
    target = teacher = None
    if config.loss in CONSISTENCY_LOSSES and config.consistency_options()[1] > 0:
        target = copy.deepcopy(ema).to(device).requires_grad_(False)
    if config.teacher is not None:  # losses "cd", "ect", "pd", "reflow"
        teacher = _load_teacher(config, net_config, sde, device)
    out = Path(config.out_dir)
    if rank == 0:
        clean_stale_tmp(out)  # left by a run killed mid-write
    pairs = None
    if config.loss == "reflow":  # made once (noise from stream 2), read back by every later start
        shape = (net_config.in_channels, net_config.image_size, net_config.image_size)
        gen = seed_generator(torch.Generator(), step_seed(config.seed, 0, 0, 2))
        pairs = training_pairs(config, teacher, shape, out, device, gen, rank=rank, world=world)
    start, open_log = _restore(config, out / CHECKPOINT, net_config, net, ema, opt, history, target, teacher, vae)
    if config.loss not in ("cd", "pd"):
        teacher = None  # ect only starts from its weights, reflow from its weights and pairs
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        truncate_metrics(out / METRICS, start)
    ddp = net
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile != "none":
        ddp = torch.compile(ddp, backend=config.compile_backend)  # checkpoints keep saving `net`
    update = ParameterUpdate(net, ema, opt, grad_clip=config.grad_clip, compiled=config.compile == "step",
                             backend=config.compile_backend)
    return _Run(
        config=config, rank=rank, world=world, device=device, out=out, net_config=net_config, sde=sde,
        images=data.images.to(device), labels=data.labels.to(device) if config.conditional else None,
        levels=data.levels, net=net, ema=ema, ddp=ddp, opt=opt, update=update, history=history, start=start,
        open_log=open_log, target=target, teacher=teacher, vae=None if vae is None else vae.to(device).eval(),
        teacher_ts=pd_teacher_grid(config, sde).to(device) if config.loss == "pd" else None, pairs=pairs,
    )


@contextlib.contextmanager
def _tf32() -> Iterator[None]:
    """TF32 matmuls and convolutions inside; the previous settings are restored on leaving."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _batches(sampler: torch.utils.data.DistributedSampler, per_rank: int, start: int, steps: int,
             device: torch.device) -> Iterator[Tensor]:
    """Indices (per_rank,) of the batches of steps start, ..., steps - 1: with E full batches per
    epoch, step s takes batch s mod E of epoch s // E, in the sampler's order for that epoch."""
    per_epoch = len(sampler) // per_rank
    epoch, order = -1, None
    for step in range(start, steps):
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), dtype=torch.long, device=device)
        i = step % per_epoch
        yield order[i * per_rank:(i + 1) * per_rank]


def _loss(run: _Run, model: ScoreModel, idx: Tensor, step: int, gen: torch.Generator):
    """The loss of step `step` on the images idx (per_rank,) (loss "reflow": on the pairs idx), a 0-d tensor, and
    the hybrid loss's per-example terms (None for every other loss)."""
    config = run.config
    if config.loss == "reflow":  # Liu et al. 2022: flow matching on the straight paths of the teacher's pairs
        return reflow_batch_loss(config, model, run.pairs, idx, gen), None
    batch = run.images[idx]
    if config.augment_p > 0:  # the network is told each image's transformation (non-leaking)
        batch, aug = augment(batch, config.augment, config.augment_p, max_shift=config.augment_max_shift, generator=gen)
        model = run.score_model(functools.partial(run.ddp, augment_labels=aug))
    x0 = datasets.to_model_input(batch, run.levels, flip=config.flip, dequantize=config.dequantize, generator=gen)
    if config.downsample > 1:  # the low-resolution images of a cascade's base stage
        x0 = nn.functional.avg_pool2d(x0, config.downsample)
    if run.vae is not None:  # Rombach et al. 2022, Sec. 4.3.2: diffusion on z = s E(x), the scaled posterior means
        with torch.no_grad():
            x0 = run.vae.scale_factor * run.vae.encode(x0)
    if config.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    y = None if run.labels is None else run.labels[idx]
    hybrid = None
    if config.loss in CONSISTENCY_LOSSES:
        target = model if run.target is None else run.score_model(run.target)  # the student itself: no gradient flows
        loss = consistency_loss(config, model, target, run.teacher, x0, step, gen)
    elif config.loss == "pd":  # Salimans & Ho 2022, Algorithm 2: one student DDIM step for two of the teacher's
        loss = pd_loss(config, model, run.teacher, run.teacher_ts, x0, gen)
    else:
        loss, hybrid = compute_loss(config, model, x0, y=y, null_label=run.net_config.num_classes, levels=run.levels,
                                    history=run.history, generator=gen)
    return loss, hybrid


def _train_step(run: _Run, model: ScoreModel, idx: Tensor, step: int, gen: torch.Generator) -> tuple[Tensor, Tensor, float]:
    """Step `step` on the images (or pairs) idx (per_rank,): returns the loss and gradient norm (0-d, on the device)
    and lr."""
    config = run.config
    seed_generator(gen, step_seed(config.seed, run.rank, step, 0))
    dropout_seed = step_seed(config.seed, run.rank, step, 1)
    torch.manual_seed(dropout_seed)  # dropout: the accelerators' default generators take all 64 bits,
    seed_generator(torch.default_generator, dropout_seed)  # the CPU's only 32 (cpu_seed)
    loss, hybrid = _loss(run, model, idx, step, gen)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    lr = config.lr * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else config.lr
    grad_norm = run.update(lr, min(config.ema_decay, (1 + step) / (10 + step)))
    if run.target is not None:  # Song et al. 2023, Alg. 2: theta^- <- stopgrad(mu theta^- + (1 - mu) theta)
        ema_update(run.target, run.net, config.consistency_options()[1])
    if hybrid is not None:
        record_losses(run.history, hybrid.step, hybrid.vlb, run.world)
    return loss, grad_norm, lr


def _checkpoint(run: _Run, step: int, log: MetricsLog) -> None:
    """Write the checkpoint of `step` and config.json (rank 0); every rank takes part (the open log interval)."""
    interval = log.open_interval()
    if run.rank == 0:
        save_checkpoint(run.out / CHECKPOINT, step=step, config=run.config, net_config=run.net_config, sde=run.sde,
                        net=run.net, ema=run.ema, opt=run.opt, loss_history=run.history, log_interval=interval,
                        target=run.target, vae=run.vae)
        write_run_config(run.out, step=step, config=run.config, net_config=run.net_config, sde=run.sde)


def _loop(run: _Run, sampler: torch.utils.data.DistributedSampler, bar) -> tuple[int, float | None]:
    """Train from run.start to config.steps, logging, checkpointing and drawing samples on the way;
    returns the step reached and the last logged loss (None if none)."""
    config, gen = run.config, torch.Generator(run.device)
    model, ema_model = run.score_model(run.ddp), run.score_model(run.ema)
    log = MetricsLog(run.out, rank=run.rank, world=run.world, device=run.device, batch_size=config.batch_size,
                     open_log=run.open_log, bar=bar)
    step = run.start
    run.net.train()
    for idx in _batches(sampler, config.batch_size // run.world, run.start, config.steps, run.device):
        loss, grad_norm, lr = _train_step(run, model, idx, step, gen)
        step += 1
        log.add(loss)
        if step % config.log_every == 0 or step == config.steps:
            log.write(step, lr, grad_norm)
        if bar is not None:
            bar.update(1)
        if step % config.ckpt_every == 0 or step == config.steps:
            _checkpoint(run, step, log)
        if run.rank == 0 and config.sample_every and step % config.sample_every == 0:
            write_samples(ema_model, run.net_config, config, step, run.out, run.device)
            log.restart_clock()  # keep images/s about training
    return step, log.last_loss


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume) as configured; see the module docstring. Call `setup_distributed` first under torchrun."""
    rank, world = rank_world()
    device = resolve_device(config)
    if config.precision == "bf16" and device.type != "cuda":
        raise ValueError(f"precision 'bf16' is for CUDA only; running on {device} (use precision 'fp32')")
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the world size {world}")
    data = datasets.load(config.data, root=config.data_root, image_size=config.image_size,
                         channels=config.channels, class_subfolders=config.conditional and config.data == "folder")
    sde = build_sde(config)
    vae = None
    if config.vae is not None:  # a latent run: the network sees the VAE's latents
        C, H, W = data.shape
        vae = _load_vae(config, (C, H // config.downsample, W // config.downsample))
    net_config = build_net_config(config, data.shape, data.num_classes, latent_shape=None if vae is None else vae.latent_shape)
    items = config.reflow_pairs if config.loss == "reflow" else len(data)  # reflow's batches are of its pairs
    sampler = torch.utils.data.DistributedSampler(range(items), num_replicas=world, rank=rank, shuffle=True,
                                                  seed=config.seed, drop_last=True)
    if len(sampler) // (config.batch_size // world) == 0:  # reflow_pairs >= batch_size, checked by the config
        raise ValueError(f"{data.source}: {len(data)} images give no full batch of {config.batch_size // world} per rank")

    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []), contextlib.ExitStack() as stack:
        if cuda and config.tf32:
            stack.enter_context(_tf32())
        run = _setup(config, data, sde, net_config, rank, world, device, vae)
        bar = None
        if rank == 0 and config.progress and run.start < config.steps:
            from tqdm.auto import tqdm
            bar = stack.enter_context(tqdm(total=config.steps, initial=run.start, unit="step", dynamic_ncols=True))
        step, loss = _loop(run, sampler, bar)
    run.net.eval()
    if config.sr_factor > 1:
        model = build_sr_stage(config, run.ema, sde, (net_config.out_channels, net_config.image_size, net_config.image_size))
    elif run.vae is not None:
        from ..latent.model import LatentModel

        model = LatentModel(run.score_model(run.ema), run.vae)
    else:
        model = run.score_model(run.ema)
    return TrainResult(step=step, loss=loss, net=run.net, ema=run.ema, model=model)
