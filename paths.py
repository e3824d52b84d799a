"""Where the shipped files live inside the package."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = PACKAGE_DIR / "models" / "toyworld"
WORKFLOWS_DIR = PACKAGE_DIR / "workflows"  # convert.py, submit.py and api/ (the API-format copies)
EXAMPLE_WORKFLOWS_DIR = PACKAGE_DIR / "example_workflows"  # the UI workflows: ComfyUI's templates
DEFAULT_IDM_DIR = PACKAGE_DIR / "models" / "toyworld-idm"
DEFAULT_PLANNER_DIR = PACKAGE_DIR / "models" / "toyworld-retrace"
DEFAULT_MAZE_IDM_DIR = PACKAGE_DIR / "models" / "memory-maze-idm"
