"""`slowfast-vgen` command line: generate (the main job), train (slow learning), evaluate, memory and model tools."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slowfast-vgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    from .evaluation.evaluate import add_evaluate_command
    from .generate import add_generate_command
    from .training.train import add_train_command
    from .weights_tools.cli import add_weights_commands

    add_generate_command(commands)
    add_train_command(commands)
    add_evaluate_command(commands)
    add_weights_commands(commands)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
