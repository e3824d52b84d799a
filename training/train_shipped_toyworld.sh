#!/bin/bash
# The exact commands that trained the shipped ToyWorld model (see models/toyworld/README.md).
set -e
python -m slowfast_vgen.training.train --stage vae --model new:toyworld --output-dir /work/runs/vae \
  --world-seeds 16 --max-steps 150 --batch-size 4 --learning-rate 1e-3 --lr-warmup-steps 15 --checkpointing-steps 75 --seed 0
python -m slowfast_vgen.training.train --stage unet --model /work/runs/vae/model --train-text-encoder --ema --ema-decay 0.99 \
  --output-dir /work/runs/unet --world-seeds 16 --max-steps 900 --batch-size 8 --learning-rate 5e-4 --lr-warmup-steps 50 \
  --checkpointing-steps 150 --seed 0
