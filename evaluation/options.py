"""The settings of an evaluation run (`EvaluationOptions`, the CLI's flags one to one) and the named memory
settings it compares."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from ..data.episodes import PATH_FAMILIES, load_path_file
from ..data.worlds import WORLDS, world_kind
from ..paths import DEFAULT_MODEL_DIR
from ..pipelines import DEFAULT_GUIDANCE, DEFAULT_STEPS, SCHEDULERS, TEMP_LORA_PRESETS, TempLoRAConfig
from ..pipelines.checks import sampling_problem
from . import metrics

# Named memory settings: a Temp-LoRA config (None: no memory) and chunk arguments. Every Temp-LoRA preset
# (`TEMP_LORA_PRESETS`: the paper's Table 4 ablations "transition" and "global" among them), and "wo chunk
# input" (Table 4), which conditions every chunk on one frame instead of the previous chunk.
SETTINGS: dict[str, tuple[TempLoRAConfig | None, dict]] = {
    "none": (None, {}),
    **{name: (config, {}) for name, config in TEMP_LORA_PRESETS.items()},
    "no-chunk-input": (TEMP_LORA_PRESETS["paper"], {"num_context_frames": 1}),
    "none-no-chunk-input": (None, {"num_context_frames": 1}),
}
BASELINE = "none"


@dataclass
class EvaluationOptions:
    """Every setting of an evaluation run (the CLI's flags, one to one)."""

    output_dir: str = "outputs/evaluation"
    model: str = str(DEFAULT_MODEL_DIR)
    episodes: int = 20
    families: tuple[str, ...] = PATH_FAMILIES
    path_file: str | None = None
    first_seed: int = 2000
    chunks: int = 8
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    scheduler: str | None = None  # a `SCHEDULERS` name; None: the model's own
    settings: tuple[str, ...] = ("none", "paper")
    custom_settings: dict[str, dict] = field(default_factory=dict)
    oracle: bool = False
    teacher_forced: bool = False
    resnet18: str | None = None
    scuts_threshold: float = metrics.SCUTS_THRESHOLD
    strips: bool = True
    world: str = "toyworld"  # a `data.worlds.WORLDS` name

    def check(self) -> None:
        """Clear errors for bad options, before any work starts."""
        if self.world not in WORLDS:
            raise ValueError(f"--world: unknown world {self.world!r}; known: {', '.join(WORLDS)}.")
        if self.path_file and self.world != "toyworld":
            raise ValueError("--path-file gives a ToyWorld path; for --world memory-maze choose --families.")
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {self.episodes}.")
        if self.chunks < 2:
            raise ValueError(f"--chunks must be at least 2 (a way out and a way back), got {self.chunks}.")
        problem = sampling_problem(self.steps, self.guidance, "--steps", "--guidance", parsed=True)
        if problem:
            raise ValueError(problem)
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"--scheduler: unknown sampler {self.scheduler!r}; known: {', '.join(SCHEDULERS)}.")
        families = world_kind(self.world).families
        unknown = [f for f in self.families if f not in families]
        if unknown:
            raise ValueError(f"--families: unknown path family {unknown[0]!r} in {self.world}; known: "
                             f"{', '.join(families)}" + (" (or give your own path with --path-file)." if
                                                         self.world == "toyworld" else "."))
        if not self.families and not self.path_file:
            raise ValueError("--families is empty and no --path-file is given: there is no path to evaluate.")
        if self.path_file and not os.path.isfile(self.path_file):
            raise ValueError(f"--path-file {self.path_file!r} does not exist.")
        for name in self.settings:
            if name not in SETTINGS and name not in self.custom_settings:
                raise ValueError(f"--settings: unknown memory setting {name!r}; known: {', '.join(SETTINGS)}, or "
                                 "define one with --setting NAME='{\"learning_rate\": 1e-3, ...}'.")
        for name in self.custom_settings:
            self.memory_setting(name)  # a bad field fails here, naming the setting
        if self.resnet18 is not None and not os.path.exists(self.resnet18):
            raise ValueError(f"--resnet18 {self.resnet18!r} does not exist. {metrics.RESNET18_HELP}")
        if not os.path.isfile(os.path.join(self.model, "model_index.json")):
            raise ValueError(f"--model {self.model!r} is not a world model folder (no model_index.json).")

    def memory_setting(self, name: str) -> tuple[TempLoRAConfig | None, dict]:
        if name not in self.custom_settings:
            return SETTINGS[name]
        fields = dict(self.custom_settings[name])
        chunk_kwargs = {"num_context_frames": fields.pop("num_context_frames")} if "num_context_frames" in fields else {}
        if fields.pop("memory", True) is False:
            return None, chunk_kwargs
        try:
            return TempLoRAConfig.from_fields(fields), chunk_kwargs
        except (TypeError, ValueError) as error:
            raise ValueError(f"--setting {name}: {error}") from None

    def plan(self, view_size: int, chunk_frames: int) -> list:
        """The episodes, in order: seed first_seed + i, family i mod len(families) (the path file's in turn)."""
        kinds = list(self.families) + (["path-file"] if self.path_file else [])
        episodes = []
        for index in range(self.episodes):
            seed, kind = self.first_seed + index, kinds[index % len(kinds)]
            if kind == "path-file":
                episodes.append(load_path_file(self.path_file, seed, chunk_frames, view_size))
            else:
                episodes.append(world_kind(self.world).make_episode(seed, kind, self.chunks, chunk_frames, view_size))
        return episodes

    def identity(self) -> dict:
        """What a resumed run must share with the run it continues (all but the episode count and output)."""
        described = dataclasses.asdict(self)
        for key in ("episodes", "output_dir", "strips"):
            described.pop(key)
        if described["world"] == "toyworld":  # as runs from before the option recorded it
            described.pop("world")
        if described["scheduler"] is None:  # as runs from before the option recorded it
            described.pop("scheduler")
        if not described["teacher_forced"]:  # likewise
            described.pop("teacher_forced")
        described["families"] = list(self.families)
        described["settings"] = list(self.settings)
        return described


def describe_setting(options: EvaluationOptions, name: str) -> dict:
    config, chunk_kwargs = options.memory_setting(name)
    return {"temp_lora": dataclasses.asdict(config) if config is not None else None, **chunk_kwargs}
