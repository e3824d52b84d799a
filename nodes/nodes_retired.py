"""Retired nodes, hidden from the node list and kept so that saved workflows that use them still load."""

from __future__ import annotations

from ..pipelines import TempLoRAConfig
from ..pipelines.temp_lora import RETIRED_SETTINGS
from .nodes_memory import TempLoRASettings


class TempLoRASettingsLegacy(TempLoRASettings):
    """Temp-LoRA Settings as saved before alpha, the timestep range and keeping the optimizer state were
    retired: kept, hidden from the node list, so that saved graphs still load with their widget values in
    place (the UI stores widget values by position). It takes the values every measurement used, and
    names the retired setting otherwise."""

    DEPRECATED = True
    DESCRIPTION = ("Temp-LoRA Settings with the retired widgets alpha, timestep_low, timestep_high and "
                   "keep_optimizer_state; replace it with Temp-LoRA Settings.")
    # Retired widget: (its spec, the one value accepted, the retired setting it was). Read by name of this
    # class, not through `cls`: in ComfyUI's V3 schema `VALIDATE_INPUTS` runs on a V3 class made from this one.
    RETIRED_WIDGETS = {
        "alpha": (("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 1.0,
                             "tooltip": "Retired: must be 0 (alpha = rank)."}), 0.0, "alpha"),
        "timestep_low": (("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "Retired: must be 0 (all timesteps)."}), 0.0, "timestep_range"),
        "timestep_high": (("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": "Retired: must be 1 (all timesteps)."}), 1.0, "timestep_range"),
        "keep_optimizer_state": (("BOOLEAN", {"default": True, "tooltip": "Retired: must be on."}), True,
                                 "keep_optimizer_state"),
    }
    WIDGET_ORDER = ("rank", "alpha", "learning_rate", "target", "steps_per_update", "timestep_low", "timestep_high",
                    "keep_optimizer_state")
    OPTIONAL_ORDER = ("objective", "direction", "action_text", "replay", "panorama")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        spec = super().INPUT_TYPES()
        retired = TempLoRASettingsLegacy.RETIRED_WIDGETS
        widgets = {**spec["required"], **{name: widget[0] for name, widget in retired.items()}}
        # Its optional inputs are those of the graphs it loads: settings added since are the new node's.
        optional = {name: spec["optional"][name] for name in TempLoRASettingsLegacy.OPTIONAL_ORDER}
        return {"required": {name: widgets[name] for name in TempLoRASettingsLegacy.WIDGET_ORDER}, "optional": optional}

    @classmethod
    def VALIDATE_INPUTS(cls, alpha: float | None = None, timestep_low: float | None = None,
                        timestep_high: float | None = None, keep_optimizer_state: bool | None = None) -> bool | str:
        # ComfyUI shows the answer on each of the four retired widgets it names (see validation.py): the
        # retired group, kept together rather than split, since this node only loads old graphs.
        given = {"alpha": alpha, "timestep_low": timestep_low, "timestep_high": timestep_high,
                 "keep_optimizer_state": keep_optimizer_state}
        for name, value in given.items():
            _, accepted, setting = TempLoRASettingsLegacy.RETIRED_WIDGETS[name]
            if value is not None and value != accepted:
                return (f"{name}={value!r} is no longer supported: {RETIRED_SETTINGS[setting]} Set it to "
                        f"{accepted!r}, or replace this node with Temp-LoRA Settings.")
        return True

    def make(self, rank: int, alpha: float, learning_rate: float, target: str, steps_per_update: int,
             timestep_low: float, timestep_high: float, keep_optimizer_state: bool, objective: str | None = None,
             direction: str | None = None, action_text: bool | None = None, replay: int | None = None,
             panorama: bool | None = None) -> tuple[TempLoRAConfig]:
        problem = self.VALIDATE_INPUTS(alpha, timestep_low, timestep_high, keep_optimizer_state)
        if problem is not True:
            raise ValueError(problem)
        return super().make(rank, learning_rate, target, steps_per_update, objective, direction, action_text,
                            replay, panorama)
