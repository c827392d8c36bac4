"""List registered models with parameters, GMACs (FFTs included) and default input size.

Examples:
  tokenmix models
  tokenmix models 'dfformer_*' --res 384
"""

from __future__ import annotations

import argparse

import torch

HELP = "list models: params, GMACs (FFTs counted), input size"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'caformer_*'")
    p.add_argument("--res", type=int, default=None, help="count GMACs at this input size")
    p.add_argument("--no-macs", action="store_true", help="skip the GMACs column (faster)")


def run(args: argparse.Namespace) -> int:
    from tokenmix.bench.flops import count_macs
    from tokenmix.models import create_model, list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}")
    print(f"{'model':<18} {'params (M)':>10} {'GMACs':>8} {'input':>12}")
    for name in names:
        kwargs = {"img_size": args.res} if args.res else {}
        with torch.device("meta"):
            model = create_model(name, **kwargs)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        size = model.pretrained_cfg.input_size
        macs = "-" if args.no_macs else f"{count_macs(model, size) / 1e9:.2f}"
        print(f"{name:<18} {params:>10.2f} {macs:>8} {'x'.join(map(str, size)):>12}")
    return 0
