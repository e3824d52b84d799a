#!/bin/bash
# The exact commands that trained the shipped ToyWorld model (see models/toyworld/README.md).
# Runs go to $RUNS (default ./runs); each stage resumes with --resume-from-checkpoint latest.
set -e
RUNS=${RUNS:-runs}
# 1. The VAE, from scratch: 2500 steps, then 4000 more at a lower learning rate.
python -m slowfast_vgen.training.train --stage vae --model new:toyworld --output-dir "$RUNS/vae" \
  --world-seeds 16 --max-steps 2500 --batch-size 4 --learning-rate 1e-3 --lr-warmup-steps 50 --checkpointing-steps 250 --seed 0
python -m slowfast_vgen.training.train --stage vae --model "$RUNS/vae/model" --output-dir "$RUNS/vae2" \
  --world-seeds 16 --max-steps 4000 --batch-size 4 --learning-rate 4e-4 --lr-warmup-steps 50 --checkpointing-steps 500 --seed 1
# 2. The UNet and the text encoder (from scratch), with an EMA of the UNet.
python -m slowfast_vgen.training.train --stage unet --model "$RUNS/vae2/model" --train-text-encoder --ema --ema-decay 0.995 \
  --output-dir "$RUNS/unet" --world-seeds 16 --max-steps 4000 --batch-size 8 --learning-rate 5e-4 --lr-warmup-steps 100 \
  --checkpointing-steps 250 --seed 0
# 3. The shipped folder: the EMA UNet and the trained text encoder of the last checkpoint.
slowfast-vgen model export "$RUNS/unet/checkpoint-4000" -o models/toyworld --force
