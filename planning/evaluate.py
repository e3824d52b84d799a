"""Table 2 (`slowfast-vgen plan-eval`) in ToyWorld or Memory Maze, and the inverse dynamics model's accuracy.

Every row plans the same held-out retrace episodes (worlds or mazes `first_seed`..., instructions cycling
through the trained paraphrases and the held-out one) with the same sampling noise; rows differ by world
model, memory setting and open or closed loop only. Each episode's scores are appended to `episodes-<process>.jsonl` as
soon as it is done, so a stopped run resumes where it stopped; runs under `torchrun` / `accelerate launch`
split the episodes over processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.retrace import HELD_OUT_INSTRUCTIONS, PLANNING_WORLDS, RETRACE_INSTRUCTIONS, RetraceTask, retrace_scores
from ..data.worlds import world_kind
from ..evaluation.report import spread
from ..evaluation.runs import append_row, read_rows, start_run
from ..paths import DEFAULT_IDM_DIR
from ..pipelines import DEFAULT_GUIDANCE, DEFAULT_STEPS, SlowFastVGenPipeline
from ..pipelines.inverse_dynamics import WORLD_ACTIONS, InverseDynamicsModel
from .models import load_models
from .planner import DEFAULT_MEMORY_SETTING, MEMORY_SETTINGS, plan_retrace

INSTRUCTIONS = RETRACE_INSTRUCTIONS + HELD_OUT_INSTRUCTIONS


@dataclass
class PlanningOptions:
    """Every setting of a Table 2 run (the CLI's flags, one to one)."""

    output_dir: str = "outputs/planning"
    world: str = "toyworld"  # whose held-out retrace tasks (`data.retrace.PLANNING_WORLDS`)
    models: dict[str, str] = field(default_factory=dict)
    idm: str = str(DEFAULT_IDM_DIR)
    episodes: int = 20
    first_seed: int = 2000
    settings: tuple[str, ...] = ("none", DEFAULT_MEMORY_SETTING)
    loops: tuple[str, ...] = ("open", "closed")
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE

    def check(self) -> None:
        if self.world not in PLANNING_WORLDS:
            raise ValueError(f"--world {self.world!r}: known worlds are {', '.join(PLANNING_WORLDS)}.")
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {self.episodes}.")
        if not self.models:
            raise ValueError("--models is empty: give at least one NAME=FOLDER world model.")
        unknown = [s for s in self.settings if s not in MEMORY_SETTINGS]
        if unknown or not self.settings:
            raise ValueError(f"--settings: unknown memory setting {unknown[0] if unknown else ''!r}; known: "
                             f"{', '.join(MEMORY_SETTINGS)}.")
        if not self.loops or any(loop not in ("open", "closed") for loop in self.loops):
            raise ValueError(f"--loops must list open and/or closed, got {','.join(self.loops)!r}.")

    def tasks(self, view_size: int, chunk_frames: int) -> list[RetraceTask]:
        make_task = PLANNING_WORLDS[self.world].make_task
        return [make_task(self.first_seed + index, chunk_frames=chunk_frames, view_size=view_size,
                          instruction=INSTRUCTIONS[index % len(INSTRUCTIONS)])
                for index in range(self.episodes)]

    def rows(self) -> list[tuple[str, str, str]]:
        return [(model, setting, loop) for model in self.models for setting in self.settings for loop in self.loops]

    def identity(self) -> dict:
        described = dataclasses.asdict(self)
        for key in ("episodes", "output_dir"):
            described.pop(key)
        if self.world == "toyworld":  # the run folders made before there was a choice of world still resume
            described.pop("world")
        return json.loads(json.dumps(described))


def row_name(model: str, setting: str, loop: str) -> str:
    return f"{model}/{setting}/{loop}"


def evaluate_planning(options: PlanningOptions) -> dict | None:
    """Run (or resume) Table 2; returns the summary on the main process."""
    options.check()
    output_dir = Path(options.output_dir)
    # The models first: a pair that cannot plan in this world is refused before the run folder is made.
    loaded = {name: load_models(folder, options.idm, world=options.world) for name, folder in options.models.items()}
    state, done_rows = start_run(output_dir, options.identity())
    done = {row["episode"]["seed"] for row in done_rows}

    first = next(iter(loaded.values()))[0]
    tasks = options.tasks(first.native_size, first.context_window // 2)
    todo = [task for task in tasks if task.episode.world.seed not in done][state.process_index::state.num_processes]
    shard = output_dir / f"episodes-{state.process_index}.jsonl"
    for task in tqdm(todo, desc=f"retrace episodes (process {state.process_index})", unit="episode"):
        end = task.waypoints[-1]  # standing still where the way out ended: what a plan must beat
        row = {"episode": task.describe(), "rows": {},
               "standing_still": retrace_scores(task, [end])["mean_closest_distance"]}
        for model, setting, loop in options.rows():
            pipe, idm = loaded[model]
            started = time.time()
            result = plan_retrace(pipe, idm, task, temp_lora=MEMORY_SETTINGS[setting], closed_loop=loop == "closed",
                                  seed=task.episode.world.seed, num_inference_steps=options.steps,
                                  guidance_scale=options.guidance)
            row["rows"][row_name(model, setting, loop)] = {**result.scores, "actions": result.actions,
                                                           "seconds": round(time.time() - started, 2)}
        append_row(shard, row)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    wanted = {task.episode.world.seed for task in tasks}
    rows = [row for row in read_rows(output_dir) if row["episode"]["seed"] in wanted]
    summary = summarize_planning(rows, options)
    for name, text in (("summary.json", json.dumps(summary, indent=2)), ("summary.md", planning_markdown(summary))):
        temporary = output_dir / f".{name}.partial"
        temporary.write_text(text)
        os.replace(temporary, output_dir / name)
    print(planning_markdown(summary))
    return summary


def summarize_planning(rows: list[dict], options: PlanningOptions) -> dict:
    """Per row: mean ± std of the closest distance and the final distance, the share of episodes home, and
    against the same model and loop without memory, the ratio of mean closest distances and the episodes
    improved (paired)."""
    table = {}
    for model, setting, loop in options.rows():
        name = row_name(model, setting, loop)
        scores = [row["rows"][name] for row in rows]
        entry = {"mean_closest_distance": spread([s["mean_closest_distance"] for s in scores]),
                 "final_distance": spread([s["final_distance"] for s in scores]),
                 "home": round(float(np.mean([s["home"] for s in scores])), 3) if scores else None,
                 "seconds": spread([s["seconds"] for s in scores])}
        held_out = [s["mean_closest_distance"] for s, row in zip(scores, rows)
                    if row["episode"]["instruction"] in HELD_OUT_INSTRUCTIONS]
        entry["held_out_instruction"] = spread(held_out)
        baseline = row_name(model, "none", loop)
        if setting != "none" and "none" in options.settings:
            ours = [s["mean_closest_distance"] for s in scores]
            theirs = [row["rows"][baseline]["mean_closest_distance"] for row in rows]
            entry["vs_no_memory"] = {"ratio_of_means": round(float(np.mean(ours) / max(np.mean(theirs), 1e-9)), 3),
                                     "episodes_improved": int(sum(a < b for a, b in zip(ours, theirs)))}
        table[name] = entry
    configs = {name: None if MEMORY_SETTINGS[name] is None else dataclasses.asdict(MEMORY_SETTINGS[name])
               for name in options.settings}
    return {"episodes": len(rows), "world": options.world, "units": PLANNING_WORLDS[options.world].unit,
            "models": options.models, "idm": options.idm, "steps": options.steps,
            "memory_settings": json.loads(json.dumps(configs)),
            "guidance": options.guidance, "standing_still": spread([row["standing_still"] for row in rows]),
            "rows": table}


def planning_markdown(summary: dict) -> str:
    def fmt(entry):
        return "-" if entry["mean"] is None else f"{entry['mean']:.2f} ± {entry['std']:.2f}"

    world, units = summary.get("world", "toyworld"), summary.get("units", "views")
    kind = PLANNING_WORLDS[world]
    home = f"≤ {kind.home_radius} {units[:-1]}" + (", facing within 45°" if kind.heading_error else "")
    lines = [f"Retrace task in {world}, {summary['episodes']} held-out episodes; distances in {units}. Standing "
             f"still where the way out ended: mean closest distance {fmt(summary['standing_still'])}; the true way "
             "back: 0.", "",
             f"| model / memory / loop | mean closest distance | final distance | home ({home}) | vs no memory "
             "(ratio, improved) | s / episode |", "|---|---|---|---|---|---|"]
    for name, entry in summary["rows"].items():
        versus = entry.get("vs_no_memory")
        versus_text = f"{versus['ratio_of_means']:.2f}, {versus['episodes_improved']}" if versus else ""
        lines.append(f"| {name} | {fmt(entry['mean_closest_distance'])} | {fmt(entry['final_distance'])} | "
                     f"{entry['home']:.0%} | {versus_text} | {entry['seconds']['mean']:.1f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- the IDM's accuracy


def true_pairs(seeds: range, pairs_per_world: int, view_size: int, seed: int = 0,
               world: str = "toyworld") -> tuple[np.ndarray, list[str]]:
    """Random consecutive true frames of held-out worlds (or mazes) and the action between them (every action
    of the world equally often; `PlanningWorld.true_pair` says where): (N, 2, H, W, 3) floats in [0, 1] and N
    action texts."""
    rng = np.random.default_rng(seed)
    kind, actions_of_world = world_kind(world), WORLD_ACTIONS[world]
    frames, actions = [], []
    for world_seed in seeds:
        place = kind.build(world_seed, view_size)
        for index in range(pairs_per_world):
            action = actions_of_world[index % len(actions_of_world)]
            frames.append(kind.planning.true_pair(place, action, rng))
            actions.append(action)
    return np.stack(frames).astype(np.float32) / 255, actions


def idm_accuracy_true(idm: InverseDynamicsModel, seeds: range = range(1000, 1020), pairs_per_world: int = 50,
                      world: str = "toyworld") -> dict:
    """Accuracy on true frame pairs of held-out worlds, overall and per action."""
    frames, actions = true_pairs(seeds, pairs_per_world, idm.config.sample_size, world=world)
    predicted = []
    for pair in frames:
        predicted += idm.predict_actions(pair)
    return accuracy(predicted, actions)


def idm_accuracy_generated(pipe: SlowFastVGenPipeline, idm: InverseDynamicsModel, seeds: range = range(1000, 1010),
                           steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
                           world: str = "toyworld") -> dict:
    """Accuracy on frames the world model generates: from a true context chunk (`PlanningWorld.generation_context`:
    standing still in ToyWorld; in Memory Maze walking forward into a cell from which every action can play a
    chunk), a chunk for each action (its training phrase), its frames read back by the inverse dynamics model
    (the last context frame and the chunk's frames: one read per generated frame)."""
    chunk = pipe.context_window // 2
    kind = world_kind(world)
    predicted, wanted = [], []
    for world_seed in seeds:
        place = kind.build(world_seed, pipe.native_size)
        context = kind.planning.generation_context(place, chunk).astype(np.float32) / 255
        latents = pipe.encode_frames(context)
        generator = torch.Generator().manual_seed(world_seed)
        for action in WORLD_ACTIONS[world]:
            frames = pipe(action, context_latents=latents, num_frames=chunk, num_inference_steps=steps,
                          guidance_scale=guidance, generator=generator).frames[0]
            reads = idm.predict_actions(np.concatenate([context[-1:], frames]))
            predicted += reads
            wanted += [action] * len(reads)
    return accuracy(predicted, wanted)


def accuracy(predicted: list[str], wanted: list[str]) -> dict:
    per_action = {action: round(float(np.mean([p == w for p, w in zip(predicted, wanted) if w == action])), 4)
                  for action in sorted(set(wanted))}
    return {"accuracy": round(float(np.mean([p == w for p, w in zip(predicted, wanted)])), 4), "pairs": len(wanted),
            "per_action": per_action}
