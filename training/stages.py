"""The four stages of `slowfast-vgen train`: what each trains, on which data, its loss at each step, and what
it saves. `train.run` runs any of them through the same loop (accumulation, clipping, EMA, checkpoints).

- `VaeStage`: the AutoencoderKL on single frames, then its latent scaling factor;
- `UnetStage`: masked conditional diffusion (paper Eq. 1-2), optionally with the text encoder;
- `IdmStage`: the inverse dynamics model of planning, on frames as the world model draws them;
- `SlowFastStage`: Algorithm 1 (b) (`slow_fast.slow_fast_step`), one episode a step.

Part of the command line: a stage reads the parsed arguments and refuses bad ones with `SystemExit`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

import torch
from diffusers import DDPMScheduler

from ..data import streams
from ..data.manifest import read_manifest
from ..data.memory_maze_episodes import PATH_FAMILIES_3D, load_cache, write_cache
from ..data.toyworld import ToyWorld
from ..pipelines import SlowFastVGenPipeline, inverse_dynamics
from ..pipelines.inverse_dynamics import InverseDynamicsModel
from ..pipelines.temp_lora import memory_applied
from . import slow_fast
from .losses import encode_actions, idm_loss, vae_loss

DiffusionLoss = Callable[..., torch.Tensor]  # `losses.masked_diffusion_loss`'s signature


def sample_stream(args: argparse.Namespace, image_size: int, context_window: int, seed: int) -> streams.SampleStream:
    """The batches of `--data`: ToyWorld worlds 1..`--world-seeds`, the Memory Maze episodes recorded in
    `--maze-cache` (recorded there first when missing), or the clips of `--manifest`."""
    if args.data == "manifest":
        source = {"records": read_manifest(args.manifest, args.on_bad_record)}
    elif args.data == "memory-maze":
        source = {"episodes": maze_episodes(args, image_size)}
    else:
        source = {"worlds": [ToyWorld(seed, view_size=image_size) for seed in range(1, args.world_seeds + 1)]}
    return streams.SampleStream(args.batch_size, image_size, context_window, seed, args.max_generate, **source)


def maze_episodes(args: argparse.Namespace, image_size: int) -> list[dict]:
    """The Memory Maze episodes recorded in `--maze-cache` for mazes 1..`--world-seeds` (recorded there first
    where missing or damaged)."""
    seeds = range(1, args.world_seeds + 1)
    write_cache(args.maze_cache, seeds, args.episodes_per_maze, view_size=image_size,
                processes=min(2, os.cpu_count() or 1))
    return load_cache(args.maze_cache, seeds, args.episodes_per_maze, view_size=image_size)


class Stage:
    """A stage of training. `trained` are the modules it trains (before accelerate prepares them); `step`
    computes one step's loss and its gradients on the prepared `models`; `save` writes `saves`."""

    saves = "the world model"

    def __init__(self, args: argparse.Namespace, pipe: SlowFastVGenPipeline, diffusion_loss: DiffusionLoss):
        self.args, self.pipe, self.diffusion_loss = args, pipe, diffusion_loss
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.trained: list[torch.nn.Module] = [pipe.unet] + ([pipe.text_encoder] if args.train_text_encoder else [])
        self.data = None
        self._batches = None

    def stream(self, seed: int):
        """The stage's data stream (its state saves with the checkpoints)."""
        self.data = sample_stream(self.args, self.pipe.native_size, self.pipe.context_window, seed)
        return self.data

    def next_batch(self, device) -> tuple[torch.Tensor, int, list[str]]:
        if self._batches is None:  # made at the first step, after a resume has set the stream's state
            self._batches = iter(self.data)
        video, num_context, actions = next(self._batches)
        return video.to(device), num_context, actions

    def step(self, accelerator, models: list, parameters: list, generator: torch.Generator) -> tuple[torch.Tensor, bool]:
        """One step's loss, its gradients taken; and whether they are finite on every process."""
        raise NotImplementedError

    def save(self, output_dir: Path, device) -> Path:
        """Write what the stage trained; returns the folder."""
        self.pipe.to("cpu").save_pretrained(output_dir / "model")
        return output_dir / "model"


class VaeStage(Stage):
    def __init__(self, args, pipe, diffusion_loss):
        super().__init__(args, pipe, diffusion_loss)
        self.trained = [pipe.vae]

    def step(self, accelerator, models, parameters, generator):
        video, _, _ = self.next_batch(accelerator.device)
        loss = vae_loss(models[0], video.permute(0, 2, 1, 3, 4).flatten(0, 1), generator)
        accelerator.backward(loss)
        return loss, True

    def save(self, output_dir, device):
        set_latent_scaling(self.pipe, self.data, device)
        return super().save(output_dir, device)


class UnetStage(Stage):
    def step(self, accelerator, models, parameters, generator):
        args, pipe = self.args, self.pipe
        video, num_context, actions = self.next_batch(accelerator.device)
        with torch.no_grad():
            latents = pipe.encode_pixels(video)
        dropped = torch.rand(len(actions), generator=generator) < args.action_dropout  # for guidance
        actions = ["" if drop else action for drop, action in zip(dropped.tolist(), actions)]
        with torch.set_grad_enabled(args.train_text_encoder):
            text_embeds = encode_actions(pipe, models[1] if args.train_text_encoder else pipe.text_encoder,
                                         actions, accelerator.device)
        loss = self.diffusion_loss(models[0], self.noise_scheduler, latents, num_context, text_embeds, generator)
        accelerator.backward(loss)
        return loss, True


class IdmStage(Stage):
    saves = "the inverse dynamics model"

    def __init__(self, args, pipe, diffusion_loss):
        super().__init__(args, pipe, diffusion_loss)
        self.idm = InverseDynamicsModel(actions=idm_actions(args), sample_size=pipe.native_size)
        self.trained = [self.idm]

    def step(self, accelerator, models, parameters, generator):
        video, num_context, actions = self.next_batch(accelerator.device)
        loss = idm_loss(models[0], self.idm.config.actions, self.pipe, video, num_context, actions, generator)
        accelerator.backward(loss)
        return loss, True

    def save(self, output_dir, device):
        self.idm.to("cpu").save_pretrained(output_dir / "inverse_dynamics")
        return output_dir / "inverse_dynamics"


class SlowFastStage(Stage):
    def __init__(self, args, pipe, diffusion_loss):
        super().__init__(args, pipe, diffusion_loss)
        try:
            self.config = slow_fast.parse_temp_lora(args.temp_lora)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        with memory_applied(pipe.unet, pipe.new_memory(self.config)):
            pass  # the LoRA layers are put in once, before accelerate wraps the UNet; Θ is never trained here

    def stream(self, seed):
        args, pipe = self.args, self.pipe
        chunk_frames = pipe.context_window // 2
        if args.data == "manifest":
            try:
                self.data = streams.ManifestEpisodeStream(args.manifest, args.on_bad_record, *args.episode_chunks,
                                                          chunk_frames, pipe.native_size, seed=seed)
            except (OSError, ValueError) as error:  # the manifest's own messages name the file and line
                raise SystemExit(f"--manifest: {error}") from None
        elif args.data == "memory-maze":
            self.data = streams.MazeEpisodeStream(maze_episodes(args, pipe.native_size),
                                                  tuple(args.families or PATH_FAMILIES_3D), *args.episode_chunks,
                                                  seed=seed)
        else:
            self.data = streams.EpisodeStream(args.world_seeds, *args.episode_chunks, chunk_frames, pipe.native_size,
                                              seed=seed, families=tuple(args.families or streams.PATH_FAMILIES))
        return self.data

    def step(self, accelerator, models, parameters, generator):
        args, pipe, device = self.args, self.pipe, accelerator.device

        def slow_loss(model, latents, num_context, action):
            """Slow learning's masked loss on one clip, its action dropped to "" at the dropout rate (for guidance)."""
            dropped = torch.rand(1, generator=generator).item() < args.action_dropout
            text_embeds = encode_actions(pipe, pipe.text_encoder, ["" if dropped else action], device)
            return self.diffusion_loss(model, self.noise_scheduler, latents, num_context, text_embeds, generator)

        return slow_fast.slow_fast_step(accelerator, models[0], pipe, self.data, self.config, slow_loss, parameters)


STAGES: dict[str, type[Stage]] = {"vae": VaeStage, "unet": UnetStage, "idm": IdmStage, "slow-fast": SlowFastStage}


def idm_actions(args: argparse.Namespace) -> tuple[str, ...]:
    """The inverse dynamics model's classes: a built-in world's actions (ToyWorld's directions, Memory Maze's
    turns, walks and stay), or the distinct actions of a manifest."""
    if args.data in inverse_dynamics.WORLD_ACTIONS:
        return inverse_dynamics.WORLD_ACTIONS[args.data]
    if not args.manifest:
        raise SystemExit("--data manifest needs --manifest PATH (JSON Lines: video, start, end, action).")
    actions = tuple(sorted({record.action for record in read_manifest(args.manifest, args.on_bad_record)}))
    if len(actions) < 2:
        raise SystemExit(f"--stage idm: the manifest {args.manifest} has {len(actions)} distinct action(s); an "
                         "inverse dynamics model tells at least two apart.")
    return actions


@torch.no_grad()
def set_latent_scaling(pipe: SlowFastVGenPipeline, stream: streams.SampleStream, device, batches: int = 8) -> None:
    """Scale latents to unit variance (what `scaling_factor` is for), measured on training frames."""
    pipe.vae.register_to_config(scaling_factor=1.0)
    samples = iter(stream)
    latents = torch.cat([pipe.encode_pixels(next(samples)[0].to(device)).flatten() for _ in range(batches)])
    pipe.vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
