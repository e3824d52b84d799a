"""The page's controls: which action each key plays, read from the world model's folder, and the check every
typed action goes through.

A world model's `model_index.json` says what its actions are and do; the keys are mapped from there, so a
model trained on another world gets its own keys without a table here:

1. `play_controls` (optional): `{"up": "walk forward", "left": "turn left", ...}`, the model card's own choice;
2. `action_motions` (a camera that turns and walks, e.g. Memory Maze): `[turn, walk]` per action, so up walks
   forward, down back, left and right turn;
3. `reverse_actions` (the model's, or its world's where the folder has none, like the tests' tiny models):
   the actions it was trained with are the table's values, and each key takes the one that names its
   direction (up / north / forward ...); "stay" is the action that undoes itself.
"""

from __future__ import annotations

from collections.abc import Mapping

KEYS = ("up", "down", "left", "right", "stay")

# The text encoder reads a few dozen tokens and cuts the rest: longer text is a paste gone wrong, not an action.
MAX_ACTION_CHARS = 200

# Words that name each key's direction in an action's text (the first that matches wins).
_DIRECTION_WORDS = {
    "up": ("up", "north", "forward", "ahead"),
    "down": ("down", "south", "back", "backward"),
    "left": ("left", "west"),
    "right": ("right", "east"),
}


def action_problem(text: object) -> str | None:
    """What is wrong with a typed action, or None; the page checks the same before it sends."""
    if not isinstance(text, str) or not text.strip():
        return "The action is empty: type what the camera should do (e.g. 'move left')."
    if len(text) > MAX_ACTION_CHARS:
        return (f"The action is {len(text):,} characters long; the model reads at most {MAX_ACTION_CHARS} "
                "(a short phrase such as 'move left').")
    return None


def _by_words(actions: list[str]) -> dict[str, str]:
    keys = {}
    for key, words in _DIRECTION_WORDS.items():
        for word in words:
            match = next((a for a in actions if word in a.lower().replace("'", " ").split()), None)
            if match is not None:
                keys[key] = match
                break
    return keys


def key_actions(config: Mapping, world_reverse_actions: Mapping[str, str] | None = None) -> dict[str, str]:
    """Key name (`KEYS`) -> the action it plays, from a world model's config (`pipe.config`); keys the model
    has no action for are left out. `world_reverse_actions`: the world's table, for a model without one."""
    chosen = config.get("play_controls") or {}
    keys = {key: str(chosen[key]) for key in KEYS if isinstance(chosen.get(key), str) and chosen[key].strip()}
    reverse = dict(config.get("reverse_actions") or world_reverse_actions or {})
    # The training phrases first: the values of the reverse table are what each motion was trained as.
    trained = list(dict.fromkeys(reverse.values()))
    motions = config.get("action_motions") or {}
    if motions:
        ordered = trained + [a for a in motions if a not in trained]
        wanted = {"up": (0, 1), "down": (0, -1), "left": (1, 0), "right": (-1, 0), "stay": (0, 0)}
        for key, motion in wanted.items():
            match = next((a for a in ordered if tuple(motions.get(a, ())) == motion), None)
            if match is not None:
                keys.setdefault(key, match)
    for key, action in _by_words(trained or list(reverse)).items():
        keys.setdefault(key, action)
    stay = next((a for a in trained if reverse.get(a) == a), None)
    if stay is not None:
        keys.setdefault("stay", stay)
    return {key: keys[key] for key in KEYS if key in keys}


def known_actions(config: Mapping, world_reverse_actions: Mapping[str, str] | None = None) -> list[str]:
    """Every action the model's folder names (suggestions for the text box; any other text is allowed)."""
    names = list(config.get("reverse_actions") or world_reverse_actions or {})
    names += [a for a in (config.get("action_motions") or {}) if a not in names]
    return sorted(names)
