"""Accuracy of an inverse dynamics model on true and on generated frames of ToyWorld or Memory Maze (its model
card's figures).

    python benchmarks/eval_idm.py [--idm models/toyworld-idm] [--model models/toyworld] [--json out.json]
    python benchmarks/eval_idm.py --world memory-maze        # models/memory-maze-idm on mazes 2000-2019 and 2000-2009

True frames: 50 consecutive pairs in each of 20 held-out worlds (ToyWorld 1000-1019, Memory Maze 2000-2019),
every action equally often (in the maze: from a cell centre facing along an axis, a few quarter cells walked
and a few frames turned, where a way out of whole-chunk motions passes; a walk a wall would stop is drawn
again). Generated frames: from a true context chunk in each of 10 held-out worlds (ToyWorld: standing
still; the maze: walking forward into a cell from which every action can play a chunk), the world model
generates a chunk for each action; the inverse dynamics model reads each generated frame against the one
before, and a read counts as right when it names the action the chunk was generated for.
"""

from __future__ import annotations

import argparse
import json
import time

from slowfast_vgen.data.worlds import WORLDS
from slowfast_vgen.pipelines import SlowFastVGenPipeline
from slowfast_vgen.pipelines.inverse_dynamics import InverseDynamicsModel
from slowfast_vgen.planning.evaluate import idm_accuracy_generated, idm_accuracy_true


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", choices=tuple(WORLDS), default="toyworld")
    parser.add_argument("--idm", default=None, help="default: the world's shipped inverse dynamics model")
    parser.add_argument("--model", nargs="+", default=None,
                        help="world models to generate with (default: the world's shipped world model)")
    parser.add_argument("--first-seed", type=int, default=None,
                        help="first held-out world (default: 1000 in ToyWorld, 2000 in Memory Maze)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    kind = WORLDS[args.world]
    idm_dir = args.idm or str(kind.planning.idm_dir)
    models = args.model or [str(kind.model_dir)]
    first = args.first_seed if args.first_seed is not None else (1000 if args.world == "toyworld" else 2000)
    idm = InverseDynamicsModel.from_pretrained(idm_dir).eval()
    started = time.time()
    results = {"world": args.world, "idm": idm_dir,
               "true_frames": idm_accuracy_true(idm, range(first, first + 20), world=args.world)}
    for model in models:
        pipe = SlowFastVGenPipeline.from_pretrained(model)
        pipe.set_progress_bar_config(disable=True)
        results[f"generated_frames:{model}"] = idm_accuracy_generated(pipe, idm, range(first, first + 10),
                                                                      world=args.world)
    results["seconds"] = round(time.time() - started, 1)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
