"""What a world model's folder says about its world's actions and camera (`model_index.json`): the action
that undoes each action (`reverse_actions`, for Temp-LoRA's action text and the planner's way back), what each
action does to the camera's pose per frame (`action_motions` in 1/`pose_headings` turns and lattice steps, for
the pose memory), and the camera's vertical field of view (`camera_fovy`, for the pose memory's turned
views). Actions are matched as text with case and spacing ignored (`normalized_action`)."""

from __future__ import annotations

from typing import Mapping


def normalized_action(action: str) -> str:
    return " ".join(action.lower().split())


def motion_table(table: Mapping[str, object] | None) -> dict[str, tuple[int, int]]:
    """A model's `action_motions` as {normalized action: (turn, walk)}, checked (ValueError names the entry)."""
    motions = {}
    for action, motion in (table or {}).items():
        if (not isinstance(action, str) or not isinstance(motion, (list, tuple)) or len(motion) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in motion)):
            raise ValueError(f"action_motions[{action!r}] must be [turn, walk], two whole numbers, got {motion!r}.")
        motions[normalized_action(action)] = (int(motion[0]), int(motion[1]))
    return motions


class WorldActionsMixin:
    """The world facts of the model's folder, for `SlowFastVGenPipeline`."""

    def reverse_action(self, action: str) -> str | None:
        """The action that undoes `action` in this world model's `reverse_actions` (case and spacing
        ignored), or None where it has none."""
        table = {normalized_action(key): value for key, value in (self.config.reverse_actions or {}).items()}
        return table.get(normalized_action(action))

    @property
    def action_motions(self) -> dict[str, tuple[int, int]]:
        """What each action does to the camera's pose per frame, from the model's folder (may be empty)."""
        return motion_table(self.config.get("action_motions"))

    @property
    def pose_headings(self) -> int:
        return int(self.config.get("pose_headings") or 16)

    @property
    def camera_fovy(self) -> float | None:
        """The vertical field of view of the world's camera in degrees, from the model's folder (None where it
        records none): what lets the pose memory turn the views it holds (`turn_views`)."""
        fovy = self.config.get("camera_fovy")
        return float(fovy) if fovy else None
