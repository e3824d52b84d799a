"""`slowfast-vgen` command line: generate (the main job), train (slow learning), evaluate, plan, play (a live
page), memory and model tools.

Exit status: 0 done; 1 a "no" answer (`memory check`: does not fit); 2 an error, reported in one line
naming what was wrong and how to fix it (argparse's own errors included); 128 + N stopped by signal N,
with what was made so far kept (`generate`). `--debug` shows the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import signal
import sys

EXIT_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse's errors in one line, `slowfast-vgen <command>: <message> (see ... --help)`, instead of the
    whole usage block (the subcommands' parsers are of this class too)."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="slowfast-vgen", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    commands = parser.add_subparsers(dest="command", required=True)
    from .evaluation.evaluate import add_evaluate_command
    from .generate import add_generate_command
    from .planning.cli import add_plan_commands
    from .play.command import add_play_command
    from .training.train import add_train_command
    from .weights_tools.cli import add_weights_commands

    add_generate_command(commands)
    add_train_command(commands)
    add_evaluate_command(commands)
    add_plan_commands(commands)
    add_play_command(commands)
    add_weights_commands(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except SystemExit as stop:
        if isinstance(stop.code, str):  # a user's mistake, already explained in one line
            print(f"slowfast-vgen {args.command}: {stop.code}", file=sys.stderr)
            return EXIT_ERROR
        raise
    except KeyboardInterrupt:
        print(f"\nslowfast-vgen {args.command}: interrupted.", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as error:  # noqa: BLE001 - a bug: one line by default, the traceback with --debug
        if args.debug:
            raise
        print(f"slowfast-vgen {args.command}: unexpected error {type(error).__name__}: {error}\n"
              "This is a bug, not something you did wrong: rerun with `slowfast-vgen --debug ...` for the "
              "traceback, and report it.", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
