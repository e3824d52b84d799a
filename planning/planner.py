"""Planning with video plans (paper section 3.4): the world model imagines the way, chunk by chunk, with
its Temp-LoRA memory; the inverse dynamics model reads the actions off consecutive plan frames; the
actions are executed in the world.

    memory <- Temp-LoRA over the true way out               (what the agent saw: `memory_of_trip`)
    for each subgoal of the instruction:                    (the decomposer: scripted, or your language model)
        open loop:   plan all its chunks (the product's `stream_episode`, memory updated on the plan),
                     then execute every action the inverse dynamics model reads off the plan;
        closed loop: plan one chunk from the true observation, execute its actions, learn the observed
                     chunk into the memory, and plan again from where the camera really is.

The sampling noise comes from one generator seeded by `seed` and the memory updates from a stream derived
from it (`memory_generator_for`), as in the episode loop, so that with the same seed plans with and
without memory differ by memory alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from ..data.retrace import RETRACE_INSTRUCTIONS, HELD_OUT_INSTRUCTIONS, RetraceTask, retrace_scores
from ..data.toyworld import ToyWorld, parse_action
from ..evaluation.protocols import decode
from ..pipelines import (DEFAULT_GUIDANCE, DEFAULT_STEPS, TEMP_LORA_PRESETS, EpisodicMemory, SlowFastVGenPipeline,
                         TempLoRAConfig, memory_generator_for)
from ..pipelines.inverse_dynamics import InverseDynamicsModel
from ..pipelines.memorize import memorize, memory_of

Decomposer = Callable[[str], list[str]]
KNOWN_INSTRUCTIONS = RETRACE_INSTRUCTIONS + HELD_OUT_INSTRUCTIONS

# The memories to plan with (docs/planning.md): no memory, or a Temp-LoRA preset. "memory" is another name
# of the "strong" preset, kept for the plan-eval runs and commands that use it.
MEMORY_SETTINGS: dict[str, TempLoRAConfig | None] = {"none": None, **TEMP_LORA_PRESETS,
                                                     "memory": TEMP_LORA_PRESETS["strong"]}
# `plan`'s memory, and the one Table 2 compares with none: the panorama, which recalls the way back
# (the comparison with the other memories, and its figures: docs/planning.md, "Table 2 on ToyWorld").
DEFAULT_MEMORY_SETTING = "panorama"


def scripted_decomposer(instruction: str) -> list[str]:
    """Subgoals of an instruction: its parts split at "then" and ";" ("go left, then go back to the start"
    -> ["go left", "go back to the start"]); one subgoal when it has none. Bring a language model by
    passing any text -> list of texts callable instead."""
    parts = [part.strip(" ,.") for part in re.split(r"\bthen\b|;", instruction.strip())]
    parts = [re.sub(r"\s+and$", "", part).strip(" ,.") for part in parts]
    return [part for part in parts if part] or [instruction.strip()]


@dataclass
class PlanResult:
    """A plan and its execution: frames in [0, 1] (F, H, W, 3), the start frame (the last one observed
    before planning) first in both, one executed action per frame after it, and the camera's positions."""

    subgoals: list[str]
    plan_frames: np.ndarray
    executed_frames: np.ndarray
    actions: list[str]
    positions: list[tuple[int, int]]
    closed_loop: bool
    scores: dict = field(default_factory=dict)


def check_plan_inputs(pipe: SlowFastVGenPipeline, idm: InverseDynamicsModel, instruction: str,
                      num_chunks: int) -> None:
    """Clear errors before any work: an instruction to plan, a horizon, an inverse dynamics model of the
    world model's frame size."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("instruction is empty: say where to go, e.g. 'go back to the start'.")
    if num_chunks < 1:
        raise ValueError(f"num_chunks must be at least 1 (chunks to plan), got {num_chunks}.")
    if idm.config.sample_size != pipe.native_size:
        raise ValueError(f"The inverse dynamics model reads {idm.config.sample_size}-pixel frames but the world "
                         f"model makes {pipe.native_size}-pixel ones: use the inverse dynamics model trained with "
                         "this world model (slowfast-vgen train --stage idm --model <world model>).")


def asks_way_back(subgoal: str) -> bool:
    """Whether a subgoal is one of the retrace instructions (trained or held out). With a panorama memory its
    chunks recall the way the episode came (`recall="way back"`): the memory, not the world model, knows
    the way; the world model draws the chunks around what is recalled."""
    return " ".join(subgoal.lower().split()) in KNOWN_INSTRUCTIONS


def recall_for(subgoal: str, temp_lora: TempLoRAConfig | None) -> dict:
    """The pipeline's `recall` argument for planning `subgoal` with `temp_lora`'s memory."""
    return {"recall": "way back"} if temp_lora is not None and temp_lora.panorama and asks_way_back(subgoal) else {}


def untrained_instruction(instruction: str, decomposer: Decomposer) -> str | None:
    """A warning when a subgoal is neither a ToyWorld action nor an instruction the task models were trained
    on (the plan is still made: the text encoder places it somewhere, which may be nowhere useful)."""
    unknown = []
    for subgoal in decomposer(instruction):
        try:
            parse_action(subgoal)
        except ValueError:
            if " ".join(subgoal.lower().split()) not in KNOWN_INSTRUCTIONS:
                unknown.append(subgoal)
    if not unknown:
        return None
    return (f"The world model was not trained on the subgoal(s) {unknown}; it plans anyway, but expect a plan that "
            f"wanders. Trained instructions: {', '.join(RETRACE_INSTRUCTIONS)}, or ToyWorld's moves.")


def learn_trip(pipe: SlowFastVGenPipeline, chunks: list[torch.Tensor], actions: list[str],
               config: TempLoRAConfig | None, generator: torch.Generator, memory: EpisodicMemory | None = None,
               way_back: str | None = None,
               callback_on_step_end: Callable[[int, int], None] | None = None) -> Iterator[EpisodicMemory]:
    """Temp-LoRA over recorded chunks (the start frame's latents first), one update per chunk as the episode
    loop learns them; yields the memory after each (`pipelines.memorize.memorize`). `way_back` is the text
    of going back through each chunk (for memories that learn the way back with its text,
    `direction="backward"` and `action_text=True`); `callback_on_step_end` is `update_memory`'s."""
    return memorize(pipe, chunks, actions, memory, config, generator, [way_back] * len(actions),
                    callback_on_step_end)


def memory_of_trip(pipe: SlowFastVGenPipeline, chunks: list[torch.Tensor], actions: list[str],
                   config: TempLoRAConfig | None, generator: torch.Generator,
                   way_back: str | None = None) -> EpisodicMemory | None:
    """The memory of an observed trip (`learn_trip`'s last); None without a memory setting."""
    if config is None:
        return None
    return memory_of(pipe, chunks, actions, settings=config, generator=generator,
                     reverse_actions=[way_back] * len(actions))


def execute(world: ToyWorld, start: tuple[int, int], actions: list[str]) -> list[tuple[int, int]]:
    """Camera positions after each action (one frame each); the camera stops at the world's edge."""
    return world.path(actions, 1, start)[1:]


def walk_and_see(world: ToyWorld, start: tuple[int, int],
                 actions: list[str]) -> tuple[list[tuple[int, int]], np.ndarray]:
    """`execute`, and the true views on the way (F, H, W, 3) in [0, 1]."""
    walked = execute(world, start, actions)
    return walked, np.stack([world.render(*p) for p in walked]).astype(np.float32) / 255


def plan_subgoals(decomposer: Decomposer, instruction: str, horizon: int) -> list[tuple[str, int]]:
    """The decomposer's subgoals, each with its share of the `horizon` chunks (the first ones get the rest)."""
    subgoals = decomposer(instruction)
    if not subgoals or not all(isinstance(s, str) and s.strip() for s in subgoals):
        raise ValueError(f"The decomposer gave {subgoals!r} for {instruction!r}: it must return a non-empty "
                         "list of non-empty subgoal texts.")
    return [(goal, horizon // len(subgoals) + (1 if i < horizon % len(subgoals) else 0))
            for i, goal in enumerate(subgoals)]


def plan_retrace(pipe: SlowFastVGenPipeline, idm: InverseDynamicsModel, task: RetraceTask,
                 temp_lora: TempLoRAConfig | None = None, closed_loop: bool = False, num_chunks: int | None = None,
                 seed: int = 0, num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE,
                 decomposer: Decomposer = scripted_decomposer) -> PlanResult:
    """Plan the way back of a retrace task with the world model, execute it in the true ToyWorld, score it.

    The agent has walked the way out (its true frames are observed); `temp_lora` None plans without memory.
    `num_chunks` is the planning horizon (default: the way out's chunks plus one), shared by the subgoals.
    """
    horizon = num_chunks if num_chunks is not None else task.num_outward + 1
    check_plan_inputs(pipe, idm, task.instruction, horizon)
    world, chunk_frames = task.episode.world, task.episode.chunk_frames
    subgoals = plan_subgoals(decomposer, task.instruction, horizon)
    chunk_kwargs = {"num_frames": chunk_frames, "num_inference_steps": num_inference_steps,
                    "guidance_scale": guidance_scale}

    # 1. The way out, observed: its latents and the memory of it.
    outward = task.outward_frames()
    observed = [pipe.encode_frames(outward[:1])] + [
        pipe.encode_frames(outward[1 + i * chunk_frames:1 + (i + 1) * chunk_frames]) for i in range(task.num_outward)]
    generator = torch.Generator().manual_seed(seed)
    memory_generator = memory_generator_for(generator)
    memory = memory_of_trip(pipe, observed, list(task.outward_actions), temp_lora, memory_generator,
                            way_back=task.instruction)

    # 2. Plan and execute, subgoal by subgoal.
    position = task.episode.positions[task.num_outward * chunk_frames]
    context, last_frame = observed[-1], outward[-1]
    plan_frames, executed_frames, actions, positions = [last_frame[None]], [last_frame[None]], [], [position]
    for subgoal, chunks in subgoals:
        if not closed_loop:
            planned = list(pipe.stream_episode([subgoal] * chunks, start_latents=context, memory=memory,
                                               memory_settings=temp_lora, update_memory=temp_lora is not None,
                                               generator=generator, memory_generator=memory_generator,
                                               **chunk_kwargs, **recall_for(subgoal, temp_lora)))
            if temp_lora is not None:
                memory = planned[-1].memory
            plan = decode(pipe, torch.cat([chunk.latents for chunk in planned], dim=2))
            read = idm.predict_actions(np.concatenate([last_frame[None], plan]))
            walked, frames = walk_and_see(world, position, read)
            plan_frames.append(plan)
            context = pipe.encode_frames(frames[-chunk_frames:])
        else:
            plan, walked, frames, read = [], [], [], []
            for _ in range(chunks):
                chunk = pipe(subgoal, context_latents=context, memory=memory, generator=generator,
                             output_type="latent", **chunk_kwargs, **recall_for(subgoal, temp_lora)).latents
                chunk_plan = decode(pipe, chunk)
                chunk_read = idm.predict_actions(np.concatenate([last_frame[None], chunk_plan]))
                chunk_walked, chunk_frames_seen = walk_and_see(world, position, chunk_read)
                observed_chunk = pipe.encode_frames(chunk_frames_seen)
                if temp_lora is not None:  # learn what was really seen, not what was imagined
                    memory = memory_of(pipe, [context, observed_chunk], [subgoal], memory, temp_lora,
                                       memory_generator)
                context, last_frame, position = observed_chunk, chunk_frames_seen[-1], chunk_walked[-1]
                plan.append(chunk_plan)
                walked += chunk_walked
                frames.append(chunk_frames_seen)
                read += chunk_read
            plan_frames.append(np.concatenate(plan))
            frames = np.concatenate(frames)
        executed_frames.append(frames)
        actions += read
        positions += walked
        position, last_frame = positions[-1], executed_frames[-1][-1]

    result = PlanResult([goal for goal, _ in subgoals], np.concatenate(plan_frames), np.concatenate(executed_frames), actions, positions,
                        closed_loop)
    result.scores = retrace_scores(task, positions)
    return result


def plan_from_image(pipe: SlowFastVGenPipeline, idm: InverseDynamicsModel, image, outward_actions: list[str],
                    instruction: str, temp_lora: TempLoRAConfig | None = None, num_chunks: int | None = None,
                    seed: int = 0, num_inference_steps: int = DEFAULT_STEPS,
                    guidance_scale: float = DEFAULT_GUIDANCE,
                    decomposer: Decomposer = scripted_decomposer) -> tuple[PlanResult, np.ndarray]:
    """Plan from a picture of your own world, where there is no true world to walk: the way out is imagined
    by the world model from `image` (the episode loop, memory learned as it goes), then the plan continues
    it. Returns the plan (nothing executed: `executed_frames` empty, no positions or scores) and the
    imagined way out's frames (start frame first)."""
    horizon = num_chunks if num_chunks is not None else len(outward_actions) + 1
    check_plan_inputs(pipe, idm, instruction, horizon)
    if not outward_actions:
        raise ValueError("outward_actions is empty: give the way out, one action per chunk.")
    subgoals = plan_subgoals(decomposer, instruction, horizon)
    start = pipe.start_latents(image, resize=True)
    generator = torch.Generator().manual_seed(seed)
    # One episode: the way out, then each subgoal's chunks, with one noise stream and one memory stream.
    episode = dict(memory_settings=temp_lora, update_memory=temp_lora is not None,
                   memory_generator=memory_generator_for(generator), num_frames=pipe.context_window // 2,
                   generator=generator, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    chunks = list(pipe.stream_episode(list(outward_actions), start_latents=start, **episode))
    for goal, count in subgoals:
        chunks += pipe.stream_episode([goal] * count, start_latents=chunks[-1].latents, memory=chunks[-1].memory,
                                      **episode, **recall_for(goal, temp_lora))
    frames = decode(pipe, torch.cat([start.cpu()] + [chunk.latents for chunk in chunks], dim=2))
    outward_end = 1 + len(outward_actions) * (pipe.context_window // 2) - 1  # the last frame of the way out
    plan = frames[outward_end:]
    actions = idm.predict_actions(plan)
    return (PlanResult([goal for goal, _ in subgoals], plan, plan[:0], actions, [], closed_loop=False),
            frames[:outward_end + 1])
