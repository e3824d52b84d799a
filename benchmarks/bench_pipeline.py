#!/usr/bin/env python
"""Benchmark SlowFast-VGen chunk generation: Temp-LoRA cost, diffusers baseline, long-episode memory.

    python benchmarks/bench_pipeline.py            # tiny and mid-size models (the mid one takes long on a CPU)
    python benchmarks/bench_pipeline.py --quick    # tiny model only, seconds

Every measurement runs in its own fresh subprocess (one per setting and round), so that peak memory is
that setting's alone. Peak memory is the subprocess's peak resident set size (`getrusage` ru_maxrss, i.e.
psutil/RSS peak; tracemalloc does not see torch's allocations). It is reported both as the whole process
peak and as the peak above the process's RSS once the model is built ("over base"), which isolates what
generating a chunk costs. Times are medians over the timed chunks of all rounds, after one warm-up chunk.

Measured, side by side in one run:
  1. time and peak memory per chunk with Temp-LoRA (generation + update, default `TempLoRAConfig`) vs
     without (generation only);
  2. our chunk (f_p context + f_g new frames) vs diffusers' own `TextToVideoSDPipeline` generating the same
     total number of frames with the same UNet, scheduler, steps and guidance (ratio theirs/ours time:
     >= 1.0 means ours is at least as fast);
  3. peak memory after 5 chunks vs after 50 chunks of one episode with Temp-LoRA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

ACTIONS = ["move left", "move right", "move up", "move down"]


# ---------------------------------------------------------------------------------------------------
# Worker: one setting in a fresh process


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def run_worker(setting: dict) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(setting["threads"])
    from slowfast_vgen.paths import DEFAULT_MODEL_DIR
    from slowfast_vgen.pipelines import SlowFastVGenPipeline, TempLoRAConfig, WorldModelSpec, build_pipeline

    device, dtype = torch.device(setting["device"]), getattr(torch, setting["dtype"])
    if setting["model"] == "shipped":
        pipe = SlowFastVGenPipeline.from_pretrained(str(DEFAULT_MODEL_DIR))
    else:
        pipe = build_pipeline(getattr(WorldModelSpec, setting["model"])(), seed=0)
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    image_size = pipe.native_size
    latent_size = image_size // pipe.vae_scale_factor
    channels = pipe.unet.config.in_channels
    cuda = device.type == "cuda"

    def peak_memory() -> int:  # the device's peak on a GPU, the process's peak RSS on the CPU
        return torch.cuda.max_memory_allocated(device) if cuda else peak_rss()

    fp, fg, steps, guidance = setting["context_frames"], setting["new_frames"], setting["steps"], setting["guidance"]
    if fp > fg:
        raise SystemExit(f"F_P={fp} > F_G={fg}: the episode loop conditions each chunk on the one before, so it "
                         "has at most F_G frames of context; give F_P <= F_G.")
    generator = torch.Generator().manual_seed(0)
    context = torch.randn(1, channels, fp, latent_size, latent_size, generator=generator).to(device, dtype)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    base_rss = torch.cuda.memory_allocated(device) if cuda else current_rss()
    result = {"base_rss": base_rss}
    kind = setting["kind"]

    if kind == "t2v":
        from diffusers import TextToVideoSDPipeline

        theirs = TextToVideoSDPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                       unet=pipe.unet, scheduler=pipe.scheduler)
        theirs.set_progress_bar_config(disable=True)
        times = []
        for index in range(setting["warmup"] + setting["chunks"]):
            start = time.perf_counter()
            theirs(prompt=ACTIONS[index % 4], num_frames=fp + fg, height=image_size, width=image_size,
                   num_inference_steps=steps, guidance_scale=guidance, generator=generator, output_type="latent")
            if cuda:
                torch.cuda.synchronize(device)
            if index >= setting["warmup"]:
                times.append(time.perf_counter() - start)
        result.update(times=times, peak_rss=peak_memory())
        return result

    temp_lora = kind in ("temp_lora", "long")
    config = TempLoRAConfig()
    times, generation_times, update_times, peaks = [], [], [], {}
    memory, kept = None, []
    total = setting["warmup"] + setting["chunks"]
    if temp_lora:  # time each update the product's loop makes, around the pipeline's own method
        update_memory = pipe.update_memory

        def timed_update(*args, **kwargs):
            if cuda:
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            updated = update_memory(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize(device)
            update_times.append(time.perf_counter() - started)
            return updated

        pipe.update_memory = timed_update
    # The product's episode loop: each chunk conditions on the last f_p frames of the one before.
    chunks = pipe.stream_episode([ACTIONS[index % 4] for index in range(total)], start_latents=context,
                                 temp_lora=config if temp_lora else False, num_frames=fg, num_context_frames=fp,
                                 generator=generator, num_inference_steps=steps, guidance_scale=guidance)
    start = time.perf_counter()
    for index, chunk in enumerate(chunks):
        if cuda:
            torch.cuda.synchronize(device)
        done = time.perf_counter()
        kept.append(chunk.latents)  # the chunks are kept, on the CPU
        memory = chunk.memory
        if index >= setting["warmup"]:
            times.append(done - start)
            generation_times.append(done - start - (update_times[-1] if temp_lora else 0.0))
        peaks[index + 1] = peak_memory()
        start = time.perf_counter()
    update_times = update_times[setting["warmup"]:]
    result.update(times=times, generation_times=generation_times, update_times=update_times, peak_rss=peak_memory(),
                  peaks=peaks, memory_parameters=memory.num_parameters if memory else 0)
    return result


# ---------------------------------------------------------------------------------------------------
# Driver


def model_settings(model: str, args) -> dict:
    if model in ("tiny", "shipped"):
        return {"model": model, "context_frames": args.tiny_frames[0], "new_frames": args.tiny_frames[1],
                "steps": args.steps}
    if model == "modelscope":
        return {"model": model, "context_frames": 8, "new_frames": 8, "steps": args.mid_steps}
    return {"model": "mid", "context_frames": args.mid_frames[0], "new_frames": args.mid_frames[1],
            "steps": args.mid_steps}


def run_setting(setting: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(setting)],
        env=env, capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark worker {setting} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model only (about 2 minutes on one CPU core)")
    parser.add_argument("--models", nargs="+", choices=("tiny", "shipped", "mid", "modelscope"),
                        default=("tiny", "shipped", "mid"),
                        help="models to measure (default: tiny shipped mid; --quick means tiny shipped); "
                             "modelscope: a random-weight UNet of ModelScope T2V's shape, 8+8 frames of 256x256, "
                             "for a GPU")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak memory is then the GPU's)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--steps", type=int, default=20, help="inference steps per chunk, tiny model (default 20)")
    parser.add_argument("--mid-steps", type=int, default=20, help="inference steps per chunk, mid model (default 20)")
    parser.add_argument("--tiny-frames", type=int, nargs=2, default=(4, 4), metavar=("F_P", "F_G"),
                        help="context and new frames per chunk, tiny model (window 8; default 4 4)")
    parser.add_argument("--mid-frames", type=int, nargs=2, default=(16, 16), metavar=("F_P", "F_G"),
                        help="context and new frames per chunk, mid model (window 32; default 16 16)")
    parser.add_argument("--chunks", type=int, default=3, help="timed chunks per setting and round (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, settings interleaved (default 2)")
    parser.add_argument("--guidance", type=float, default=3.0, help="guidance scale (default 3.0)")
    parser.add_argument("--long-chunks", type=int, default=50, help="chunks of the long episode (default 50)")
    parser.add_argument("--long-steps", type=int, default=2, help="inference steps in the long episode (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per worker (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0

    command = shlex.join(["python", "benchmarks/bench_pipeline.py", *(sys.argv[1:] if argv is None else argv)])
    models = ["tiny", "shipped"] if args.quick else list(dict.fromkeys(args.models))
    import torch

    print(f"# SlowFast-VGen pipeline benchmark\ncommand: {command}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()} CPU, "
          f"{args.threads} thread(s) per worker, device {args.device} "
          f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), {args.dtype}")
    if args.device.startswith("cuda"):
        print("peak memory: torch.cuda.max_memory_allocated; 'over base' = peak minus allocated after model build\n")
    else:
        print("peak memory: subprocess peak RSS (getrusage ru_maxrss); 'over base' = peak minus RSS after model "
              "build\n")

    results: dict = {}
    for model in models:
        base = model_settings(model, args)
        common = {**base, "guidance": args.guidance, "threads": args.threads, "warmup": 1, "chunks": args.chunks,
                  "device": args.device, "dtype": args.dtype}
        for round_index in range(args.rounds):
            for kind in ("base", "temp_lora", "t2v"):
                started = time.perf_counter()
                out = run_setting({**common, "kind": kind}, args.threads)
                results.setdefault((model, kind), []).append(out)
                print(f"  [{model} {kind} round {round_index + 1}: {time.perf_counter() - started:.1f}s]",
                      file=sys.stderr)
        long_setting = {**common, "kind": "long", "steps": args.long_steps, "warmup": 0, "chunks": args.long_chunks}
        if model == "tiny":
            results[(model, "long")] = [run_setting(long_setting, args.threads)]

    rows = []
    summary = {}
    for model in models:
        base = model_settings(model, args)
        frames = f"{base['context_frames']}+{base['new_frames']}"

        def median_time(kind):
            return statistics.median(t for out in results[(model, kind)] for t in out["times"])

        def max_of(kind, key):
            return max(out[key] for out in results[(model, kind)])

        def over_base(kind):
            return max(out["peak_rss"] - out["base_rss"] for out in results[(model, kind)])

        for kind, label in (("base", "ours, no Temp-LoRA"), ("temp_lora", "ours + Temp-LoRA update"),
                            ("t2v", "diffusers TextToVideoSDPipeline")):
            rows.append((model, label, frames if kind != "t2v" else f"{base['context_frames'] + base['new_frames']}",
                         base["steps"], f"{median_time(kind):.3f}", mib(max_of(kind, "peak_rss")),
                         mib(over_base(kind))))
        update = statistics.median(t for out in results[(model, "temp_lora")] for t in out["update_times"])
        generation = {kind: statistics.median(t for out in results[(model, kind)] for t in out["generation_times"])
                      for kind in ("base", "temp_lora")}
        summary[model] = {
            "temp_lora_time_ratio": median_time("temp_lora") / median_time("base"),
            "temp_lora_update_seconds": update,
            "generation_with_memory_ratio": generation["temp_lora"] / generation["base"],
            "temp_lora_peak_ratio": max_of("temp_lora", "peak_rss") / max_of("base", "peak_rss"),
            "temp_lora_over_base_ratio": over_base("temp_lora") / max(over_base("base"), 1),
            "speed_ratio_theirs_over_ours": median_time("t2v") / median_time("base"),
            "memory_parameters": results[(model, "temp_lora")][0]["memory_parameters"],
        }
        if (model, "long") in results:
            peaks = {int(k): v for k, v in results[(model, "long")][0]["peaks"].items()}
            last = max(peaks)
            summary[model].update(long_peak_5=peaks[5], long_peak_last=peaks[last], long_chunks=last,
                                  long_ratio=peaks[last] / peaks[5])

    header = ("model", "setting", "frames", "steps", "s/chunk", "peak RSS MiB", "over base MiB")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    print()
    for model, values in summary.items():
        print(f"{model}: Temp-LoRA time x{values['temp_lora_time_ratio']:.3f} "
              f"(update {values['temp_lora_update_seconds']:.3f}s; generation with the memory "
              f"x{values['generation_with_memory_ratio']:.3f}; {values['memory_parameters']} LoRA parameters), "
              f"peak RSS x{values['temp_lora_peak_ratio']:.3f} (over base x{values['temp_lora_over_base_ratio']:.2f}); "
              f"diffusers time / ours = {values['speed_ratio_theirs_over_ours']:.3f}")
        if "long_ratio" in values:
            print(f"{model}: episode with Temp-LoRA ({args.long_steps} steps/chunk): peak RSS after 5 chunks "
                  f"{mib(values['long_peak_5'])} MiB, after {values['long_chunks']} chunks "
                  f"{mib(values['long_peak_last'])} MiB (x{values['long_ratio']:.4f})")
    print("paper (Table 3, V100, ModelScope T2V with Temp-LoRA): time x1.068, memory x1.037")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"command": command, "summary": summary,
                       "raw": {f"{m}/{k}": v for (m, k), v in results.items()}}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
