"""What an evaluation run reports: the summary over episodes (mean ± std per setting and path family, and
each memory setting's gain over no memory, paired by episode), `summary.json`, `summary.md`, the plots and
the first-visit / revisit strips."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from ..pipelines.atomic_files import write_text_atomically
from . import metrics
from .options import BASELINE, EvaluationOptions, describe_setting

WORLD_TITLES = {"toyworld": "ToyWorld", "memory-maze": "Memory Maze"}
STRIP_ZOOM = 3  # ToyWorld's 64-pixel views, drawn 3 times larger in the pictures


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
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
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


def print_json(result: dict, output: str | os.PathLike | None = None) -> None:
    """A command's result as JSON on stdout and, where `output` names a file, there too (atomically)."""
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        write_text_atomically(output, text)


def fmt(entry: dict | None, digits: int = 2) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def summary_markdown(summary: dict, options: EvaluationOptions, plots: list[str], strips: list[str]) -> str:
    lines = [f"# Evaluation of {options.model}", "",
             f"{summary['episodes']} held-out episodes ({WORLD_TITLES.get(options.world, options.world)} seeds from "
             f"{options.first_seed}), {options.chunks} "
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


# ---------------------------------------------------------------------------------------------- strips


def write_revisit_strip(path: Path, episode, revisits, truth: np.ndarray,
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
