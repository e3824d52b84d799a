"""`slowfast-vgen evaluate`: revisit, drift and next-chunk quality of a world model, through the product's loop.

Every episode runs `SlowFastVGenPipeline.stream_episode`, the loop of `generate`, the nodes and the
workflows. All settings of an episode share its seed, so they sample the same noise and the first chunk
is bit-identical in all of them: settings differ by memory alone (Temp-LoRA updates draw from a stream
of their own, see `memory_generator_for`).

Per episode (a held-out ToyWorld world, a path of one of `data.episodes.PATH_FAMILIES` or a user's path
file) and per memory setting it records, in world coordinates:
- revisit PSNR and SSIM: the pixels whose world place was first seen before the chunk's context and that
  no context frame shows, against their first sighting in the same video (the pixel SRC) and against the
  truth; per chunk and pooled over the episode;
- SRC (with `--resnet18`): cosine similarity of ResNet-18 features of each revisit frame and the earliest
  frame before its context that saw most of the same place (at least half of the view);
- SCuts (PySceneDetect) and drift per chunk: shift-consistency, full-frame PSNR against the truth, colour
  shift and sharpness against the truth's;
- with `--oracle`: the memory of the true first half (every chunk learned as an episode would), then the
  second half generated from the true half-way chunk with that memory frozen, scored against the truth.

Rows are appended to `OUT/episodes-<rank>.jsonl` as each episode ends, so a stopped run resumes where it
stopped; under `accelerate launch` the episodes are shared out over the processes. `summary.json`,
`summary.md` and the plots are written at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.episodes import PATH_FAMILIES, EpisodePath, RevisitMap, load_path_file, make_episode, place_path
from ..data.toyworld import DIRECTIONS, HELD_OUT_PARAPHRASES, TRAIN_PARAPHRASES, ToyWorld
from ..paths import DEFAULT_MODEL_DIR
from ..pipelines import (DEFAULT_GUIDANCE, DEFAULT_STEPS, SCHEDULERS, TEMP_LORA_PRESETS, SlowFastVGenPipeline,
                         TempLoRAConfig, memory_generator_for, scheduler_from_name)
from . import metrics

# Named memory settings: a Temp-LoRA config (None: no memory) and chunk arguments. Every Temp-LoRA preset
# (`TEMP_LORA_PRESETS`: the paper's Table 4 ablations "transition" and "global" among them), and "wo chunk
# input" (Table 4), which conditions every chunk on one frame instead of the previous chunk.
SETTINGS: dict[str, tuple[TempLoRAConfig | None, dict]] = {
    "none": (None, {}),
    **{name: (config, {}) for name, config in TEMP_LORA_PRESETS.items()},
    "no-chunk-input": (TEMP_LORA_PRESETS["paper"], {"num_context_frames": 1}),
    "none-no-chunk-input": (None, {"num_context_frames": 1}),
}
BASELINE = "none"
STRIP_ZOOM = 3  # ToyWorld's 64-pixel views, drawn 3 times larger in the pictures
SRC_MIN_OVERLAP = 0.5  # a frame counts for SRC when an earlier frame, before its context, saw half its view


@dataclass
class EvaluationOptions:
    """Every setting of an evaluation run (the CLI's flags, one to one)."""

    output_dir: str = "outputs/evaluation"
    model: str = str(DEFAULT_MODEL_DIR)
    episodes: int = 20
    families: tuple[str, ...] = PATH_FAMILIES
    path_file: str | None = None
    first_seed: int = 2000
    chunks: int = 8
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    scheduler: str | None = None  # a `SCHEDULERS` name; None: the model's own
    settings: tuple[str, ...] = ("none", "paper")
    custom_settings: dict[str, dict] = field(default_factory=dict)
    oracle: bool = False
    teacher_forced: bool = False
    resnet18: str | None = None
    scuts_threshold: float = metrics.SCUTS_THRESHOLD
    strips: bool = True

    def check(self) -> None:
        """Clear errors for bad options, before any work starts."""
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {self.episodes}.")
        if self.chunks < 2:
            raise ValueError(f"--chunks must be at least 2 (a way out and a way back), got {self.chunks}.")
        if self.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {self.steps}.")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"--guidance must be a finite number >= 0, got {self.guidance}.")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"--scheduler: unknown sampler {self.scheduler!r}; known: {', '.join(SCHEDULERS)}.")
        unknown = [f for f in self.families if f not in PATH_FAMILIES]
        if unknown:
            raise ValueError(f"--families: unknown path family {unknown[0]!r}; known: {', '.join(PATH_FAMILIES)} "
                             "(or give your own path with --path-file).")
        if not self.families and not self.path_file:
            raise ValueError("--families is empty and no --path-file is given: there is no path to evaluate.")
        if self.path_file and not os.path.isfile(self.path_file):
            raise ValueError(f"--path-file {self.path_file!r} does not exist.")
        for name in self.settings:
            if name not in SETTINGS and name not in self.custom_settings:
                raise ValueError(f"--settings: unknown memory setting {name!r}; known: {', '.join(SETTINGS)}, or "
                                 "define one with --setting NAME='{\"learning_rate\": 1e-3, ...}'.")
        for name in self.custom_settings:
            self.memory_setting(name)  # a bad field fails here, naming the setting
        if self.resnet18 is not None and not os.path.exists(self.resnet18):
            raise ValueError(f"--resnet18 {self.resnet18!r} does not exist. {metrics.RESNET18_HELP}")
        if not os.path.isfile(os.path.join(self.model, "model_index.json")):
            raise ValueError(f"--model {self.model!r} is not a world model folder (no model_index.json).")

    def memory_setting(self, name: str) -> tuple[TempLoRAConfig | None, dict]:
        if name not in self.custom_settings:
            return SETTINGS[name]
        fields = dict(self.custom_settings[name])
        chunk_kwargs = {"num_context_frames": fields.pop("num_context_frames")} if "num_context_frames" in fields else {}
        if fields.pop("memory", True) is False:
            return None, chunk_kwargs
        try:
            return TempLoRAConfig.from_fields(fields), chunk_kwargs
        except (TypeError, ValueError) as error:
            raise ValueError(f"--setting {name}: {error}") from None

    def plan(self, view_size: int, chunk_frames: int) -> list[EpisodePath]:
        """The episodes, in order: seed first_seed + i, family i mod len(families) (the path file's in turn)."""
        kinds = list(self.families) + (["path-file"] if self.path_file else [])
        episodes = []
        for index in range(self.episodes):
            seed, kind = self.first_seed + index, kinds[index % len(kinds)]
            if kind == "path-file":
                episodes.append(load_path_file(self.path_file, seed, chunk_frames, view_size))
            else:
                episodes.append(make_episode(seed, kind, self.chunks, chunk_frames, view_size))
        return episodes

    def identity(self) -> dict:
        """What a resumed run must share with the run it continues (all but the episode count and output)."""
        described = dataclasses.asdict(self)
        for key in ("episodes", "output_dir", "strips"):
            described.pop(key)
        if described["scheduler"] is None:  # as runs from before the option recorded it
            described.pop("scheduler")
        if not described["teacher_forced"]:  # likewise
            described.pop("teacher_forced")
        described["families"] = list(self.families)
        described["settings"] = list(self.settings)
        return described


# ---------------------------------------------------------------------------------------------- one episode


def run_setting(pipe: SlowFastVGenPipeline, episode: EpisodePath, name: str, options: EvaluationOptions,
                start_latents: torch.Tensor) -> torch.Tensor:
    """The whole episode's latents (start frame first) with one memory setting, through the product's loop."""
    config, chunk_kwargs = options.memory_setting(name)
    chunks = pipe.stream_episode(
        list(episode.actions), start_latents=start_latents, temp_lora=config if config is not None else False,
        num_frames=episode.chunk_frames, generator=torch.Generator().manual_seed(episode.world.seed),
        num_inference_steps=options.steps, guidance_scale=options.guidance, **chunk_kwargs,
    )
    return torch.cat([start_latents.cpu()] + [chunk.latents for chunk in chunks], dim=2)


def decode(pipe: SlowFastVGenPipeline, latents: torch.Tensor) -> np.ndarray:
    """Latents -> frames (F, H, W, 3) in [0, 1], a few at a time."""
    return np.concatenate([part[0] for part in pipe.iter_decode([latents], output_type="np")])


def true_latents(pipe: SlowFastVGenPipeline, episode: EpisodePath, truth: np.ndarray, chunks: int) -> list[torch.Tensor]:
    """The true start frame and first `chunks` chunks as latents: X_0, X_1 ... (what an oracle memory learns)."""
    return [pipe.encode_frames(truth[:1])] + [pipe.encode_frames(truth[episode.chunk_slice(i)]) for i in range(chunks)]


def oracle_revisit(pipe: SlowFastVGenPipeline, episode: EpisodePath, name: str, options: EvaluationOptions,
                   truth: np.ndarray, revisits: RevisitMap) -> dict:
    """The memory of the true first half, then the second half generated with it frozen, against the truth."""
    config, chunk_kwargs = options.memory_setting(name)
    half = episode.num_chunks // 2
    encoded = true_latents(pipe, episode, truth, half)
    memory, generator = None, torch.Generator().manual_seed(episode.world.seed)
    if config is not None:
        updates = memory_generator_for(generator)
        for index in range(half):
            memory = pipe.update_memory(memory, encoded[index], encoded[index + 1], action=episode.actions[index],
                                        config=config, generator=updates)
    chunks = pipe.stream_episode(
        list(episode.actions[half:]), start_latents=encoded[-1], memory=memory, temp_lora=False,
        num_frames=episode.chunk_frames, generator=generator, num_inference_steps=options.steps,
        guidance_scale=options.guidance, **chunk_kwargs,
    )
    generated = decode(pipe, torch.cat([chunk.latents for chunk in chunks], dim=2))
    video = np.concatenate([truth[:episode.chunk_slice(half).start], generated])
    masks = [revisits.masks(i) for i in range(half, episode.num_chunks)]
    frames = np.concatenate([video[episode.chunk_slice(i)] for i in range(half, episode.num_chunks)])
    reference = np.concatenate([truth[episode.chunk_slice(i)] for i in range(half, episode.num_chunks)])
    return {"oracle_revisit_psnr_truth": metrics.masked_psnr(frames, reference, np.concatenate(masks))}


def teacher_forced_revisit(pipe: SlowFastVGenPipeline, episode: EpisodePath, name: str, options: EvaluationOptions,
                           truth: np.ndarray, revisits: RevisitMap) -> dict:
    """Memory read without drift: every chunk generated from the TRUE previous chunk, with the memory of the
    true chunks so far (updated after each chunk as the episode loop does), revisit PSNR against the truth.
    What memory brings back when the context is right; the real loop adds the model's own drift."""
    config, chunk_kwargs = options.memory_setting(name)
    encoded = true_latents(pipe, episode, truth, episode.num_chunks)
    generator = torch.Generator().manual_seed(episode.world.seed)
    updates = memory_generator_for(generator)
    memory, frames, reference, masks = None, [], [], []
    for index, action in enumerate(episode.actions):
        chunk = pipe(action, context_latents=encoded[index], num_frames=episode.chunk_frames, memory=memory,
                     generator=generator, num_inference_steps=options.steps, guidance_scale=options.guidance,
                     output_type="latent", **chunk_kwargs).latents
        if revisits.masks(index).any():
            frames.append(decode(pipe, chunk))
            reference.append(truth[episode.chunk_slice(index)])
            masks.append(revisits.masks(index))
        if config is not None and index + 1 < episode.num_chunks:
            memory = pipe.update_memory(memory, encoded[index], encoded[index + 1], action=action, config=config,
                                        generator=updates)
    if not frames:
        return {}
    psnr = metrics.masked_psnr(np.concatenate(frames), np.concatenate(reference), np.concatenate(masks))
    return {"teacher_forced_revisit_psnr_truth": psnr}


def score_video(episode: EpisodePath, video: np.ndarray, truth: np.ndarray, revisits: RevisitMap,
                resnet=None, scuts_threshold: float = metrics.SCUTS_THRESHOLD) -> dict:
    """Every metric of one generated episode (frames aligned with `episode.positions`)."""
    first = revisits.first_sightings(video)
    chunk_frames, chunk_masks = [], []
    result: dict = {"revisit_pixels": [], "revisit_psnr_chunks": [], "psnr_truth_chunks": [],
                    "shift_consistency_chunks": [], "colour_shift_chunks": [], "sharpness_chunks": [],
                    "truth_sharpness_chunks": []}
    shift = metrics.shift_consistency(video, list(episode.positions))  # frame i against frame i - 1
    for index in range(episode.num_chunks):
        frames = episode.chunk_slice(index)
        masks = revisits.masks(index)
        chunk_frames.append(frames)
        chunk_masks.append(masks)
        result["revisit_pixels"].append(int(masks.sum()))
        result["revisit_psnr_chunks"].append(metrics.masked_psnr(video[frames], first[frames], masks))
        result["psnr_truth_chunks"].append(metrics.masked_psnr(video[frames], truth[frames]))
        result["shift_consistency_chunks"].append(float(np.nanmean(shift[frames.start - 1:frames.stop - 1])))
        result["colour_shift_chunks"].append(metrics.colour_shift(video[frames], truth[frames]))
        result["sharpness_chunks"].append(metrics.sharpness(video[frames]))
        result["truth_sharpness_chunks"].append(metrics.sharpness(truth[frames]))
    all_frames = np.concatenate([np.arange(s.start, s.stop) for s in chunk_frames])
    all_masks = np.concatenate(chunk_masks)
    result["revisit_psnr"] = metrics.masked_psnr(video[all_frames], first[all_frames], all_masks)
    result["revisit_psnr_truth"] = metrics.masked_psnr(video[all_frames], truth[all_frames], all_masks)
    result["revisit_ssim"] = metrics.masked_ssim(video[all_frames], first[all_frames], all_masks)
    result["revisit_ssim_truth"] = metrics.masked_ssim(video[all_frames], truth[all_frames], all_masks)
    result["scuts"] = metrics.scene_cuts(video, threshold=scuts_threshold)
    result["scuts_per_100_frames"] = 100.0 * result["scuts"] / len(video)
    if resnet is not None:
        result["src"] = scene_revisit_consistency(resnet, video, src_pairs(episode, revisits))
    return result


def scene_revisit_consistency(resnet, video: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    """SRC: mean cosine similarity of the ResNet features of each (revisit, first visit) frame pair."""
    if not pairs:
        return float("nan")
    later, earlier = (np.array(p) for p in zip(*pairs))
    features = metrics.resnet_features(resnet, np.concatenate([video[later], video[earlier]]))
    return float(metrics.cosine_similarity(features[:len(later)], features[len(later):]).mean())


def src_pairs(episode: EpisodePath, revisits: RevisitMap) -> list[tuple[int, int]]:
    """(revisit, first visit) frame pairs for SRC: each frame with the earliest frame before its chunk's context
    that shows most of the same place, when that is at least `SRC_MIN_OVERLAP` of the view."""
    size, pairs = episode.world.view_size, []
    for chunk in range(episode.num_chunks):
        frames, context = episode.chunk_slice(chunk), revisits.context_range(chunk)
        for index in range(frames.start, frames.stop):
            x, y = episode.positions[index]
            overlaps = [max(0, size - abs(px - x)) * max(0, size - abs(py - y))
                        for px, py in episode.positions[:context.start]]
            if overlaps and max(overlaps) >= SRC_MIN_OVERLAP * size * size:
                pairs.append((index, int(np.argmax(overlaps))))
    return pairs


def evaluate_episode(pipe: SlowFastVGenPipeline, episode: EpisodePath, options: EvaluationOptions,
                     resnet=None, strip_path: Path | None = None) -> dict:
    """One row of the JSONL: the episode and every setting's metrics."""
    started = time.perf_counter()
    truth = episode.frames()
    revisits = RevisitMap(episode)
    start_latents = pipe.encode_frames(truth[:1])
    # PySceneDetect finds cuts in some true pans at its default threshold: the truth's count is the floor.
    row = {"episode": episode.describe(), "truth_scuts": metrics.scene_cuts(truth, threshold=options.scuts_threshold),
           "settings": {}}
    videos = {}
    for name in options.settings:
        setting_started = time.perf_counter()
        videos[name] = decode(pipe, run_setting(pipe, episode, name, options, start_latents))
        scores = score_video(episode, videos[name], truth, revisits, resnet, options.scuts_threshold)
        if options.oracle:
            scores.update(oracle_revisit(pipe, episode, name, options, truth, revisits))
        if options.teacher_forced:
            scores.update(teacher_forced_revisit(pipe, episode, name, options, truth, revisits))
        scores["seconds"] = round(time.perf_counter() - setting_started, 2)
        row["settings"][name] = scores
    if resnet is not None:
        row["truth_src"] = scene_revisit_consistency(resnet, truth, src_pairs(episode, revisits))
    if strip_path is not None:
        write_revisit_strip(strip_path, episode, revisits, truth, videos)
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def write_revisit_strip(path: Path, episode: EpisodePath, revisits: RevisitMap, truth: np.ndarray,
                        videos: dict[str, np.ndarray]) -> None:
    """PNG: for the frame that revisits most, the truth, then per setting its first sighting and its revisit."""
    per_frame = np.concatenate([revisits.masks(c).sum(axis=(1, 2)) for c in range(episode.num_chunks)])
    index = 1 + int(np.argmax(per_frame))  # frame 0 is the start frame, which revisits nothing
    tiles = [truth[index]]
    for video in videos.values():
        tiles += [revisits.first_sightings(video)[index], video[index]]
    gap = np.ones((truth.shape[1], 2, 3), np.float32)
    strip = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
    write_image(path, strip.repeat(STRIP_ZOOM, 0).repeat(STRIP_ZOOM, 1))


def write_image(path: Path, image: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial.png")
    cv2.imwrite(str(temporary), cv2.cvtColor((np.clip(image, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------- runs and resume


def read_rows(output_dir: Path) -> list[dict]:
    """Every complete row of every process's JSONL; a line cut short by a stop is dropped (and removed)."""
    rows = []
    for shard in sorted(output_dir.glob("episodes-*.jsonl")):
        lines = shard.read_text(encoding="utf-8").split("\n")
        complete, tail = lines[:-1], lines[-1]
        good = []
        for line in complete:
            try:
                rows.append(json.loads(line))
                good.append(line)
            except ValueError:
                pass
        if tail or len(good) != len(complete):  # a torn last write: keep only whole rows
            temporary = shard.with_name(shard.name + ".partial")
            temporary.write_text("".join(line + "\n" for line in good), encoding="utf-8")
            os.replace(temporary, shard)
    return rows


def append_row(shard: Path, row: dict) -> None:
    with open(shard, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def episode_key(described: dict) -> tuple:
    return described["seed"], described["family"]


def claim_run_folder(output_dir: Path, identity: dict) -> None:
    """Create `output_dir` for a run with these settings, or resume the run it holds if its settings are the
    same; a folder holding a run with other settings is refused, naming them."""
    output_dir.mkdir(parents=True, exist_ok=True)
    run_file = output_dir / "run.json"
    if run_file.is_file():
        earlier = json.loads(run_file.read_text(encoding="utf-8"))
        if earlier != identity:
            changed = sorted(k for k in set(earlier) | set(identity) if earlier.get(k) != identity.get(k))
            raise ValueError(f"{output_dir} holds a run with other settings ({', '.join(changed)} differ); resume it "
                             "with the same options, or give another output folder.")
    temporary = output_dir / ".run.json.partial"
    temporary.write_text(json.dumps(identity, indent=2), encoding="utf-8")
    os.replace(temporary, run_file)


def start_run(output_dir: Path, identity: dict):
    """accelerate's state of this process, once the main process has claimed `output_dir` (see
    `claim_run_folder`), and the rows already done there (read on the main process first, which drops a
    row torn by a stop, then on the others)."""
    from accelerate import PartialState

    # cpu=True where there is no GPU: accelerate then joins CPU processes (torchrun, accelerate launch) over gloo.
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        claim_run_folder(output_dir, identity)
        done = read_rows(output_dir)
    state.wait_for_everyone()
    if not state.is_main_process:
        done = read_rows(output_dir)
    return state, done


def evaluate(options: EvaluationOptions) -> dict | None:
    """Run (or resume) the evaluation; returns the summary on the main process, None on the others."""
    options.check()
    output_dir = Path(options.output_dir)
    state, done_rows = start_run(output_dir, options.identity())

    pipe = load_pipeline(options.model, options.scheduler).to(state.device)
    resnet = metrics.load_resnet18(options.resnet18) if options.resnet18 else None
    plan = options.plan(pipe.native_size, pipe.context_window // 2)
    done = {episode_key(row["episode"]) for row in done_rows}
    todo = [episode for episode in plan if episode_key(episode.describe()) not in done]
    mine = todo[state.process_index::state.num_processes]
    shard = output_dir / f"episodes-{state.process_index}.jsonl"
    for episode in tqdm(mine, desc=f"episodes (process {state.process_index})", unit="episode",
                        position=state.process_index):
        strip = output_dir / "strips" / f"{episode.world.seed}-{episode.family}.png" if options.strips else None
        append_row(shard, evaluate_episode(pipe, episode, options, resnet, strip))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    wanted = {episode_key(e.describe()) for e in plan}
    rows = [row for row in read_rows(output_dir) if episode_key(row["episode"]) in wanted]
    summary = summarize(rows, options)
    write_reports(output_dir, rows, summary, options)
    return summary


# ---------------------------------------------------------------------------------------------- summaries


SCALARS = ("revisit_psnr", "revisit_psnr_truth", "revisit_ssim", "revisit_ssim_truth", "src", "scuts",
           "scuts_per_100_frames", "oracle_revisit_psnr_truth", "teacher_forced_revisit_psnr_truth", "seconds")
GAINS = ("revisit_psnr", "revisit_psnr_truth", "revisit_ssim", "src", "oracle_revisit_psnr_truth",
         "teacher_forced_revisit_psnr_truth")


def spread(values: list[float]) -> dict:
    array = np.array([v for v in values if v is not None and not np.isnan(v)], np.float64)
    if not array.size:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(float(array.mean()), 3), "std": round(float(array.std()), 3), "n": int(array.size),
            "min": round(float(array.min()), 3), "max": round(float(array.max()), 3)}


def per_chunk_mean(curves: list[list[float]]) -> list[float | None]:
    """Mean of per-chunk curves of different lengths (random walks home take their own time), NaN-aware."""
    table = np.full((len(curves), max(len(c) for c in curves)), np.nan)
    for row, curve in zip(table, curves):
        row[:len(curve)] = np.array(curve, np.float64)
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(table, axis=0)
    return [None if np.isnan(v) else round(float(v), 3) for v in means]


def summarize(rows: list[dict], options: EvaluationOptions) -> dict:
    """Mean ± std per setting and path family, and each memory setting's gain over no memory, paired by episode."""
    groups = {"all": rows}
    for row in rows:
        groups.setdefault(row["episode"]["family"], []).append(row)
    baseline = BASELINE if BASELINE in options.settings else None
    summary: dict = {"episodes": len(rows), "model": options.model, "chunks": options.chunks, "steps": options.steps,
                     "guidance": options.guidance, "scuts_threshold": options.scuts_threshold,
                     "settings": {name: describe_setting(options, name) for name in options.settings},
                     "groups": {}}
    for group, members in groups.items():
        table = {}
        for name in options.settings:
            scores = [row["settings"][name] for row in members]
            entry = {key: spread([s.get(key, float("nan")) for s in scores]) for key in SCALARS
                     if any(key in s for s in scores)}
            entry["per_chunk"] = {key: per_chunk_mean([s[key] for s in scores])
                                  for key in ("revisit_psnr_chunks", "psnr_truth_chunks", "shift_consistency_chunks",
                                              "colour_shift_chunks", "sharpness_chunks", "truth_sharpness_chunks")}
            if baseline and name != baseline:
                entry["gain"] = {}
                for key in GAINS:
                    pairs = [(row["settings"][name].get(key), row["settings"][baseline].get(key)) for row in members]
                    differences = [a - b for a, b in pairs if a is not None and b is not None
                                   and not (np.isnan(a) or np.isnan(b))]
                    if differences:
                        entry["gain"][key] = {**spread(differences),
                                              "episodes_improved": int(sum(d > 0 for d in differences))}
            table[name] = entry
        truth_src = [row["truth_src"] for row in members if "truth_src" in row]
        summary["groups"][group] = {"episodes": len(members), "settings": table,
                                    "truth_scuts": spread([row["truth_scuts"] for row in members]),
                                    **({"truth_src": spread(truth_src)} if truth_src else {})}
    return summary


def describe_setting(options: EvaluationOptions, name: str) -> dict:
    config, chunk_kwargs = options.memory_setting(name)
    return {"temp_lora": dataclasses.asdict(config) if config is not None else None, **chunk_kwargs}


def write_reports(output_dir: Path, rows: list[dict], summary: dict, options: EvaluationOptions) -> None:
    temporary = output_dir / ".summary.json.partial"
    temporary.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    os.replace(temporary, output_dir / "summary.json")
    plots = write_plots(output_dir, summary, options)
    strips = best_and_worst_strips(output_dir, rows, options)
    markdown = summary_markdown(summary, options, plots, strips)
    temporary = output_dir / ".summary.md.partial"
    temporary.write_text(markdown, encoding="utf-8")
    os.replace(temporary, output_dir / "summary.md")


def fmt(entry: dict | None, digits: int = 2) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def summary_markdown(summary: dict, options: EvaluationOptions, plots: list[str], strips: list[str]) -> str:
    lines = [f"# Evaluation of {options.model}", "",
             f"{summary['episodes']} held-out episodes (ToyWorld seeds from {options.first_seed}), {options.chunks} "
             f"chunks each, {options.steps} steps{f' of {options.scheduler}' if options.scheduler else ''}, "
             f"guidance {options.guidance}; every setting of an episode samples "
             "the same noise (`stream_episode`, one seed). Revisit PSNR/SSIM: pixels first seen before the chunk's "
             "context and not in it, against their first sighting in the same video (pixel SRC) or the truth. "
             f"SCuts: PySceneDetect ContentDetector, threshold {options.scuts_threshold:g}, min scene "
             f"{metrics.SCUTS_MIN_SCENE_FRAMES} frames.", ""]
    for group, data in summary["groups"].items():
        lines += [f"## {group} ({data['episodes']} episodes)", "",
                  "| setting | revisit PSNR, first visit (dB) | gain | improved | revisit PSNR, truth | gain | "
                  "revisit SSIM | SRC | SCuts | oracle PSNR, truth | gain | teacher-forced PSNR, truth | gain | "
                  "s / episode |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, entry in data["settings"].items():
            gain = entry.get("gain", {})
            improved = gain.get("revisit_psnr", {}).get("episodes_improved")
            improved = "–" if improved is None else f"{improved} / {data['episodes']}"
            lines.append(
                f"| {name} | {fmt(entry.get('revisit_psnr'))} | {fmt(gain.get('revisit_psnr'))} | "
                f"{improved} | "
                f"{fmt(entry.get('revisit_psnr_truth'))} | {fmt(gain.get('revisit_psnr_truth'))} | "
                f"{fmt(entry.get('revisit_ssim'), 3)} | {fmt(entry.get('src'), 3)} | {fmt(entry.get('scuts'))} | "
                f"{fmt(entry.get('oracle_revisit_psnr_truth'))} | {fmt(gain.get('oracle_revisit_psnr_truth'))} | "
                f"{fmt(entry.get('teacher_forced_revisit_psnr_truth'))} | "
                f"{fmt(gain.get('teacher_forced_revisit_psnr_truth'))} | {fmt(entry.get('seconds'), 1)} |")
        lines.append(f"\nSCuts of the true frames (the floor): {fmt(data['truth_scuts'])}.")
        if "truth_src" in data:
            lines.append(f"SRC of the true frames (the ceiling): {fmt(data['truth_src'], 3)}.")
        lines.append("")
    lines += [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    if strips:
        lines += ["The episodes where memory (" + next(n for n in options.settings if n != BASELINE) + ") gained "
                  "most and least: the truth, then for each setting (" + ", ".join(options.settings) + ") the first "
                  "sighting and the revisit, at the frame that revisits most.", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in strips]
    return "\n".join(lines) + "\n"


def write_plots(output_dir: Path, summary: dict, options: EvaluationOptions) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = summary["groups"]["all"]["settings"]
    written = []
    panels = (("revisit_psnr_chunks", "revisit PSNR vs first visit (dB)"),
              ("psnr_truth_chunks", "full-frame PSNR vs truth (dB)"),
              ("shift_consistency_chunks", "shift-consistency (dB)"),
              ("sharpness_chunks", "sharpness (Laplacian variance)"))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for axis, (key, title) in zip(axes, panels):
        for name, entry in settings.items():
            values = entry["per_chunk"][key]
            axis.plot(range(len(values)), values, marker="o", label=name)
        if key == "sharpness_chunks":
            truth = next(iter(settings.values()))["per_chunk"]["truth_sharpness_chunks"]
            axis.plot(range(len(truth)), truth, "k--", label="truth")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("chunk")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    path = output_dir / "revisit_and_drift.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path.name)
    return written


def best_and_worst_strips(output_dir: Path, rows: list[dict], options: EvaluationOptions) -> list[str]:
    memory = [name for name in options.settings if name != BASELINE]
    if not options.strips or BASELINE not in options.settings or not memory or not rows:
        return []

    def gain(row):
        value = row["settings"][memory[0]]["revisit_psnr"] - row["settings"][BASELINE]["revisit_psnr"]
        return -np.inf if np.isnan(value) else value

    ranked = sorted(rows, key=gain)
    picked = []
    for row in (ranked[-1], ranked[0]):  # the best episode, then the worst
        source = output_dir / "strips" / f"{row['episode']['seed']}-{row['episode']['family']}.png"
        if source.is_file():
            picked.append(f"strips/{source.name}")
    return picked


# ---------------------------------------------------------------------------------------------- next-chunk quality


def camera_motion(frames: np.ndarray) -> np.ndarray:
    """Mean camera motion (dx, dy) in pixels per frame, from OpenCV's phase correlation of consecutive frames."""
    import cv2

    grey = [cv2.cvtColor(f.astype(np.float32), cv2.COLOR_RGB2GRAY).astype(np.float64) for f in frames]
    # The picture moves against the camera, hence the minus.
    return -np.mean([cv2.phaseCorrelate(a, b)[0] for a, b in zip(grey, grey[1:])], axis=0)


def load_pipeline(model: str, scheduler: str | None = None) -> SlowFastVGenPipeline:
    """The world model to evaluate, with the sampler asked for (default: its own)."""
    pipe = SlowFastVGenPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = scheduler_from_name(scheduler, pipe.scheduler.config)
    return pipe


def next_chunk_quality(pipe: SlowFastVGenPipeline, seeds: range, steps: int = DEFAULT_STEPS,
                       guidance: float = DEFAULT_GUIDANCE) -> dict:
    """Gate 1: from a true context chunk, the next chunk for "stay" and each move (a seen and a held-out
    wording) against the truth: PSNR, SSIM and camera motion error; baselines: repeat the last frame, the
    VAE's own reconstruction."""
    chunk = pipe.context_window // 2
    rows: dict[str, dict[str, list]] = {}
    for seed in seeds:
        world = ToyWorld(seed, view_size=pipe.native_size)
        for direction in DIRECTIONS:
            truth = world.rollout(["move right", direction], chunk)[1:].astype(np.float32) / 255
            context, target = truth[:chunk], truth[chunk:]
            context_latents = pipe.encode_frames(context)
            true_motion = np.array(DIRECTIONS[direction]) * world.step
            for wording, phrase in (("seen", TRAIN_PARAPHRASES[direction][0]),
                                    ("held_out", HELD_OUT_PARAPHRASES[direction][0])):
                frames = pipe(phrase, context_latents=context_latents, num_frames=chunk, num_inference_steps=steps,
                              guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
                              output_type="np").frames[0]
                row = rows.setdefault(f"{direction}/{wording}", {})
                row.setdefault("psnr", []).append(metrics.masked_psnr(frames, target))
                row.setdefault("ssim", []).append(metrics.masked_ssim(frames, target))
                row.setdefault("motion_error_px", []).append(
                    float(np.abs(camera_motion(np.concatenate([context[-1:], frames])) - true_motion).max()))
            row = rows.setdefault(f"{direction}/baselines", {})
            row.setdefault("repeat_last_psnr", []).append(metrics.masked_psnr(np.repeat(context[-1:], chunk, 0), target))
            ceiling = pipe.postprocess(pipe.encode_frames(target), "np")[0]
            row.setdefault("vae_ceiling_psnr", []).append(metrics.masked_psnr(ceiling, target))
            row.setdefault("truth_motion_error_px", []).append(
                float(np.abs(camera_motion(np.concatenate([context[-1:], target])) - true_motion).max()))
    return {name: {k: round(float(np.mean(v)), 3 if k == "ssim" else 2) for k, v in row.items()}
            for name, row in rows.items()}


# ---------------------------------------------------------------------------------------------- existing videos


def evaluate_video(video_path: str, resnet18: str | None = None,
                   scuts_threshold: float = metrics.SCUTS_THRESHOLD) -> dict:
    """Score an MP4 from `generate` with its JSON summary: world-free metrics always; with a ToyWorld seed in
    the JSON, every revisit and drift metric against that world's truth."""
    import cv2

    summary_path = Path(video_path).with_suffix(".json")
    if not Path(video_path).is_file():
        raise ValueError(f"--video {video_path!r} does not exist.")
    if not summary_path.is_file():
        raise ValueError(f"--video {video_path!r} has no episode JSON beside it ({summary_path}); evaluate the MP4 "
                         "that `slowfast-vgen generate` wrote, with its JSON.")
    info = json.loads(summary_path.read_text(encoding="utf-8"))
    capture, frames = cv2.VideoCapture(str(video_path)), []
    while (read := capture.read())[0]:
        frames.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB).astype(np.float32) / 255)
    capture.release()
    if not frames:
        raise ValueError(f"--video {video_path!r}: OpenCV reads no frame from it.")
    video = np.stack(frames)
    if len(video) != info.get("frames"):
        raise ValueError(f"--video {video_path!r} has {len(video)} frames but its JSON says {info.get('frames')}: "
                         "they do not belong together.")
    result = {"video": str(video_path), "frames": len(video),
              "scuts": metrics.scene_cuts(video, threshold=scuts_threshold)}
    seed, chunk_frames = info.get("world_seed"), info.get("frames_per_chunk")
    if seed is None or chunk_frames is None:
        result["note"] = ("no ToyWorld seed in the JSON (a video from --image, or written before 2026-12-02): "
                          "world-free metrics only")
        return result
    world = ToyWorld(seed, view_size=video.shape[1])
    if video.shape[1:3] != (world.view_size, world.view_size):
        raise ValueError(f"--video {video_path!r} is {video.shape[2]}x{video.shape[1]}, not square ToyWorld views.")
    episode = place_path(world, "video", info["actions"], chunk_frames, world.center())
    if len(episode.positions) != len(video):
        raise ValueError(f"--video {video_path!r} has {len(video)} frames; its {len(info['actions'])} actions of "
                         f"{chunk_frames} frames make {len(episode.positions)}.")
    resnet = metrics.load_resnet18(resnet18) if resnet18 else None
    return {**result, **score_video(episode, video, episode.frames(), RevisitMap(episode), resnet, scuts_threshold)}


# ---------------------------------------------------------------------------------------------- command line


def add_evaluate_command(commands) -> None:
    parser = commands.add_parser("evaluate", help="revisit, drift and next-chunk quality of a world model",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = EvaluationOptions()
    parser.add_argument("output_dir", nargs="?", default=defaults.output_dir,
                        help="where rows, summary and plots go (default: %(default)s); an existing run resumes")
    parser.add_argument("--model", default=defaults.model, help="world model folder (default: the shipped one)")
    parser.add_argument("--episodes", type=int, default=defaults.episodes)
    parser.add_argument("--families", default=",".join(defaults.families),
                        help=f"path families, comma-separated (default: all of {', '.join(PATH_FAMILIES)})")
    parser.add_argument("--path-file", help="your own path: JSON {\"actions\": [...], \"start\": [x, y]}")
    parser.add_argument("--first-seed", type=int, default=defaults.first_seed,
                        help="held-out ToyWorld seeds from here (training uses 1..64)")
    parser.add_argument("--chunks", type=int, default=defaults.chunks, help="chunks per episode")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--guidance", type=float, default=defaults.guidance)
    parser.add_argument("--scheduler", choices=tuple(SCHEDULERS), default=None,
                        help="sampler (default: the model's own)")
    parser.add_argument("--settings", default=",".join(defaults.settings),
                        help=f"memory settings side by side, comma-separated; known: {', '.join(SETTINGS)}")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=JSON",
                        help="define a setting from TempLoRAConfig fields (and num_context_frames; "
                             "\"memory\": false for none), e.g. fast='{\"learning_rate\": 1e-3}'")
    parser.add_argument("--oracle", action="store_true", help="also the memory of the true first half (gate 2)")
    parser.add_argument("--teacher-forced", action="store_true",
                        help="also every chunk from the true previous chunk, with the memory of the true chunks so far "
                             "(memory read without drift)")
    parser.add_argument("--resnet18", help="ResNet-18 weights for SRC (folder, .safetensors or torchvision .pth)")
    parser.add_argument("--scuts-threshold", type=float, default=defaults.scuts_threshold)
    parser.add_argument("--no-strips", action="store_true", help="write no first-visit / revisit pictures")
    parser.add_argument("--next-chunk", type=int, metavar="SEEDS",
                        help="instead: next-chunk quality (gate 1) on SEEDS held-out worlds from 1000")
    parser.add_argument("--video", help="instead: score an MP4 written by `generate` (with its JSON)")
    parser.set_defaults(run=run)


def parse_custom_settings(entries: list[str]) -> dict[str, dict]:
    custom = {}
    for entry in entries:
        name, _, text = entry.partition("=")
        try:
            fields = json.loads(text)
        except ValueError as error:
            raise ValueError(f"--setting {entry!r}: expected NAME=JSON object ({error}).") from None
        if not name or not isinstance(fields, dict):
            raise ValueError(f"--setting {entry!r}: expected NAME=JSON object, e.g. fast='{{\"learning_rate\": 1e-3}}'.")
        custom[name] = fields
    return custom


def run(args: argparse.Namespace) -> int:
    try:
        if args.video:
            print(json.dumps(evaluate_video(args.video, args.resnet18, args.scuts_threshold), indent=2))
            return 0
        if args.next_chunk is not None:
            if args.next_chunk < 1:
                raise ValueError(f"--next-chunk must be at least 1 world, got {args.next_chunk}.")
            pipe = load_pipeline(args.model, args.scheduler)
            results = next_chunk_quality(pipe, range(1000, 1000 + args.next_chunk), args.steps, args.guidance)
            print(json.dumps({"model": args.model, "seeds": args.next_chunk, "steps": args.steps,
                              "scheduler": args.scheduler or type(pipe.scheduler).__name__,
                              "guidance": args.guidance, "results": results}, indent=2))
            return 0
        options = EvaluationOptions(
            output_dir=args.output_dir, model=args.model, episodes=args.episodes,
            families=tuple(f for f in args.families.split(",") if f.strip()), path_file=args.path_file,
            first_seed=args.first_seed, chunks=args.chunks, steps=args.steps, guidance=args.guidance,
            scheduler=args.scheduler,
            settings=tuple(s.strip() for s in args.settings.split(",") if s.strip()),
            custom_settings=parse_custom_settings(args.setting), oracle=args.oracle, teacher_forced=args.teacher_forced,
            resnet18=args.resnet18,
            scuts_threshold=args.scuts_threshold, strips=not args.no_strips,
        )
        summary = evaluate(options)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"slowfast-vgen evaluate: {error}") from None
    if summary is not None:
        print((Path(options.output_dir) / "summary.md").read_text(encoding="utf-8"))
    return 0
