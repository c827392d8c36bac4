"""List registered models with parameters, GMACs (FFTs included) and default input size.

With --pretrained, list the published weights instead (one line per ``arch.tag``): the
authors' top-1 on ImageNet-1k val, the eval crop fraction, and where the file is cached
("-" when it is not). ``tokenmix download NAME.TAG`` fetches one.

Examples:
  tokenmix models
  tokenmix models 'dfformer_*' --res 384
  tokenmix models --pretrained 'lvvit_*' --no-macs
"""

from __future__ import annotations

import argparse

import torch

HELP = "list models: params, GMACs (FFTs counted), input size; --pretrained: weights"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'caformer_*'")
    p.add_argument("--res", type=int, default=None, help="count GMACs at this input size")
    p.add_argument("--no-macs", action="store_true", help="skip the GMACs column (faster)")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="list published weights (arch.tag): top-1, crop, cached file",
    )


def run(args: argparse.Namespace) -> int:
    from tokenmix.bench.flops import count_macs
    from tokenmix.models import create_model, list_models

    if args.pretrained:
        from tokenmix.models.hub import cache_dir, cached_path

        pattern = args.pattern if "." in args.pattern else f"{args.pattern}.*"
        names = list_models(pattern, pretrained=True)
        print(f"weights cache: {cache_dir()}")
    else:
        names = list_models(args.pattern)
    if not names:
        what = "published weights" if args.pretrained else "model"
        raise ValueError(f"no {what} match {args.pattern!r}")
    width = max(18, *(len(n) for n in names))
    header = f"{'model':<{width}} {'params (M)':>10} {'GMACs':>8} {'input':>12}"
    if args.pretrained:
        header += f" {'top-1':>6} {'crop':>5}  cached"
    print(header)
    for name in names:
        kwargs = {"img_size": args.res} if args.res else {}
        with torch.device("meta"):
            model = create_model(name, **kwargs)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        size = model.pretrained_cfg.input_size
        macs = "-" if args.no_macs else f"{count_macs(model, size) / 1e9:.2f}"
        line = f"{name:<{width}} {params:>10.2f} {macs:>8} {'x'.join(map(str, size)):>12}"
        if args.pretrained:
            cfg = model.pretrained_cfg
            top1 = "-" if cfg.top1 is None else f"{cfg.top1:.1f}"
            cached = cached_path(name)
            line += f" {top1:>6} {cfg.crop_pct:>5.2f}  {cached or '-'}"
        print(line)
    return 0
