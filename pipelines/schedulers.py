"""Samplers by name: the names the CLI, the nodes and `evaluate` take, and back."""

from __future__ import annotations

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from diffusers.schedulers import KarrasDiffusionSchedulers

# Each is built from the model's own scheduler config (betas, prediction type), as diffusers users swap
# schedulers: name -> (class, settings over the config).
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": (UniPCMultistepScheduler, {}),
}


def scheduler_from_name(name: str, config) -> "KarrasDiffusionSchedulers":
    """A sampler of `SCHEDULERS` made from a scheduler config (`pipe.scheduler.config`)."""
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}.")
    scheduler_class, settings = SCHEDULERS[name]
    return scheduler_class.from_config(config, **settings)


def scheduler_name(scheduler) -> str | None:
    """The `SCHEDULERS` name of a scheduler instance, or None for another sampler."""
    for name, (scheduler_class, settings) in SCHEDULERS.items():
        if type(scheduler) is scheduler_class and all(scheduler.config.get(k) == v for k, v in settings.items()):
            return name
    return None
