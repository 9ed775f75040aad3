"""``ltrsearch COMMAND [ARGS...]``: one command for the project's tools.

Each subcommand hands its arguments to an existing script's ``main(argv)`` (the
``ltrsearch-*`` commands run the same functions), imported only when chosen: ``ltrsearch
serve --help`` does not load the training code. ``ltrsearch COMMAND --help`` shows that
command's options.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from search.version import package_version

# subcommand -> (module with main(argv), one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "reindex": ("scripts.reindex", "build a new index version and swap it in (or roll back)"),
    "train": ("scripts.train", "train a ranking model from judgments or logged clicks"),
    "serve": ("scripts.serve", "run the search API (--workers N for several processes)"),
    "drift": ("scripts.drift_report", "write a drift report of the served traffic"),
    "evaluate": ("scripts.evaluate", "evaluate retrieval and ranking offline"),
    "demo": ("scripts.demo", "build a demo catalog, train, serve and show a search"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ltrsearch",
        description="Hybrid search with a learning-to-rank model: index, train, serve, monitor.",
        epilog="commands:\n"
        + "".join(f"  {name:<9} {text}\n" for name, (_, text) in COMMANDS.items())
        + "\nRun 'ltrsearch COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ltrsearch {package_version()}")
    p.add_argument(
        "command",
        choices=list(COMMANDS),
        metavar="COMMAND",
        help="one of: " + ", ".join(COMMANDS),
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(list(args.args)) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
