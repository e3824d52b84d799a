"""Benchmark of weights_tools on a model the size of ModelScope text-to-video-ms-1.7b (not a test).

No real weights can be downloaded here, so the UNet folder is built with the real ModelScope UNet config
and its exact tensor names, shapes and fp16 dtype (2.8 GB), written as a sparse safetensors file: a
valid header followed by zero-filled data that takes no disk space. What is measured:

- `model fingerprint`, `memory check` and `memory inspect`: wall time, and bytes read. The tools count
  the bytes they ask for (safetensors headers, plus 8 values per sampled row through lazy slices;
  `inspect` also reads the LoRA tensors for the per-layer norms, never the optimizer state). Reads go
  through mmap, so the kernel reads whole 4 KiB pages (plus its readahead): the pages those sampled
  values lie on are printed too, as a bound of the page-level reads before readahead.
- save / load of a rank-32 memory of that UNet (all attention projections, with Adam state): milliseconds.

Run: `OMP_NUM_THREADS=1 python benchmarks/bench_weights_tools.py [--folder DIR] [--repeats N]`
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import tempfile
import time
from pathlib import Path

import torch

from slowfast_vgen.pipelines import EpisodicMemory, TempLoRAConfig
from slowfast_vgen.pipelines.fingerprint import sampled_row_indices
from slowfast_vgen.pipelines.temp_lora import expected_lora_shapes
from slowfast_vgen.weights_tools import check_memory_file, file_fingerprint, inspect_memory, read_header
from slowfast_vgen.weights_tools.fingerprint import empty_unet

# unet/config.json of damo-vilab/text-to-video-ms-1.7b (diffusers format).
MODELSCOPE_UNET_CONFIG = {
    "_class_name": "UNet3DConditionModel", "act_fn": "silu", "attention_head_dim": 64,
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "downsample_padding": 1, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 32,
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
}
PAGE = 4096


def write_sparse_model(folder: Path) -> Path:
    """A world-model folder whose UNet weights file has the real layout, with sparse zero data."""
    unet_dir = folder / "unet"
    unet_dir.mkdir(parents=True, exist_ok=True)
    (unet_dir / "config.json").write_text(json.dumps(MODELSCOPE_UNET_CONFIG))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "SlowFastVGenPipeline", "context_window": 16}))
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, tensor in sorted(empty_unet(folder).state_dict().items()):
        size = tensor.numel() * 2
        header[name] = {"dtype": "F16", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    weights = unet_dir / "diffusion_pytorch_model.safetensors"
    with open(weights, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
        file.truncate(8 + len(encoded) + offset)
    return weights


def rank32_memory(folder: Path, fingerprint: str) -> EpisodicMemory:
    config = TempLoRAConfig(rank=32)
    generator = torch.Generator().manual_seed(0)
    lora = {key: torch.randn(shape, generator=generator) * 1e-3
            for key, shape in expected_lora_shapes(empty_unet(folder), config).items()}
    optimizer_state = {f"{key}.{moment}": torch.rand(t.shape, generator=generator) * 1e-6
                       for key, t in lora.items() for moment in ("exp_avg", "exp_avg_sq")}
    return EpisodicMemory(config=config, lora=lora, base_fingerprint=fingerprint, optimizer_state=optimizer_state,
                          optimizer_steps=12, num_updates=12, frames_seen=96, actions=("move left",) * 12)


def timed(function, repeats: int) -> tuple[float, object]:
    """Best wall time (ms) of `repeats` calls, and the last result."""
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, (time.perf_counter() - start) * 1000)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="where to write the sparse model (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.folder or temporary) / "modelscope-sized"
        weights = write_sparse_model(folder)
        header = read_header(weights)
        num_params = sum(math.prod(s) for s in header.shapes.values())
        print(f"Model: {folder} - UNet {num_params / 1e9:.2f}B parameters, {len(header.shapes)} tensors, "
              f"{header.file_bytes / 1e9:.2f} GB fp16 (sparse on disk), header {header.header_bytes / 1e3:.0f} KB")
        sampled_rows = sum(len(sampled_row_indices(s[0])) for s in header.shapes.values() if s)
        page_bound = header.header_bytes + sampled_rows * 2 * PAGE  # 8 values span at most 2 pages

        ms, fingerprint = timed(lambda: file_fingerprint(folder), args.repeats)
        print(f"model fingerprint: {ms:.0f} ms, {fingerprint.bytes_read:,} bytes read "
              f"({100 * fingerprint.bytes_read / fingerprint.bytes_total:.4f}% of the file; "
              f"at most {page_bound:,} bytes of pages before kernel readahead = {100 * page_bound / fingerprint.bytes_total:.2f}%)")

        memory = rank32_memory(folder, fingerprint.value)
        memory_path = folder / "rank32.safetensors"
        save_ms, _ = timed(lambda: memory.save(memory_path), args.repeats)
        load_ms, loaded = timed(lambda: EpisodicMemory.load(memory_path), args.repeats)
        assert all(torch.equal(loaded.lora[k], memory.lora[k]) for k in memory.lora)
        print(f"rank-32 memory: {len(memory.lora) // 2} target modules, {memory.num_parameters / 1e6:.1f}M LoRA "
              f"parameters + Adam state, {memory_path.stat().st_size / 1e6:.0f} MB: save {save_ms:.0f} ms, "
              f"load {load_ms:.0f} ms (best of {args.repeats})")

        memory_header = read_header(memory_path).header_bytes
        ms, _ = timed(lambda: check_memory_file(memory_path, folder), args.repeats)
        print(f"memory check: {ms:.0f} ms, {memory_header + fingerprint.bytes_read:,} bytes read (memory header + "
              f"model header + fingerprint samples; the model config builds an empty UNet for the shapes)")
        ms, summary = timed(lambda: inspect_memory(memory_path, norms=False), args.repeats)
        print(f"memory inspect --no-norms: {ms:.0f} ms, {summary['bytes_read']:,} bytes read (header only)")
        ms, summary = timed(lambda: inspect_memory(memory_path), args.repeats)
        print(f"memory inspect: {ms:.0f} ms, {summary['bytes_read']:,} bytes read of a {summary['file_bytes']:,}-byte "
              f"file (LoRA tensors for the norms, not the optimizer state); the model file is not read")


if __name__ == "__main__":
    main()
