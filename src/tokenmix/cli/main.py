"""``tokenmix`` entry point. Each sub-command lives in its own module under ``tokenmix.cli``.

A command module provides ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Add new commands to ``COMMANDS``.

Errors a user can fix (bad values, missing files, a missing optional extra) print one line,
``tokenmix COMMAND: error: ...``, and exit with 2; ``-v`` shows the traceback instead. The
library's errors speak Python (``pretrained='/path'``); :func:`cli_wording` rewrites those
phrases into the flags that do the same here (``--checkpoint /path``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
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
    parser.add_argument("--version", action="version", version=_version())
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


def _version() -> str:
    import platform

    import torch

    from tokenmix import __version__

    return f"tokenmix {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


# The library's Python-API phrasing -> the flag that does the same on the command line; the
# train command sets weights through its config (`--set model.pretrained=PATH`), not a flag.
_CLI_WORDING = [
    (
        r"pass pretrained='([^']*)' instead of pretrained=True",
        r"pass --checkpoint \1 instead of the published weights",
        r"pass --set model.pretrained=\1 instead of model.pretrained=true",
    ),
    (
        r"pass pretrained='([^']*)' to create_model",
        r"pass --checkpoint \1",
        r"pass --set model.pretrained=\1",
    ),
    (r"(?<![\w.])pretrained='([^']*)'", r"--checkpoint \1", r"model.pretrained=\1"),
    (r"(?<![\w.])pretrained=True\b", "--pretrained", "model.pretrained=true"),
]


def cli_wording(message: str, command: str | None = None) -> str:
    """``message`` with the library's keyword-argument advice turned into what ``command``
    takes (its flags; for ``train``, config keys)."""
    for pattern, flag, config_key in _CLI_WORDING:
        message = re.sub(pattern, config_key if command == "train" else flag, message)
    return message


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
    except (ValueError, OSError, RuntimeError, ImportError) as e:
        # OSError: unreadable or unwritable files (FileNotFoundError, PermissionError, a full
        # disk); ImportError: an optional extra that is not installed (the message names it)
        if args.verbose:
            raise
        print(
            f"tokenmix {args.command}: error: {cli_wording(str(e), args.command)}", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
