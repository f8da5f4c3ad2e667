"""Regenerate the shipped patch feature extractor, `scoresde/assets/patch_features.safetensors`.

Trains `scoresde.patch_features.PatchFeatureNet` on the pretext task (photograph x quarter turns of
each mirrored-at-random 16x16 train patch; scoresde/patch_features.py says why) from seed 0 with the
default `PatchFeatureTrainConfig`, measures the pretext accuracy on the train and test patches and
writes the weights with the configuration, training settings and accuracies in the safetensors metadata.

Measured for the shipped file (torch 2.13 CPU, one thread, on the 2-core machine shared with about 20
other jobs): 170 CPU seconds of training (35 minutes of wall-clock time under that load); pretext
accuracy 29.8 % on the test patches, 33.7 % on the train patches (chance 12.5 %).

    python examples/train_patch_features.py [--out PATH] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch

from scoresde.data import patches
from scoresde.patch_features import (ASSET, PatchFeatureTrainConfig, pretext_accuracy, save_patch_features,
                                     train_patch_features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ASSET), help=f"output file (default: {ASSET})")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0, the shipped weights)")
    parser.add_argument("--epochs", type=int, default=PatchFeatureTrainConfig.epochs)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small net, shared cores

    start = time.process_time()
    train_config = PatchFeatureTrainConfig(seed=args.seed, epochs=args.epochs)
    net = train_patch_features(train_config, progress=True)
    seconds = time.process_time() - start
    test, train = patches("test", 16), patches("train", 16)
    test_acc = pretext_accuracy(net, test.images, test.labels)
    train_acc = pretext_accuracy(net, train.images, train.labels)
    save_patch_features(net, args.out, train=train_config, extra={
        "test_pretext_accuracy": test_acc, "train_pretext_accuracy": train_acc, "train_cpu_seconds": round(seconds, 1),
        "torch": torch.__version__,
    })
    print(f"pretext accuracy: test {test_acc:.4f} ({len(test)} patches x 4 rotations), train {train_acc:.4f}; "
          f"{seconds:.0f} CPU s; wrote {args.out}")


if __name__ == "__main__":
    main()
