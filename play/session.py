"""One player's episode: the chunks so far, a state per chunk to branch from, and the episode's files.

A `PlaySession` is plain and synchronous (the server runs it on its model thread). Every chunk is one step
of the pipeline's own episode loop (`stream_episode` with one action), started from the state the chunk
before left: its context latents, its memory (immutable, so keeping it costs only what the update made
new), and the states of the sampling and memory-update generators. So a chunk played in the page is the
chunk `generate` makes for the same actions, a branch at chunk k replays exactly what chunk k's state
gives, and an export is the same MP4, memory and summary `generate` writes.

The frames themselves go to a spool file (raw 8-bit RGB, cut back on a branch), not to RAM, and only the
latest chunks' states are kept past `branch_budget_bytes`: a long session stays flat in memory, and its
oldest chunks can still be exported but no longer branched from.

Because a chunk is a function of its state and its action, the next chunk of any action can be made before
it is asked for (`make_ahead`): while the world stands still the server makes the chunk of each key, so that
a key pressed then plays at once, and the chunk it plays is the one it would have made.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from ..generate import Outputs, episode_summary, first_frame, load_memory
from ..pipelines import TEMP_LORA_PRESETS, EpisodicMemory, SlowFastVGenPipeline, memory_generator_for
from ..pipelines.atomic_files import partial_path, write_text_atomically
from ..video_files import VideoSink
from .memory_view import memory_tensors, nbytes

NO_MEMORY = "none"
# What the states kept for branching may hold; older chunks stay in the episode but cannot be branched from.
BRANCH_BUDGET_BYTES = 64 * 2**20


class PlayError(ValueError):
    """A request the session refuses, before anything changes; its message is shown in the page."""


@dataclass(frozen=True)
class ChunkState:
    """The episode after `index` chunks: everything the next chunk is made from (None where pruned)."""

    index: int
    action: str | None
    preset: str
    frames: int  # frames of the episode so far, the start frame included
    context: torch.Tensor | None = None
    memory: EpisodicMemory | None = None
    generator_state: torch.Tensor | None = None
    memory_generator_state: torch.Tensor | None = None
    seconds: float = 0.0  # what the chunk took to make
    own_bytes: int = 0  # what it keeps alive that the state before it does not

    @property
    def branchable(self) -> bool:
        return self.context is not None


@dataclass
class Chunk:
    """One chunk as played: its frames (F,H,W,3 uint8), and those of the memory-less lane in split view."""

    index: int
    action: str
    frames: np.ndarray
    seconds: float
    lane_frames: np.ndarray | None = None
    ahead: bool = False  # made ahead, before it was asked for


@dataclass(frozen=True)
class MadeChunk:
    """A chunk made from `made_from` (and the split view's lane `lane_from`) but not played yet."""

    made_from: ChunkState
    lane_from: tuple[torch.Tensor, torch.Tensor] | None
    state: ChunkState  # the episode's state once it is played
    frames: np.ndarray  # F,H,W,3 uint8
    lane: tuple[tuple[torch.Tensor, torch.Tensor], np.ndarray] | None  # the lane's next state, and its frames


class Cancelled(Exception):
    """A chunk being made was abandoned (`PlaySession.make`'s `cancelled`); nothing changed."""


def _cancel_hooks(cancelled: Callable[[], bool] | None) -> dict:
    """`stream_episode`'s step callbacks that abandon the chunk once `cancelled()` (raising from them is how
    the pipeline is cancelled: the memory and the UNet are left as they were)."""
    if cancelled is None:
        return {}

    def check(*args):
        if cancelled():
            raise Cancelled
        return args[3] if len(args) == 4 else None  # a denoising step's tensors, as given

    return {"callback_on_step_end": check, "callback_on_update_step": check}


def last_frame_path(memory_path: str | os.PathLike) -> Path:
    """Where an export keeps its last frame, beside its memory: `NAME.last.png` for `NAME.memory.safetensors`."""
    path = Path(memory_path)
    stem = path.name.removesuffix(".safetensors").removesuffix(".memory")
    return path.with_name(f"{stem}.last.png")


def memory_preset_names(pipe: SlowFastVGenPipeline) -> list[str]:
    """The presets this model can play: `none`, then every named preset (the pose memory only for a model
    whose folder records what its actions do to the camera)."""
    return [NO_MEMORY] + [name for name, config in TEMP_LORA_PRESETS.items()
                          if not config.poses or pipe.action_motions]


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return (frames * 255).round().astype(np.uint8)  # as `VideoSink` writes them


class PlaySession:
    """A played episode. `args` holds `generate`'s settings (model, world, seed, steps, guidance, fps, ...)."""

    def __init__(self, pipe: SlowFastVGenPipeline, args: argparse.Namespace, preset: str,
                 memory: EpisodicMemory | None = None, spool_dir: str | None = None,
                 branch_budget_bytes: int = BRANCH_BUDGET_BYTES):
        self.pipe, self.args = pipe, args
        self.branch_budget_bytes = branch_budget_bytes
        self.presets = memory_preset_names(pipe)
        # Unlinked at once: nothing is left behind, even by a killed server. Closed by `close`.
        self.spool = tempfile.TemporaryFile(prefix="slowfast-play-", dir=spool_dir)  # noqa: SIM115
        self.split = False
        self.lane: tuple[torch.Tensor, torch.Tensor] | None = None  # the memory-less lane: context, generator state
        self.ahead: dict[str, MadeChunk] = {}  # action -> its next chunk, made ahead from the current state
        self.start(first_frame(args, pipe.native_size), memory, preset, args.memory, args.image)

    # ------------------------------------------------------------------ the episode

    def start(self, image: np.ndarray, memory: EpisodicMemory | None, preset: str, continued_from: str | None,
              image_path: str | None) -> np.ndarray:
        """A new episode from `image` with `memory`, as `generate --memory continued_from --image image_path`
        starts one; returns the start frame as decoded (uint8)."""
        if preset not in self.presets and memory is None:
            raise PlayError(f"Unknown memory preset {preset!r}; this model plays {', '.join(self.presets)}.")
        try:
            latents = self.pipe.start_latents(image, resize=True)
        except ValueError as error:
            raise PlayError(f"The start frame: {error}") from None
        generator = torch.Generator().manual_seed(self.args.seed)
        start_frames = _to_uint8(self.pipe.postprocess(latents, "np")[0])
        self.continued_from, self.image_path = continued_from, image_path
        self.states = [ChunkState(0, None, preset, len(start_frames), latents.cpu(), memory, generator.get_state(),
                                  memory_generator_for(generator).get_state())]
        self.kept_bytes, self.oldest_kept = 0, 1  # what the states after the start keep; the oldest kept
        self.spool.seek(0)
        self.spool.truncate()
        self.spool.write(start_frames.tobytes())
        self.frame_shape = start_frames.shape[1:]
        self.lane = (latents.cpu(), generator.get_state()) if self.split else None
        self.ahead.clear()
        return start_frames

    @property
    def chunks(self) -> int:
        return len(self.states) - 1

    @property
    def current(self) -> ChunkState:
        return self.states[-1]

    def _chunk_settings(self) -> dict:
        return {"num_frames": self.args.frames_per_chunk, "num_inference_steps": self.args.steps,
                "guidance_scale": self.args.guidance}

    def make(self, action: str, cancelled: Callable[[], bool] | None = None) -> MadeChunk:
        """The chunk `action` makes from the current state, without playing it: the state is left as it is,
        so the chunk can be made ahead and played later (`play`), or dropped. Every input of a chunk is in
        its state (context, immutable memory, generator states), so a chunk made ahead is bit for bit the
        one `step` would make then. `cancelled()` is asked after every denoising and memory-update step;
        once it says True the chunk is abandoned (`Cancelled`), nothing changed."""
        started, state = time.perf_counter(), self.current
        generator = torch.Generator().set_state(state.generator_state)
        learns = state.preset != NO_MEMORY
        memory_generator = torch.Generator().set_state(state.memory_generator_state) if learns else None
        settings = None
        if learns:
            settings = state.memory.config if state.memory is not None else TEMP_LORA_PRESETS[state.preset]
        hooks = _cancel_hooks(cancelled)
        try:
            step = next(iter(self.pipe.stream_episode(
                [action], start_latents=state.context, memory=state.memory if learns else None,
                memory_settings=settings, update_memory=learns, generator=generator,
                memory_generator=memory_generator, **hooks, **self._chunk_settings())))
        except ValueError as error:
            raise PlayError(f"{action!r}: {error}") from None
        frames = _to_uint8(self.pipe.postprocess(step.latents, "np")[0])
        lane = self._lane_chunk(action, hooks) if self.lane is not None else None
        after = ChunkState(state.index + 1, action, state.preset, state.frames + len(frames), step.latents, step.memory,
                           generator.get_state(),
                           memory_generator.get_state() if learns else state.memory_generator_state,
                           round(time.perf_counter() - started, 3))
        return MadeChunk(state, self.lane, after, frames, lane)

    def play(self, made: MadeChunk) -> Chunk:
        """Play a chunk `make` made: it becomes the episode's next chunk. Refused if the episode has moved on
        since it was made (another chunk, a branch, a preset or split switch)."""
        if not self._follows(made):
            raise PlayError(f"The chunk of {made.state.action!r} was made from another state of the episode.")
        self.spool.seek(0, os.SEEK_END)
        self.spool.write(made.frames.tobytes())
        self.states.append(made.state)
        self.lane = made.lane[0] if made.lane is not None else None
        self.ahead.clear()  # made from the state before: none of them follows from this one
        self._prune()
        return Chunk(self.chunks, made.state.action, made.frames, made.state.seconds,
                     made.lane[1] if made.lane is not None else None)

    def step(self, action: str) -> Chunk:
        """Play one chunk of `action` from the current state: the one made ahead for it if there is one
        (`make_ahead`), else made now."""
        made = self.ahead.pop(action, None)
        if made is None or not self._follows(made):
            return self.play(self.make(action))
        return replace(self.play(made), ahead=True)

    def make_ahead(self, action: str, cancelled: Callable[[], bool] | None = None) -> None:
        """Make the chunk `action` would make next and keep it for `step` (see `make`)."""
        self.ahead[action] = self.make(action, cancelled)

    def made_ahead(self, action: str) -> bool:
        made = self.ahead.get(action)
        return made is not None and self._follows(made)

    def _follows(self, made: MadeChunk) -> bool:
        """Whether `made` was made from the episode as it is now (its state, and the split view's lane)."""
        return made.made_from is self.current and made.lane_from is self.lane

    def _lane_chunk(self, action: str, hooks: dict) -> tuple[tuple[torch.Tensor, torch.Tensor], np.ndarray]:
        """The same chunk without memory, from the lane's own context, with the same noise as the main lane:
        the lane's next (context, generator state), and the chunk's frames."""
        context, generator_state = self.lane
        generator = torch.Generator().set_state(generator_state)
        step = next(iter(self.pipe.stream_episode([action], start_latents=context, update_memory=False,
                                                  generator=generator, **hooks, **self._chunk_settings())))
        return (step.latents, generator.get_state()), _to_uint8(self.pipe.postprocess(step.latents, "np")[0])

    @staticmethod
    def _arrays(state: ChunkState) -> dict[int, int]:
        """Address -> bytes of every array a state keeps alive (its context and its memory's)."""
        if not state.branchable:
            return {}
        arrays = [state.context] + (memory_tensors(state.memory) if state.memory is not None else [])
        return {(a.data_ptr() if isinstance(a, torch.Tensor) else a.__array_interface__["data"][0]): nbytes(a)
                for a in arrays}

    def _prune(self) -> None:
        """Forget the oldest chunks' states (not their frames) once the kept states pass the budget. A state
        is charged for what it holds that the one before it does not (a memory update shares the rest)."""
        new, previous = self._arrays(self.current), self._arrays(self.states[-2])
        own = sum(size for address, size in new.items() if address not in previous)
        self.states[-1] = replace(self.current, own_bytes=own)
        self.kept_bytes += own
        while self.kept_bytes > self.branch_budget_bytes and self.oldest_kept < self.chunks:
            state = self.states[self.oldest_kept]
            self.kept_bytes -= state.own_bytes
            self.states[state.index] = ChunkState(state.index, state.action, state.preset, state.frames,
                                                  seconds=state.seconds)
            self.oldest_kept += 1

    def branch(self, index: int) -> None:
        """Go back to the episode after `index` chunks (0: the start); later chunks are dropped."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= self.chunks:
            raise PlayError(f"There is no chunk {index!r} to branch from (the episode has {self.chunks}).")
        if not self.states[index].branchable:
            raise PlayError(f"Chunk {index} is too old to branch from: only chunks {self.oldest_kept} to {self.chunks} "
                            "keep their state (their memories would not fit the budget). Export the episode to keep "
                            "it.")
        del self.states[index + 1:]
        self.oldest_kept = min(self.oldest_kept, index + 1)
        self.kept_bytes = sum(s.own_bytes for s in self.states[self.oldest_kept:])
        self.spool.truncate(self.current.frames * int(np.prod(self.frame_shape)))
        if self.split:
            self.lane = (self.current.context, self.current.generator_state)
        self.ahead.clear()

    def set_preset(self, preset: str) -> None:
        """Play on with another memory preset: a new memory of it from here (the earlier chunks keep theirs,
        and branching to one of them brings it back)."""
        if preset not in self.presets:
            raise PlayError(f"Unknown memory preset {preset!r}; this model plays {', '.join(self.presets)}.")
        if preset != self.current.preset:
            self.states[-1] = replace(self.current, preset=preset, memory=None)
            self.ahead.clear()

    def set_split(self, on: bool) -> None:
        """Split view: also play every action without memory, from here, with the same noise."""
        self.split = bool(on)
        self.lane = (self.current.context, self.current.generator_state) if self.split else None
        self.ahead.clear()

    # ------------------------------------------------------------------ files

    def save_memory(self, path: str | os.PathLike, force: bool = False) -> Path:
        """The current memory as `generate` writes it (atomically)."""
        memory, path = self.current.memory, Path(path)
        if memory is None:
            raise PlayError("There is no memory to save yet: choose a memory preset and play a chunk.")
        if not path.name.endswith(".safetensors"):
            raise PlayError(f"{path}: a memory file must end in .safetensors.")
        if path.is_dir() or (path.exists() and not force):
            raise PlayError(f"{path} already exists; tick 'replace existing files' to overwrite it, or choose another "
                            "name.")
        memory.save(path)
        return path

    def load_memory(self, path: str | os.PathLike) -> np.ndarray:
        """Start again with a saved memory, as `generate --memory PATH` does: from the frame its export left
        beside it (`NAME.last.png`, so the episode goes on), else from this session's start frame."""
        try:
            memory = load_memory(os.fspath(path), self.pipe)
        except SystemExit as refusal:  # generate's own message, word for word
            raise PlayError(str(refusal.code)) from None
        beside = last_frame_path(path)
        image_path = str(beside) if beside.is_file() else self.args.image
        image = first_frame(argparse.Namespace(**{**vars(self.args), "image": image_path}), self.pipe.native_size)
        return self.start(image, memory, self._preset_of(memory), os.fspath(path), image_path)

    @staticmethod
    def _preset_of(memory: EpisodicMemory) -> str:
        """The preset name of a memory's settings, or 'loaded' (it then learns with its own settings)."""
        return next((name for name, config in TEMP_LORA_PRESETS.items() if config == memory.config), "loaded")

    def spooled_frames(self, batch: int = 64):
        """The episode's frames so far (uint8), a batch at a time."""
        frame_bytes = int(np.prod(self.frame_shape))
        self.spool.seek(0)
        remaining = self.current.frames
        while remaining:
            count = min(batch, remaining)
            data = self.spool.read(count * frame_bytes)
            remaining -= count
            yield np.frombuffer(data, np.uint8).reshape(count, *self.frame_shape)

    def export(self, video: str | os.PathLike, force: bool = False, interrupted: bool = False) -> Path:
        """The episode as `generate` writes one: `NAME.mp4`, `NAME.memory.safetensors`, `NAME.json` (and
        `NAME.last.png`, the frame `generate --memory NAME.memory.safetensors --image NAME.last.png` goes on
        from), each renamed into place when complete."""
        state, memory = self.current, self.current.memory
        args = argparse.Namespace(**{**vars(self.args), "memory": self.continued_from, "image": self.image_path,
                                     "no_temp_lora": memory is None and state.preset == NO_MEMORY})
        try:
            inputs = {"--memory": self.continued_from, "--image": self.image_path}
            outputs = Outputs(os.fspath(video), None, force, inputs)
        except SystemExit as refusal:  # generate's words, but the page's switch
            raise PlayError(str(refusal.code).replace("pass --force", "tick 'replace existing files'")) from None
        failed = True
        try:
            sink = VideoSink(str(outputs.partial_video), self.args.fps, self.pipe.native_size, outputs.journal)
            try:
                for frames in self.spooled_frames():
                    sink.write(frames / 255.0)
            finally:
                sink.close()
            os.replace(outputs.partial_video, outputs.video)
            if memory is not None:
                memory.save(outputs.memory)
            last = last_frame_path(outputs.memory)
            temporary = partial_path(last)
            frame = next(iter(self._last_frame()))
            if not cv2.imwrite(str(temporary), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
                raise OSError(f"OpenCV could not write {last}.")
            os.replace(temporary, last)
            actions = [s.action for s in self.states[1:]]
            config = TEMP_LORA_PRESETS.get(state.preset) or TEMP_LORA_PRESETS["paper"]
            summary = episode_summary(args, self.pipe, outputs, state.frames, memory, config, actions, interrupted,
                                      {"chunks": [s.seconds for s in self.states[1:]]})
            summary["play"] = {
                "presets": [s.preset for s in self.states[1:]], "last_frame": str(last),
                "continue_with": (f"slowfast-vgen generate NEXT.mp4 --model {self.args.model} --seed {self.args.seed} "
                                  f"--steps {self.args.steps} --image {last}"
                                  + (f" --memory {outputs.memory}" if memory is not None else " --no-temp-lora")
                                  + " --actions '...'"),
            }
            write_text_atomically(outputs.summary, json.dumps(summary, indent=2, default=str))
            failed = False
        finally:
            outputs.partial_video.unlink(missing_ok=True)
            outputs.journal.unlink(missing_ok=True)
            outputs.release(failed=failed)
        return outputs.video

    def _last_frame(self):
        frame_bytes = int(np.prod(self.frame_shape))
        self.spool.seek((self.current.frames - 1) * frame_bytes)
        yield np.frombuffer(self.spool.read(frame_bytes), np.uint8).reshape(self.frame_shape)

    def close(self) -> None:
        self.spool.close()
        self.states = []
        self.lane = None
        self.ahead.clear()
