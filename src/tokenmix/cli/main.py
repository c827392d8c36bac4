"""``tokenmix`` entry point. Each sub-command lives in its own module under ``tokenmix.cli``.

A command module provides ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Add new commands to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = [
    "info",
    "models",
    "download",
    "convert",
    "relabel",
    "train",
    "eval",
    "predict",
    "plot",
    "bench",
    "export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmix",
        description="DFFormer/CDFFormer, MetaFormer baselines and LV-ViT with Token Labeling.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"tokenmix.cli.{name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        if args.verbose:
            raise
        print(f"tokenmix {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
