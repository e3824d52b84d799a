"""The two models planning loads: a world model and the inverse dynamics model of its frames."""

from __future__ import annotations

from ..pipelines import SlowFastVGenPipeline
from ..pipelines.inverse_dynamics import InverseDynamicsModel
from .planner import idm_world_problem


def load_models(model: str, idm_folder: str,
                world: str | None = None) -> tuple[SlowFastVGenPipeline, InverseDynamicsModel]:
    """The world model folder `model` and the inverse dynamics model folder `idm_folder`, refused (as the
    command line refuses: `SystemExit`, naming the options) when the two read different frame sizes or, to plan
    in `world`, when the inverse dynamics model answers actions that world cannot execute."""
    pipe = SlowFastVGenPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    idm = InverseDynamicsModel.from_pretrained(idm_folder).eval()
    if idm.config.sample_size != pipe.native_size:
        raise SystemExit(f"--idm {idm_folder!r} reads {idm.config.sample_size}-pixel frames but --model {model!r} "
                         f"makes {pipe.native_size}-pixel ones; use the inverse dynamics model of this world model.")
    problem = idm_world_problem(idm, world) if world is not None else None
    if problem:
        raise SystemExit(f"--idm {idm_folder!r}: {problem}")
    return pipe, idm
