"""Train the `digits` U-Net (1.9 M parameters) on scikit-learn's 8x8 digits from a fixed seed.

--sde vp (beta 0.1..20, default), subvp or ve (sigma 0.01..50), eps prediction, c_noise =
log(sigma / alpha), continuous DSM with t ~ U(1e-5, 1), Adam at 1e-3 after 200 warmup steps, batch
128, gradient clipping at 1, EMA 0.999. This is how the shipped sub-VP and VE models were trained;
the shipped VP model adds --dequantize, non-leaking augmentation and a second, likelihood-weighted
phase, and the class-conditional one --conditional --dequantize (docs/training.md gives the exact
commands, step counts and times). Writes runs/digits_SDE/: checkpoint.safetensors (resumable: run the same command again), config.json,
metrics.jsonl and samples/step_*.png (64 EMA samples, 250 Euler-Maruyama steps).

    python examples/train_digits.py --sde ve                 # 4000 steps on the CPU
    python examples/train_digits.py --steps 200 --out runs/quick
    A="--dequantize --augment xflip,yflip,rot90,translate --augment-p 0.15"            # shipped VP:
    python examples/train_digits.py $A --steps 4000 && \
        python examples/train_digits.py $A --steps 22000 --time-sampling likelihood --lr 2e-4
    torchrun --nproc_per_node 2 examples/train_digits.py     # DDP, the batch split over 2 processes

Then sample from it:

    from scoresde.train import load_model, sample_images
    model = load_model("runs/digits_vp/checkpoint.safetensors")  # EMA weights
    x = sample_images(model, (16, 1, 8, 8), generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import argparse

from scoresde.train import TrainConfig, setup_distributed, train


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sde", default="vp", choices=["vp", "subvp", "ve"], help="forward SDE (default vp)")
    p.add_argument("--steps", type=int, default=4000, help="training steps (default 4000)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch (default 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data order and noise (default 0)")
    p.add_argument("--dequantize", action=argparse.BooleanOptionalAction, default=False,
                   help="train on uniformly dequantized digits (default off)")
    p.add_argument("--time-sampling", default="uniform", choices=["uniform", "likelihood"],
                   help="t ~ U(t_eps, 1) or likelihood weighting by importance sampling (default uniform)")
    p.add_argument("--conditional", action="store_true",
                   help="class-conditional with a learned null class, labels dropped with probability 0.1")
    p.add_argument("--dropout", type=float, default=None, help="U-Net dropout (default: the digits preset's 0.1)")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (fine-tuning; fresh optimizer and step count)")
    p.add_argument("--augment", default="", metavar="KINDS",
                   help="non-leaking augmentation, comma-separated kinds from xflip,yflip,rot90,translate (default none)")
    p.add_argument("--augment-p", type=float, default=0.0, help="probability of each augmentation kind (default 0)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0: Adam)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (default 0.999)")
    p.add_argument("--warmup", type=int, default=200, help="warmup steps (default 200)")
    p.add_argument("--out", default=None, help="output folder (default runs/digits_SDE)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    args = p.parse_args(argv)
    args.out = args.out or f"runs/digits_{args.sde}"
    config = TrainConfig(
        data="digits", net="digits", net_options={} if args.dropout is None else {"dropout": args.dropout},
        sde=args.sde, prediction="eps", c_noise="log_noise",
        time_sampling=args.time_sampling, dequantize=args.dequantize,
        conditional=args.conditional, p_uncond=0.1, init_from=args.init_from,
        augment=args.augment, augment_p=args.augment_p,
        optimizer="adamw" if args.weight_decay else "adam", weight_decay=args.weight_decay,
        lr=args.lr, warmup_steps=args.warmup, grad_clip=1.0, ema_decay=args.ema, batch_size=args.batch_size,
        steps=args.steps, seed=args.seed, device=args.device, out_dir=args.out, ckpt_every=500, log_every=50,
        sample_every=1000, sample_n=64, sample_steps=250,
    )  # TrainConfig checks every value and names the valid choices
    setup_distributed()
    res = train(config)
    print(f"step {res.step}: loss {res.loss:.4f}; checkpoint in {args.out}/checkpoint.safetensors")


if __name__ == "__main__":
    main()
