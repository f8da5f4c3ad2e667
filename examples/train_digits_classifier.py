"""Regenerate the shipped digits classifier, `scoresde/assets/digits_classifier.safetensors`.

Trains `scoresde.classifier.DigitsClassifier` on the digits train split (1,437 images) from seed 0
with the default `DigitsTrainConfig` (60 epochs, batch 64, AdamW lr 3e-3 with cosine decay, weight
decay 1e-2, no shifts, dropout 0.3), measures its accuracy on the 360 test images and writes the
weights with the configuration, training settings and accuracy in the safetensors metadata.

Measured (torch 2.13 CPU, one thread, on a 2-core machine shared with other jobs): 14-29 s of
training (up to 75 s when the cores are busy), under a minute in all; test accuracy 98.89 %
(356 / 360), train accuracy 100 %; retraining gives bit-identical weights on the same machine. The settings were chosen on a
held-out fifth of the train split (docs/metrics.md), the seed fixed at 0 beforehand; the test set
played no part in either.

    python examples/train_digits_classifier.py [--out PATH] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch

from scoresde.classifier import ASSET, DigitsTrainConfig, accuracy, save_digits_classifier, train_digits_classifier
from scoresde.data import digits, to_model_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ASSET), help=f"output file (default: {ASSET})")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0, the shipped weights)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny model: one thread is fastest and avoids OpenMP stalls on shared cores

    start = time.perf_counter()
    train_config = DigitsTrainConfig(seed=args.seed)
    model = train_digits_classifier(args.seed, train=train_config, progress=True)
    seconds = time.perf_counter() - start
    test, train = digits("test"), digits("train")
    test_acc = accuracy(model, to_model_input(test.images, test.levels), test.labels)
    train_acc = accuracy(model, to_model_input(train.images, train.levels), train.labels)
    save_digits_classifier(model, args.out, train=train_config, extra={
        "test_accuracy": test_acc, "train_accuracy": train_acc, "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    })
    print(f"test accuracy {test_acc:.4f} ({round(test_acc * len(test))} / {len(test)}), train accuracy "
          f"{train_acc:.4f}, {seconds:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
