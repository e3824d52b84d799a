"""The inverse dynamics model of planning (paper section 3.4): two consecutive frames -> the action taken.

A video plan made by the world model is turned into actions frame pair by frame pair, the way the
paper's policy reads two consecutive observations (UniPi / AVDC style). The model is a small
convolutional network on the two frames and their difference, a diffusers `ModelMixin` + `ConfigMixin`
so that it saves and loads with `save_pretrained` / `from_pretrained` (safetensors) like the world
model's own parts. `slowfast-vgen train --stage idm` trains it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..data import memory_maze, toyworld

# A built-in world's classes: the training phrase of each of its actions, one class each.
TOYWORLD_ACTIONS = tuple(toyworld.TRAIN_PARAPHRASES[d][0] for d in toyworld.DIRECTIONS)  # "move left", ..., "stay"
MAZE_ACTIONS = tuple(memory_maze.TRAIN_PARAPHRASES[m][0] for m in memory_maze.MOTIONS)  # "walk forward", ..., "stay"
WORLD_ACTIONS = {"toyworld": TOYWORLD_ACTIONS, "memory-maze": MAZE_ACTIONS}  # by `data.worlds.WORLDS` name
# How each built-in world reads a paraphrase.
_WORLD_READERS = ((toyworld.parse_action, toyworld.TRAIN_PARAPHRASES),
                  (memory_maze.parse_action, memory_maze.TRAIN_PARAPHRASES))


class InverseDynamicsModel(ModelMixin, ConfigMixin):
    """Classifies the action between two consecutive frames among `actions` (its config's action texts).

    Args:
        actions: the action texts it can answer, one per class (ToyWorld's: one phrase per direction).
        sample_size: frame height and width in pixels (frames of another size are refused).
        block_channels: channels of the convolution blocks; the first keeps full resolution, since a
            camera step is a few pixels, and each later one halves it.
    """

    @register_to_config
    def __init__(self, actions: tuple[str, ...] = TOYWORLD_ACTIONS, sample_size: int = 64,
                 block_channels: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        if len(actions) < 2 or len(set(actions)) != len(actions):
            raise ValueError(f"actions must hold at least two distinct action texts, got {list(actions)}.")
        layers, channels = [], 9  # previous, next, and their difference
        for index, width in enumerate(block_channels):
            layers += [nn.Conv2d(channels, width, 5 if index == 0 else 3, stride=1 if index == 0 else 2,
                                 padding=2 if index == 0 else 1), nn.GroupNorm(min(8, width), width), nn.SiLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, len(actions))

    def forward(self, previous: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
        """Logits (B, len(actions)) for frame pairs, each (B, 3, H, W) in [-1, 1]."""
        features = self.features(torch.cat([previous, following, following - previous], dim=1))
        return self.classifier(features.mean(dim=(2, 3)))

    def check_frames(self, frames: np.ndarray | torch.Tensor, argument: str = "frames") -> torch.Tensor:
        """(F, H, W, 3) floats in [0, 1] (a video, or ComfyUI's IMAGE) -> (F, 3, H, W) in [-1, 1]; clear errors."""
        video = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
        size = self.config.sample_size
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"{argument} must be a video of shape (frames, height, width, 3), got "
                             f"{tuple(video.shape)}.")
        if video.shape[0] < 2:
            raise ValueError(f"{argument} has {video.shape[0]} frame(s): the inverse dynamics model reads actions "
                             "from pairs of consecutive frames, so a plan needs at least 2.")
        if tuple(video.shape[1:3]) != (size, size):
            raise ValueError(f"{argument} are {video.shape[2]}x{video.shape[1]} pixels but this inverse dynamics "
                             f"model reads {size}x{size} frames: use the model trained with this world model, or "
                             "train one for this size (slowfast-vgen train --stage idm).")
        if not video.is_floating_point():
            raise ValueError(f"{argument} must be floats in [0, 1], got {video.dtype} (divide uint8 frames by 255).")
        return video.permute(0, 3, 1, 2).to(self.device, self.dtype) * 2 - 1

    @torch.no_grad()
    def action_probabilities(self, frames: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """(F - 1, len(actions)) probabilities of each action between consecutive frames (F, H, W, 3) in [0, 1]."""
        video = self.check_frames(frames)
        previous, following = video[:-1], video[1:]
        logits = [self(previous[start:start + batch_size], following[start:start + batch_size])
                  for start in range(0, len(previous), batch_size)]
        return torch.cat(logits).float().softmax(dim=-1).cpu()

    def predict_actions(self, frames: np.ndarray | torch.Tensor) -> list[str]:
        """The action between each pair of consecutive frames: F frames -> F - 1 action texts."""
        indices = self.action_probabilities(frames).argmax(dim=-1).tolist()
        return [self.config.actions[index] for index in indices]


def action_index(actions: tuple[str, ...], action: str) -> int:
    """The class of `action` among `actions`: the text itself, or any paraphrase of one of a built-in world's
    (ToyWorld's or Memory Maze's) actions."""
    if action in actions:
        return actions.index(action)
    for parse, paraphrases in _WORLD_READERS:
        try:
            canonical = paraphrases[parse(action)][0]
        except ValueError:
            continue
        if canonical in actions:
            return actions.index(canonical)
    raise ValueError(f"The action {action!r} is not one this inverse dynamics model knows: {', '.join(actions)}.")


def frame_pairs(video: torch.Tensor, num_context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame pairs of a training clip (B, C, F, H, W) that show its action: from the last context frame
    on, each frame and the next. Returns (previous, following), each (B * pairs, C, H, W)."""
    moving = video[:, :, num_context - 1:]
    previous = moving[:, :, :-1].transpose(1, 2).flatten(0, 1)
    following = moving[:, :, 1:].transpose(1, 2).flatten(0, 1)
    return previous, following


def soften_like_generated(pipe, previous: torch.Tensor, following: torch.Tensor,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Make training pairs look like a world model's frames: a third kept as they are, a third through the
    world model's VAE, a third through the VAE and then blurred (generated frames are softer still). Both
    frames of a pair get the same treatment, so the motion between them is untouched."""
    choice = torch.randint(0, 3, (previous.shape[0],), generator=generator)
    both = torch.cat([previous, following])
    with torch.no_grad():
        latents = pipe.vae.encode(both).latent_dist.mean
        decoded = pipe.vae.decode(latents).sample.clamp(-1, 1)
        size = both.shape[-1]
        blurred = F.interpolate(F.interpolate(decoded, size=size // 2, mode="bilinear", antialias=True),
                                size=size, mode="bilinear")
    pick = torch.cat([choice, choice]).view(-1, 1, 1, 1).to(both.device)
    mixed = torch.where(pick == 0, both, torch.where(pick == 1, decoded, blurred))
    return mixed[:previous.shape[0]], mixed[previous.shape[0]:]
