"""Planning with video plans (paper section 3.4): the world model imagines the way, chunk by chunk, with
its Temp-LoRA memory; the inverse dynamics model reads the actions off consecutive plan frames; the
actions are executed in the world.

    memory <- Temp-LoRA over the true way out               (what the agent saw: `memory_of_trip`)
    for each subgoal of the instruction:                    (the decomposer: scripted, or your language model)
        open loop:   plan all its chunks (the product's `stream_episode`, memory updated on the plan),
                     then execute every action the inverse dynamics model reads off the plan;
        closed loop: plan one chunk from the true observation, execute its actions, learn the observed
                     chunk into the memory, and plan again from where the camera really is.

In a world whose `PlanningWorld.way_back` is "reverse" (Memory Maze: no maze world model was trained on
"go back to the start"), the decomposer turns a way-back instruction into the reversed way out, one world
action per chunk (`reversing_decomposer`, from the world model folder's `reverse_actions`): the world model
then imagines each reversed chunk with its memory, and the inverse dynamics model reads the executed actions
off the imagined frames.

The sampling noise comes from one generator seeded by `seed` and the memory updates from a stream derived
from it (`memory_generator_for`), as in the episode loop, so that with the same seed plans with and
without memory differ by memory alone.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..data.retrace import RETRACE_INSTRUCTIONS, HELD_OUT_INSTRUCTIONS, PLANNING_WORLDS, RetraceTask, retrace_scores
from ..data.toyworld import parse_action
from ..evaluation.protocols import decode
from ..pipelines import (DEFAULT_GUIDANCE, DEFAULT_STEPS, TEMP_LORA_PRESETS, EpisodicMemory, SlowFastVGenPipeline,
                         TempLoRAConfig, memory_generator_for)
from ..pipelines.inverse_dynamics import InverseDynamicsModel
from ..pipelines.memorize import memorize, memory_of
from ..pipelines.world_actions import normalized_action

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
    positions: list[Any]  # ToyWorld (x, y) pixels, or Memory Maze poses
    closed_loop: bool
    scores: dict = field(default_factory=dict)


def check_plan_inputs(pipe: SlowFastVGenPipeline, idm: InverseDynamicsModel, instruction: str,
                      num_chunks: int, world: str | None = None) -> None:
    """Clear errors before any work: an instruction to plan, a horizon, an inverse dynamics model of the
    world model's frame size and, to execute in `world`, one whose every class is an action of that world."""
    problem = idm_world_problem(idm, world) if world is not None else None
    if problem:
        raise ValueError(problem)
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("instruction is empty: say where to go, e.g. 'go back to the start'.")
    if num_chunks < 1:
        raise ValueError(f"num_chunks must be at least 1 (chunks to plan), got {num_chunks}.")
    if idm.config.sample_size != pipe.native_size:
        raise ValueError(f"The inverse dynamics model reads {idm.config.sample_size}-pixel frames but the world "
                         f"model makes {pipe.native_size}-pixel ones: use the inverse dynamics model trained with "
                         "this world model (slowfast-vgen train --stage idm --model <world model>).")


def idm_world_problem(idm: InverseDynamicsModel, world: str) -> str | None:
    """Why the inverse dynamics model's reads cannot be executed in `world` (a class that is not one of its
    actions, e.g. ToyWorld's "move left" in a maze), or None."""
    parse = PLANNING_WORLDS[world].parse_action
    foreign = []
    for action in idm.config.actions:
        try:
            parse(action)
        except ValueError:
            foreign.append(action)
    if not foreign:
        return None
    return (f"The inverse dynamics model answers {', '.join(map(repr, foreign))}, which {world} cannot execute (its "
            f"classes: {', '.join(idm.config.actions)}): use one trained on {world} "
            f"(slowfast-vgen train --stage idm --data {world} --model <its world model>).")


def reversing_decomposer(outward_actions: list[str], reverse_actions: dict[str, str],
                         decomposer: Callable[[str], list[str]] | None = None) -> Callable[[str], list[str]]:
    """A decomposer that turns every way-back subgoal (`asks_way_back`) into the way out reversed, one action per
    chunk (each outward action's reverse from `reverse_actions`, the world model folder's, last chunk first),
    then one chunk of "stay" at the start; other subgoals pass through. `decomposer` splits the instruction
    first (default: `scripted_decomposer`). The actions of the way back then come from the way out; what the
    plan adds is the world model imagining each of them (with its memory) and the inverse dynamics model
    reading what it imagined. Refused (ValueError) when an outward action has no reverse in the table."""
    table = {normalized_action(k): v for k, v in (reverse_actions or {}).items()}
    missing = [a for a in outward_actions if normalized_action(a) not in table]
    if missing:
        raise ValueError(f"The world model's folder records no reverse of {', '.join(map(repr, missing))} "
                         "(model_index.json, reverse_actions), so the way back cannot be the way out reversed; "
                         f"it knows: {', '.join(sorted(table)) or 'none'}.")
    way_back = [table[normalized_action(a)] for a in reversed(outward_actions)] + ["stay"]
    split = decomposer or scripted_decomposer

    def decompose(instruction: str) -> list[str]:
        subgoals = []
        for part in split(instruction):
            subgoals += way_back if asks_way_back(part) else [part]
        return subgoals

    return decompose


def world_decomposer(pipe: SlowFastVGenPipeline, world: str, outward_actions: list[str]) -> Decomposer:
    """How `world` plans a retrace instruction (`PlanningWorld.way_back`): the scripted decomposer, the
    instruction's text given to the world model; or the reversed way out (`reversing_decomposer`)."""
    if PLANNING_WORLDS[world].way_back == "reverse":
        return reversing_decomposer(list(outward_actions), dict(pipe.config.get("reverse_actions") or {}))
    return scripted_decomposer


def asks_way_back(subgoal: str) -> bool:
    """Whether a subgoal is one of the retrace instructions (trained or held out). With a panorama memory its
    chunks recall the way the episode came (`recall="way back"`): the memory, not the world model, knows
    the way; the world model draws the chunks around what is recalled."""
    return normalized_action(subgoal) in KNOWN_INSTRUCTIONS


def recall_for(subgoal: str, temp_lora: TempLoRAConfig | None) -> dict:
    """The pipeline's `recall` argument for planning `subgoal` with `temp_lora`'s memory."""
    return {"recall": "way back"} if temp_lora is not None and temp_lora.panorama and asks_way_back(subgoal) else {}


def untrained_instruction(instruction: str, decomposer: Decomposer,
                          parse: Callable[[str], str] = parse_action) -> str | None:
    """A warning when a subgoal is neither an action of the world (`parse`: ToyWorld's by default) nor an
    instruction the task models were trained on (the plan is still made: the text encoder places it
    somewhere, which may be nowhere useful)."""
    unknown = []
    for subgoal in decomposer(instruction):
        try:
            parse(subgoal)
        except ValueError:
            if normalized_action(subgoal) not in KNOWN_INSTRUCTIONS:
                unknown.append(subgoal)
    if not unknown:
        return None
    return (f"The world model was not trained on the subgoal(s) {unknown}; it plans anyway, but expect a plan that "
            f"wanders. Trained instructions: {', '.join(RETRACE_INSTRUCTIONS)}, or the world's actions.")


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


def execute(world: Any, start: Any, actions: list[str]) -> list[Any]:
    """Camera positions (ToyWorld) or poses (Memory Maze) after each action, one frame each; the camera stops at
    ToyWorld's edge and at a maze's walls."""
    return world.path(actions, 1, start)[1:]


def walk_and_see(task: RetraceTask, start: Any, actions: list[str]) -> tuple[list[Any], np.ndarray]:
    """`execute` in the task's world, and the true views on the way (F, H, W, 3) in [0, 1]."""
    world = task.episode.world
    walked = execute(world, start, actions)
    return walked, np.stack([task.kind.view(world, p) for p in walked]).astype(np.float32) / 255


def plan_subgoals(decomposer: Decomposer, instruction: str, horizon: int | None,
                  default_horizon: int = 1) -> list[tuple[str, int]]:
    """The decomposer's subgoals, each with its share of the `horizon` chunks (the first ones get the rest; a
    subgoal left with none is not planned). `horizon` None: `default_horizon`, or one chunk a subgoal where the
    decomposer gave more subgoals than that (the reversed way out: one a chunk)."""
    subgoals = decomposer(instruction)
    if not subgoals or not all(isinstance(s, str) and s.strip() for s in subgoals):
        raise ValueError(f"The decomposer gave {subgoals!r} for {instruction!r}: it must return a non-empty "
                         "list of non-empty subgoal texts.")
    horizon = horizon if horizon is not None else max(default_horizon, len(subgoals))
    shares = [(goal, horizon // len(subgoals) + (1 if i < horizon % len(subgoals) else 0))
              for i, goal in enumerate(subgoals)]
    return [(goal, count) for goal, count in shares if count]


def plan_retrace(pipe: SlowFastVGenPipeline, idm: InverseDynamicsModel, task: RetraceTask,
                 temp_lora: TempLoRAConfig | None = None, closed_loop: bool = False, num_chunks: int | None = None,
                 seed: int = 0, num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE,
                 decomposer: Decomposer | None = None) -> PlanResult:
    """Plan the way back of a retrace task with the world model, execute it in the task's true world (ToyWorld
    or Memory Maze), score it.

    The agent has walked the way out (its true frames are observed); `temp_lora` None plans without memory.
    `num_chunks` is the planning horizon (default: the way out's chunks plus one, or one chunk a subgoal
    where the decomposer gave more), shared by the subgoals. `decomposer` None: the world's
    (`world_decomposer`: ToyWorld's scripted one; Memory Maze's reverses the way out).
    """
    horizon = num_chunks if num_chunks is not None else task.num_outward + 1
    check_plan_inputs(pipe, idm, task.instruction, horizon, world=task.world_name)
    chunk_frames = task.episode.chunk_frames
    if decomposer is None:
        decomposer = world_decomposer(pipe, task.world_name, list(task.outward_actions))
    subgoals = plan_subgoals(decomposer, task.instruction, num_chunks, default_horizon=task.num_outward + 1)
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

    # 2. Plan and execute. Open loop: consecutive subgoals planned the same way (the same `recall`) are one plan,
    # imagined whole and then executed (the reversed way out is one subgoal a chunk); closed loop: chunk by chunk.
    position = task.episode.positions[task.num_outward * chunk_frames]
    context, last_frame = observed[-1], outward[-1]
    plan_frames, executed_frames, actions, positions = [last_frame[None]], [last_frame[None]], [], [position]
    steps: list[tuple[str, Any]] = list(subgoals)  # closed loop: (subgoal, its chunks)
    if not closed_loop:  # open loop: (the first subgoal, the action of every chunk of the plan)
        steps = []
        for _, items in itertools.groupby(subgoals, key=lambda item: tuple(recall_for(item[0], temp_lora).items())):
            group = list(items)
            steps.append((group[0][0], [goal for goal, count in group for _ in range(count)]))
    for subgoal, chunks in steps:
        if not closed_loop:
            planned = list(pipe.stream_episode(chunks, start_latents=context, memory=memory,
                                               memory_settings=temp_lora, update_memory=temp_lora is not None,
                                               generator=generator, memory_generator=memory_generator,
                                               **chunk_kwargs, **recall_for(subgoal, temp_lora)))
            if temp_lora is not None:
                memory = planned[-1].memory
            plan = decode(pipe, torch.cat([chunk.latents for chunk in planned], dim=2))
            read = idm.predict_actions(np.concatenate([last_frame[None], plan]))
            walked, frames = walk_and_see(task, position, read)
            plan_frames.append(plan)
            context = pipe.encode_frames(frames[-chunk_frames:])
        else:
            plan, walked, frames, read = [], [], [], []
            for _ in range(chunks):
                chunk = pipe(subgoal, context_latents=context, memory=memory, generator=generator,
                             output_type="latent", **chunk_kwargs, **recall_for(subgoal, temp_lora)).latents
                chunk_plan = decode(pipe, chunk)
                chunk_read = idm.predict_actions(np.concatenate([last_frame[None], chunk_plan]))
                chunk_walked, chunk_frames_seen = walk_and_see(task, position, chunk_read)
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
