"""An evaluation run (`evaluate`): every planned episode, every memory setting, through the protocols, scored
and appended to the run's rows; the summary and reports at the end. And `evaluate_video`: the same scores
for an MP4 that `generate` wrote.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.episodes import RevisitMap, place_path
from ..data.toyworld import ToyWorld
from ..data.worlds import world_kind
from ..video_files import read_video
from . import metrics
from .options import EvaluationOptions
from .protocols import decode, load_pipeline, oracle_revisit, run_setting, teacher_forced_revisit
from .report import summarize, write_reports, write_revisit_strip
from .runs import append_row, episode_key, read_rows, start_run
from .scoring import scene_revisit_consistency, score_video, src_pairs


def evaluate(options: EvaluationOptions) -> dict | None:
    """Run (or resume) the evaluation; returns the summary on the main process, None on the others."""
    options.check()
    output_dir = Path(options.output_dir)
    pipe = load_pipeline(options.model, options.scheduler)  # a model that cannot load leaves no run folder
    state, done_rows = start_run(output_dir, options.identity())
    pipe.to(state.device)
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


def evaluate_episode(pipe, episode, options: EvaluationOptions,
                     resnet=None, strip_path: Path | None = None) -> dict:
    """One row of the JSONL: the episode and every setting's metrics."""
    started = time.perf_counter()
    truth = episode.frames()
    revisits = world_kind(options.world).revisits(episode)
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


def evaluate_video(video_path: str, resnet18: str | None = None,
                   scuts_threshold: float = metrics.SCUTS_THRESHOLD) -> dict:
    """Score an MP4 from `generate` with its JSON summary: world-free metrics always; with a ToyWorld seed in
    the JSON, every revisit and drift metric against that world's truth."""
    summary_path = Path(video_path).with_suffix(".json")
    if not Path(video_path).is_file():
        raise ValueError(f"--video {video_path!r} does not exist.")
    if not summary_path.is_file():
        raise ValueError(f"--video {video_path!r} has no episode JSON beside it ({summary_path}); evaluate the MP4 "
                         "that `slowfast-vgen generate` wrote, with its JSON.")
    try:
        info = json.loads(summary_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--video {video_path!r}: its episode JSON {summary_path} is not valid JSON "
                         f"({error}).") from None
    if not isinstance(info, dict):
        raise ValueError(f"--video {video_path!r}: its episode JSON {summary_path} holds a {type(info).__name__}, not "
                         "the object `slowfast-vgen generate` writes.")
    frames = read_video(video_path)
    if not len(frames):
        raise ValueError(f"--video {video_path!r}: OpenCV reads no frame from it.")
    video = frames.astype(np.float32) / 255
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
