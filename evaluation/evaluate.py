"""`slowfast-vgen evaluate`'s names, where they have always been imported from.

The evaluation lives in one module per idea: `options` (the run's settings and the named memory settings),
`protocols` (how the scored videos are made: the real loop, teacher-forced, oracle, next-chunk quality),
`scoring` (the metrics of one episode), `report` (summary, tables, plots, strips), `runs` (resumable rows,
shared with `plan-eval`), `runner` (`evaluate`, `evaluate_video`) and `cli` (the command line).
"""

from __future__ import annotations

from .cli import add_evaluate_command, parse_custom_settings, run
from .options import BASELINE, SETTINGS, EvaluationOptions, describe_setting
from .protocols import (camera_motion, decode, load_pipeline, next_chunk_quality, oracle_revisit, run_setting,
                        teacher_forced_revisit, true_latents)
from .report import (GAINS, SCALARS, STRIP_ZOOM, best_and_worst_strips, fmt, per_chunk_mean, spread, summarize,
                     summary_markdown, write_image, write_plots, write_reports, write_revisit_strip)
from .runner import evaluate, evaluate_episode, evaluate_video
from .runs import append_row, claim_run_folder, episode_key, read_rows, start_run
from .scoring import SRC_MIN_OVERLAP, scene_revisit_consistency, score_video, src_pairs

__all__ = [
    "BASELINE", "GAINS", "SCALARS", "SETTINGS", "SRC_MIN_OVERLAP", "STRIP_ZOOM", "EvaluationOptions",
    "add_evaluate_command", "append_row", "best_and_worst_strips", "camera_motion", "claim_run_folder", "decode",
    "describe_setting", "episode_key", "evaluate", "evaluate_episode", "evaluate_video", "fmt", "load_pipeline",
    "next_chunk_quality", "oracle_revisit", "parse_custom_settings", "per_chunk_mean", "read_rows", "run",
    "run_setting", "scene_revisit_consistency", "score_video", "spread", "src_pairs", "start_run", "summarize",
    "summary_markdown", "teacher_forced_revisit", "true_latents", "write_image", "write_plots", "write_reports",
    "write_revisit_strip",
]
