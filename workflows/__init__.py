"""The shipped ComfyUI workflows (UI format here, API format in api/) and the tool that converts them."""
