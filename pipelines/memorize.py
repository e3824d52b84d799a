"""Learn a memory over recorded chunks: the fast update of Algorithm 1 (a), lines 11-14, run over chunks that
were seen rather than generated.

The slow-fast training loop (the memories of an episode's records), the planner (the memory of the way out),
the evaluation's oracle and teacher-forced protocols and the "Temp-LoRA Learn Video" node all learn a memory
this way: one update per chunk, on the chunk before it ⊕ the chunk, in order, as the episode loop learns
its own chunks.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from .episodic_memory import EpisodicMemory
from .memory_settings import TempLoRAConfig


def memorize(
    pipe,
    chunks: Sequence[torch.Tensor],
    actions: Sequence[str],
    memory: EpisodicMemory | None = None,
    settings: TempLoRAConfig | None = None,
    generator: torch.Generator | None = None,
    reverse_actions: Sequence[str | None] | None = None,
    callback_on_step_end: Callable[[int, int], None] | None = None,
) -> Iterator[EpisodicMemory]:
    """Update `memory` on each recorded chunk in turn and yield the memory after each update.

    `chunks` are latents X_0 (the start frame, or the chunk before the first action) ... X_n, and
    `actions[i]` the action that led from X_i to X_{i+1}: update i learns X_i ⊕ X_{i+1}. A lazy iterator, so
    the caller may stop early or use each memory before the next update is made.

    `memory=None` starts a new memory with `settings`; `settings` given with a memory change its training
    settings from the first update on (`SlowFastVGenPipeline.update_memory`). `generator` is the stream the
    updates draw from (`memory_generator_for`). `reverse_actions[i]` is the text of going back through chunk
    i, for memories that learn the way back with its text (default: the world model's reverse of each
    action). `callback_on_step_end(step, steps_per_update)` runs after every optimizer step.
    """
    if len(chunks) < len(actions) + 1:
        raise ValueError(f"memorize needs one more chunk than actions (the chunk before the first action); got "
                         f"{len(chunks)} chunks and {len(actions)} actions.")
    if reverse_actions is not None and len(reverse_actions) < len(actions):
        raise ValueError(f"reverse_actions needs one text (or None) per action; got {len(reverse_actions)} for "
                         f"{len(actions)} actions.")
    for index, action in enumerate(actions):
        memory = pipe.update_memory(memory, chunks[index], chunks[index + 1], action=action, config=settings,
                                    generator=generator,
                                    reverse_action=reverse_actions[index] if reverse_actions is not None else None,
                                    callback_on_step_end=callback_on_step_end)
        yield memory


def memory_of(pipe, chunks: Sequence[torch.Tensor], actions: Sequence[str], memory: EpisodicMemory | None = None,
              settings: TempLoRAConfig | None = None, generator: torch.Generator | None = None,
              reverse_actions: Sequence[str | None] | None = None) -> EpisodicMemory | None:
    """The memory after every update of `memorize` (`memory` itself when there is no action)."""
    for memory in memorize(pipe, chunks, actions, memory, settings, generator, reverse_actions):
        pass
    return memory
