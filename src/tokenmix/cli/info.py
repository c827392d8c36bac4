"""Show what this machine can run and which kernel every layer type chose.

Prints the detected capabilities (CPU model and capability level, bf16/AMX units, MKL and
oneDNN, each special kernel proved by a tiny call, CUDA and its bf16 support), what
``amp: auto`` resolves to, the kernel thresholds used for this CPU class, the kernels that
cannot run here, and each layer type's kernel choices in the named models.

Examples:
  tokenmix info
  tokenmix info --models lvvit_s caformer_s18
  TOKENMIX_KERNELS=plain tokenmix info      # plain F.* ops everywhere
"""

from __future__ import annotations

import argparse

HELP = "machine capabilities and each layer type's kernel choice"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="models whose layer choices to show (default: dfformer_s18 cdfformer_s18 "
        "caformer_s18 lvvit_s)",
    )
    p.add_argument("--brief", action="store_true", help="one line: CPU, capability, bf16 units")


def run(args: argparse.Namespace) -> int:
    import torch

    from tokenmix import kernels

    if args.brief:
        print(kernels.summary_line())
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(kernels.explain(tuple(args.models or ())))
    return 0
