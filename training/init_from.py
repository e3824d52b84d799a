"""A new world-model folder to train from: random weights of a named size, optionally with the VAE of a
trained model of the same VAE architecture (a new world's frames adapt a trained VAE in far fewer steps
than a VAE learns from scratch).

    python -m slowfast_vgen.training.init_from runs/mm-init --spec memory_maze --vae-from models/toyworld
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from diffusers import AutoencoderKL

from ..pipelines import WorldModelSpec, build_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slowfast_vgen.training.init_from", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="the new pipeline folder (refused if it exists, unless --force)")
    parser.add_argument("--spec", default="toyworld", help="WorldModelSpec size: tiny, toyworld, memory_maze, memory_maze_3_levels, mid")
    parser.add_argument("--vae-from", metavar="MODEL", help="a trained pipeline folder whose VAE to start from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    if not callable(getattr(WorldModelSpec, args.spec, None)) or args.spec.startswith("_") or args.spec == "to_dict":
        parser.error(f"--spec {args.spec!r}: unknown size; use tiny, toyworld, memory_maze, memory_maze_3_levels or mid.")
    if os.path.exists(args.output) and not args.force:
        if os.path.isfile(os.path.join(args.output, "model_index.json")):
            print(f"{args.output} exists: kept (pass --force to make it again).")
            return 0
        parser.error(f"{args.output} exists and is not a pipeline folder; choose another path.")
    vae = None
    if args.vae_from:
        if not os.path.isfile(os.path.join(args.vae_from, "vae", "config.json")):
            parser.error(f"--vae-from {args.vae_from!r} has no vae/config.json: give a pipeline folder.")
        vae = AutoencoderKL.from_pretrained(args.vae_from, subfolder="vae")
    pipe = build_pipeline(getattr(WorldModelSpec, args.spec)(), seed=args.seed)
    if vae is not None:
        sizes = ("block_out_channels", "latent_channels", "sample_size")
        if any(list(np.atleast_1d(vae.config[k])) != list(np.atleast_1d(pipe.vae.config[k])) for k in sizes):
            parser.error(f"--vae-from {args.vae_from!r}: its VAE does not have the sizes of --spec {args.spec}.")
        pipe.vae.load_state_dict(vae.state_dict())
        pipe.vae.register_to_config(scaling_factor=vae.config.scaling_factor)
    pipe.save_pretrained(args.output)
    print(f"Saved a new {args.spec} pipeline to {args.output}" + (f" with the VAE of {args.vae_from}." if vae else "."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
