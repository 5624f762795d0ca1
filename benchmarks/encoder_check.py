"""``python benchmarks/encoder_check.py RUN [--n N]``: how much a trained encoder's latents carry.

For the first N test samples with every modality present (the run's own split), the image is decoded from
its caption (and from its tone) twice: from the encoder's posterior mean of the whole sample, and from random
noise (seed 0). Prints both mean squared errors against the real image, their ratio (below 1: the latent
carries the sample's style), and the posterior's statistics (spread of the means across samples, mean
posterior std): means that barely move and a std near 1 mean the posterior collapsed onto the prior.
"""

from __future__ import annotations

import argparse

import torch

import fastmmgan
from fastmmgan.checkpoint import load_checkpoint
from fastmmgan.cli import run_cli
from fastmmgan.config import TrainConfig
from fastmmgan.errors import FastMMGANError
from fastmmgan.evaluate import split_for


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="run directory or checkpoint of a model trained with an encoder")
    p.add_argument("--n", type=int, default=200, help="test samples (default 200)")
    args = p.parse_args(argv)
    sampler = fastmmgan.load_generator(args.run)
    if not sampler.has_encoder:
        raise FastMMGANError(f"{args.run}: this model has no encoder (train it with --recon-weight or --latent-weight)")
    cfg = TrainConfig.from_dict(load_checkpoint(args.run)["config"])
    _, test = split_for(cfg)
    names = [s.name for s in sampler.modalities]
    rows = torch.nonzero(test.mask.all(dim=1)).squeeze(1)[: args.n]
    xs = [x[rows] for x in test.features]
    mu, logvar = sampler.posterior(xs, torch.ones(len(rows), len(names), dtype=torch.bool))
    print(f"{len(rows)} test samples; posterior: spread of the means {mu.std(dim=0).mean():.3f}, "
          f"mean std {(0.5 * logvar).exp().mean():.3f} (the prior: 0 and 1)")
    image = names.index("image")
    noise = torch.randn(len(rows), sampler.z_dim, generator=torch.Generator().manual_seed(0))
    for source in (n for n in names if n != "image"):
        given = [torch.zeros_like(x) for x in xs]
        given[names.index(source)] = xs[names.index(source)]
        mask = torch.zeros(len(rows), len(names), dtype=torch.bool)
        mask[:, names.index(source)] = True
        encoded = ((sampler.generate(mu, given, mask)[image] - xs[image]) ** 2).mean().item()
        random = ((sampler.generate(noise, given, mask)[image] - xs[image]) ** 2).mean().item()
        print(f"{source} -> image: MSE from the encoded latent {encoded:.4f}, from random noise {random:.4f} "
              f"(ratio {encoded / random:.3f})")
    return 0


if __name__ == "__main__":
    run_cli(main)
