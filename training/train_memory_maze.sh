#!/bin/bash
# The commands that train the Memory Maze world model (see models/memory-maze/README.md).
# Runs go to $RUNS (default ./runs); each stage resumes with --resume-from-checkpoint latest.
# Needs the optional group: pip install -e ".[memory-maze]".
set -e
RUNS=${RUNS:-runs}
CACHE=${CACHE:-$RUNS/memory-maze-cache}
# 0. A new pipeline of ToyWorld's sizes with Memory Maze's words in its vocabulary; its VAE starts from the
#    shipped ToyWorld VAE (the same architecture), which a few thousand steps adapt to the maze's frames.
[ -d "$RUNS/mm-vae/model" ] || python -m slowfast_vgen.training.init_from "$RUNS/mm-init" --spec memory_maze --vae-from models/toyworld
# 1. The VAE on single frames of 1,000 recorded episodes of mazes 1-100 (recorded into $CACHE first). Planned
#    for 2000 steps of cosine decay; stopped after checkpoint-1000 for time (its loss had flattened), and saved
#    by resuming with --max-steps 1000.
VAE=(--stage vae --model "$RUNS/mm-init" --output-dir "$RUNS/mm-vae" --data memory-maze --maze-cache "$CACHE"
     --world-seeds 100 --batch-size 4 --learning-rate 4e-4 --lr-warmup-steps 50 --checkpointing-steps 250 --seed 0
     --resume-from-checkpoint latest)
[ -d "$RUNS/mm-vae/model" ] || python -m slowfast_vgen.training.train "${VAE[@]}" --max-steps 1000
# 2. The UNet and the text encoder (from scratch), with an EMA of the UNet.
python -m slowfast_vgen.training.train --stage unet --model "$RUNS/mm-vae/model" --train-text-encoder --ema \
  --ema-decay 0.995 --output-dir "$RUNS/mm-unet" --data memory-maze --maze-cache "$CACHE" --world-seeds 100 \
  --max-steps 8000 --batch-size 8 --learning-rate 5e-4 --lr-warmup-steps 100 --checkpointing-steps 250 --seed 0 \
  --resume-from-checkpoint latest
# 3. The shipped folder: the EMA UNet and the trained text encoder of the checkpoint. The shipped model is
#    checkpoint-4750 (steps 1-2500 in one session, 2501-4750 resumed in the next; stopped there for time):
#      slowfast-vgen model export "$RUNS/mm-unet/checkpoint-4750" -o models/memory-maze --force
#    A later session without $RUNS continues from the shipped weights, as ToyWorld's stage 3 did:
#      python -m slowfast_vgen.training.train --stage unet --model models/memory-maze --train-text-encoder --ema \
#        --ema-decay 0.995 --output-dir "$RUNS/mm-unet2" --data memory-maze --maze-cache "$CACHE" --world-seeds 100 \
#        --max-steps 6000 --batch-size 8 --learning-rate 3e-4 --lr-warmup-steps 100 --checkpointing-steps 250 --seed 2
slowfast-vgen model export "$RUNS/mm-unet/checkpoint-8000" -o models/memory-maze --force
