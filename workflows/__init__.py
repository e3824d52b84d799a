"""Tools for the shipped ComfyUI workflows: their API-format copies (api/, made by convert.py from the UI
workflows in the pack's example_workflows/ folder) and submit.py, which runs them on a server."""
