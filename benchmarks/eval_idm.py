"""Accuracy of an inverse dynamics model on true and on generated ToyWorld frames (its model card's figures).

    python benchmarks/eval_idm.py [--idm models/toyworld-idm] [--model models/toyworld] [--json out.json]

True frames: 50 consecutive pairs in each of the held-out worlds 1000-1019, every direction and stay equally
often. Generated frames: from a true context chunk in each of the held-out worlds 1000-1009, the world model
generates a chunk for each action; the inverse dynamics model reads each generated frame against the one
before, and a read counts as right when it names the action the chunk was generated for.
"""

from __future__ import annotations

import argparse
import json
import time

from slowfast_vgen.paths import DEFAULT_IDM_DIR, DEFAULT_MODEL_DIR
from slowfast_vgen.pipelines import SlowFastVGenPipeline
from slowfast_vgen.pipelines.inverse_dynamics import InverseDynamicsModel
from slowfast_vgen.planning.evaluate import idm_accuracy_generated, idm_accuracy_true


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idm", default=str(DEFAULT_IDM_DIR))
    parser.add_argument("--model", nargs="+", default=[str(DEFAULT_MODEL_DIR)], help="world models to generate with")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    idm = InverseDynamicsModel.from_pretrained(args.idm).eval()
    started = time.time()
    results = {"idm": args.idm, "true_frames": idm_accuracy_true(idm)}
    for model in args.model:
        pipe = SlowFastVGenPipeline.from_pretrained(model)
        pipe.set_progress_bar_config(disable=True)
        results[f"generated_frames:{model}"] = idm_accuracy_generated(pipe, idm)
    results["seconds"] = round(time.time() - started, 1)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
