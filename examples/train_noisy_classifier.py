"""Train a noise-conditional digits classifier p(y | x_t, t) for classifier guidance.

Trains `scoresde.noisy_classifier.NoisyClassifier` for one forward process on the digits train split
(1,437 images) by cross-entropy at x_t ~ q(x_t | x_0), t ~ U(t_eps, T), with Adam and a cosine
learning-rate decay from a fixed seed (`NoisyTrainConfig`), then measures its accuracy on the 360
test images at the times where sigma(t) takes the values of --sigmas (10 fresh noise draws per
image, seed 0) and writes the weights with the configuration, SDE, training settings and those
accuracies in the safetensors metadata.

    python examples/train_noisy_classifier.py --sde vp        # writes the shipped VP file

Default output: scoresde/assets/digits_noisy_classifier_<sde>.safetensors (only the VP one ships).
Measured for the shipped VP file (test accuracy by noise level): docs/guidance.md; 93-121 s of training on
one CPU thread of a shared 2-core machine, bit-identical weights on reruns there.
"""

from __future__ import annotations

import argparse
import time

import torch

from scoresde.data import digits, to_model_input
from scoresde.noisy_classifier import (
    ASSETS, NoisyClassifierConfig, NoisyTrainConfig, noisy_accuracy, save_noisy_classifier, time_at_sigma,
    train_noisy_classifier,
)
from scoresde.sampling import SDES, make_sde


def positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {s}")
    return v


def main(argv: list[str] | None = None) -> dict:
    defaults = NoisyTrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sde", default="vp", choices=sorted(SDES), help="forward process (default: vp)")
    parser.add_argument("--out", default=None, help="output file (default: scoresde/assets/digits_noisy_classifier_<sde>.safetensors)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"training seed (default: {defaults.seed})")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps, help=f"Adam steps (default: {defaults.steps})")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help=f"default: {defaults.batch_size}")
    parser.add_argument("--lr", type=positive_float, default=defaults.lr, help=f"peak learning rate (default: {defaults.lr})")
    parser.add_argument("--sigmas", type=positive_float, nargs="+", default=[0.01, 0.1, 0.3, 0.5, 0.7, 0.9],
                        help="report test accuracy at the times where sigma(t) equals these (default: 0.01 0.1 0.3 0.5 0.7 0.9)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny model: one thread is fastest and avoids OpenMP stalls on shared cores

    sde = make_sde(args.sde)
    try:  # check the noise levels before training
        times = [time_at_sigma(sde, s) for s in args.sigmas]
    except ValueError as e:
        parser.error(f"--sigmas: {e}")
    out = args.out or str(ASSETS / f"digits_noisy_classifier_{args.sde}.safetensors")
    train = NoisyTrainConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    start = time.perf_counter()
    classifier = train_noisy_classifier(sde, config=NoisyClassifierConfig(), train=train, device=args.device, progress=True)
    seconds = time.perf_counter() - start

    test = digits("test")
    x0, labels = to_model_input(test.images, test.levels).to(args.device), test.labels
    gen = torch.Generator(args.device).manual_seed(0)
    rows = []
    for s, t in zip(args.sigmas, times):
        acc = noisy_accuracy(classifier, x0, labels, t, repeats=10, generator=gen)
        alpha = float(sde.alpha(torch.tensor([t], dtype=torch.float64)))
        rows.append({"sigma": s, "t": t, "alpha": alpha, "accuracy": acc})
    save_noisy_classifier(classifier, out, train=train, extra={
        "test_accuracy": rows, "train_seconds": round(seconds, 1), "torch": torch.__version__,
    })
    print(f"trained in {seconds:.1f} s; wrote {out}")
    print("| sigma(t) | t | alpha(t) | test accuracy |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['sigma']:g} | {r['t']:.4f} | {r['alpha']:.3f} | {100 * r['accuracy']:.1f} % |")
    return {"rows": rows, "seconds": seconds, "out": out}


if __name__ == "__main__":
    main()
