"""Picture grids of the shipped 32 x 32 patch models (issue 21; docs/latent.md), written to --out-dir:

- latent_vae_reconstructions.png: test patches and the shipped VAE's reconstructions (posterior mean);
- latent_samples.png: samples of the shipped latent model (DPM-Solver++, --steps), decoded;
- latent_cascade.png: the shipped cascade, the base's 8 x 8 samples (upsampled) above the SR stage's samples;
- with --direct FILE, a row of that 32 x 32 model's samples too (the benchmark's direct run).

    python benchmarks/latent_grids.py --out-dir docs
    python benchmarks/latent_grids.py --out-dir docs --direct runs/patches32/direct/checkpoint.safetensors

One figure row per kind of image, --n columns, seed 0, on the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402

import scoresde  # noqa: E402
from scoresde.data import patches, to_model_input  # noqa: E402
from scoresde.latent.cascade import sample_cascade, upsample  # noqa: E402
from scoresde.latent.vae_files import default_vae  # noqa: E402
from scoresde.plots import plot_image_rows  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default="docs")
    p.add_argument("--n", type=int, default=10, help="images per row (default 10)")
    p.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps of each model and stage (default 20)")
    p.add_argument("--aug-level", type=float, default=0.05, help="the cascade's augmentation level (default 0.05)")
    p.add_argument("--direct", default=None, help="a 32 x 32 model file whose samples join the sample grid")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, dpm = args.n, {"solver": "dpm_solver++", "steps": args.steps}

    test = patches("test", 32).images
    x = to_model_input(test[torch.linspace(0, len(test) - 1, n).round().long()], 256)
    vae = default_vae()
    with torch.no_grad():
        recon = vae.decode(vae.encode(x)).clamp(-1, 1)
    plot_image_rows([x, recon], out / "latent_vae_reconstructions.png", row_labels=["test patch", "VAE"],
                    title="the shipped patch VAE: test patches and reconstructions (f = 4, latents 4 x 8 x 8)")

    latent = scoresde.default_model("vp", data="patches", kind="latent")
    rows = [scoresde.sample(latent, n=n, seed=0, **dpm).x.clamp(-1, 1)]
    labels = ["latent model"]
    if args.direct:
        rows.append(scoresde.sample(scoresde.load_model(args.direct), n=n, seed=0, **dpm).x.clamp(-1, 1))
        labels.append("direct 32 x 32")
    plot_image_rows(rows, out / "latent_samples.png", row_labels=labels,
                    title=f"samples, DPM-Solver++ {args.steps} steps, seed 0")

    base, stage = scoresde.default_cascade("vp")
    res = sample_cascade(base, stage, n=n, seed=0, aug_level=args.aug_level, base_options=dpm, sr_options=dpm)
    plot_image_rows([upsample(res.low, stage.factor).clamp(-1, 1), res.x.clamp(-1, 1)], out / "latent_cascade.png",
                    row_labels=["base 8 x 8", "SR 32 x 32"],
                    title=f"the shipped cascade, DPM-Solver++ {args.steps} + {args.steps} steps, s = {args.aug_level}")
    for name in ("latent_vae_reconstructions", "latent_samples", "latent_cascade"):
        print(f"wrote {out / name}.png")


if __name__ == "__main__":
    main()
