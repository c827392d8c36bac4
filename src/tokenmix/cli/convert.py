"""Convert a checkpoint into a safetensors file in tokenmix's (= the official PyTorch) layout.

SRC may be an official PyTorch checkpoint (.pth/.pth.tar/.pt), a Paddle state_dict
(.pdparams, read without Paddle through an allow-list unpickler) or a safetensors file. It is
loaded strictly into MODEL, with foreign layouts converted and resolution-dependent weights
(position embeddings, frequency filters) resized to --img-size, and the model's state_dict is
written to DST. The result loads with `create_model(MODEL, pretrained=DST)`.

Examples:
  tokenmix convert lvvit_s.pdparams lvvit_s.safetensors --model lvvit_s
  tokenmix convert dfformer_s18.pdparams dfformer_s18_384.safetensors --model dfformer_s18 --img-size 384
  tokenmix convert my_run.pth my_run.safetensors --model lvvit_t --num-classes 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "convert a .pth / .pdparams checkpoint to safetensors for a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, help="checkpoint to convert")
    p.add_argument("dst", type=Path, help="output file (.safetensors)")
    p.add_argument("--model", required=True, help="architecture the checkpoint is for")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the checkpoint")
    p.add_argument("--img-size", type=int, default=None, help="resolution to convert to")
    p.add_argument("--use-ema", action="store_true", help="take the EMA weights if present")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")


def run(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    import tokenmix
    from tokenmix.models import create_model, load_weights
    from tokenmix.models.checkpoint import checkpoint_format
    from tokenmix.utils import atomic_write, sha256_file

    if args.dst.suffix != ".safetensors":
        raise ValueError(f"{args.dst}: the output must be a .safetensors file")
    if args.dst.exists() and not args.force:
        raise ValueError(f"{args.dst} exists; pass --force to overwrite it")
    if not args.src.is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.src}")

    model = create_model(args.model, num_classes=args.num_classes, img_size=args.img_size)
    report = load_weights(model, args.src, use_ema=args.use_ema)
    if report.reinitialized:
        raise ValueError(
            f"{args.src}: the classifier ({', '.join(report.reinitialized)}) is for another "
            f"number of classes than {model.num_classes}; pass --num-classes"
        )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    height, width = model.pretrained_cfg.input_size[1:]
    metadata = {
        "model": args.model,
        "num_classes": str(model.num_classes),
        "img_size": f"{height}x{width}",
        "source": args.src.name,
        "source_format": checkpoint_format(args.src),
        "source_sha256": sha256_file(args.src),
        "converted_by": f"tokenmix {tokenmix.__version__}",
    }
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.dst, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    print(
        f"{args.src} ({metadata['source_format']}) -> {args.dst}: {len(state)} tensors, "
        f"{args.model} at {metadata['img_size']}, {model.num_classes} classes"
    )
    return 0
