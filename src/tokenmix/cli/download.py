"""Download official weights into the cache, verified, resuming interrupted downloads.

Names are ``arch`` (its default weights), ``arch.tag``, or shell patterns over ``arch.tag``
(``tokenmix models --pretrained`` lists them). Files go to ``$TOKENMIX_HOME/weights`` (default
``~/.cache/tokenmix/weights``) under their official names; ``TOKENMIX_WEIGHTS_BASE_URL`` fetches
them from a mirror instead. Each line printed is: name, path, size, SHA-256. The SHA-256 of the
first download is a pin: a later download that differs is refused unless ``--refresh`` is given.

Examples:
  tokenmix download dfformer_s18
  tokenmix download lvvit_s.tl_in1k_384 'caformer_s18.*'
  TOKENMIX_HOME=/shared/cache tokenmix download --all
  tokenmix download --refresh dfformer_s18   # the upstream file was replaced
"""

from __future__ import annotations

import argparse
import sys

HELP = "download official pretrained weights into the cache"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME[.TAG]", help="weights, e.g. lvvit_s.tl_in1k")
    p.add_argument("--all", action="store_true", help="every published weight file")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="download again and accept a file whose SHA-256 differs from the recorded one "
        "(the upstream file was replaced)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def expand_names(patterns: list[str]) -> list[str]:
    """Names and shell patterns -> weight names, in order, without duplicates."""
    from tokenmix.models import list_models

    names: list[str] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matched = list_models(pattern, pretrained=True)
            if not matched:
                raise ValueError(f"no published weights match {pattern!r}")
        else:
            matched = [pattern]
        names += [n for n in matched if n not in names]
    return names


def run(args: argparse.Namespace) -> int:
    from tokenmix.models import list_models
    from tokenmix.models.hub import WeightsError, cache_record, download_weights

    if args.all:
        names = list_models(pretrained=True)
    elif args.names:
        names = expand_names(args.names)
    else:
        raise ValueError(
            "name the weights to download (or --all); see tokenmix models --pretrained"
        )
    failed = []
    for name in names:
        try:
            path = download_weights(
                name, force=args.force, refresh=args.refresh, progress=not args.no_progress
            )
        except WeightsError as e:
            print(f"error: {e}", file=sys.stderr)
            failed.append(name)
            continue
        record = cache_record(name) or {}
        size_mb = path.stat().st_size / 2**20
        print(f"{name}\t{path}\t{size_mb:.1f} MiB\tsha256 {record.get('sha256')}", flush=True)
    if failed:
        print(f"{len(failed)} of {len(names)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
