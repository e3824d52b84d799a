"""ComfyUI runs every node under torch.inference_mode(): Temp-LoRA must still train afterwards."""

import numpy as np
import torch

from slowfast_vgen.pipelines import WorldModelSpec, build_pipeline


def test_memory_first_used_under_inference_mode_can_still_be_updated():
    pipe = build_pipeline(WorldModelSpec.tiny())
    pipe.set_progress_bar_config(disable=True)
    memory = pipe.new_memory()
    with torch.inference_mode():
        start = pipe.encode_frames(np.zeros((32, 32, 3), dtype=np.float32))
        new = pipe("move right", context_latents=start, memory=memory, num_frames=2, num_inference_steps=1,
                   output_type="latent").latents
        updated = pipe.update_memory(memory, start, new, action="move right")
    assert updated.num_updates == 1
    assert any(not torch.equal(updated.lora[key], memory.lora[key]) for key in memory.lora)
