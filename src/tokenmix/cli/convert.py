"""Convert a checkpoint into a safetensors file in tokenmix's (= the official PyTorch) layout.

SRC may be an official PyTorch checkpoint (.pth/.pth.tar/.pt), a Paddle state_dict
(.pdparams, read without Paddle through an allow-list unpickler), a safetensors file, or a
tokenmix run folder or step checkpoint. It is loaded strictly into the model, with foreign
layouts converted and resolution-dependent weights (position embeddings, frequency filters)
resized to --img-size, and the model's state_dict is written to DST. The result loads with
`create_model(MODEL, pretrained=DST)`.

A tokenmix run (folder, step_* folder or its .safetensors) names its architecture, training
resolution and classes itself: --model is not needed, and DST keeps the run's config and class
names, so `tokenmix eval/predict/export --checkpoint DST` read them as from the run.

Examples:
  tokenmix convert lvvit_s.pdparams lvvit_s.safetensors --model lvvit_s
  tokenmix convert dfformer_s18.pdparams dfformer_s18_384.safetensors --model dfformer_s18 --img-size 384
  tokenmix convert my_run.pth my_run.safetensors --model lvvit_t --num-classes 10
  tokenmix convert runs/digits_demo digits_demo.safetensors --use-ema
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "convert a .pth / .pdparams checkpoint to safetensors for a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, help="checkpoint to convert (file, run or step folder)")
    p.add_argument("dst", type=Path, help="output file (.safetensors)")
    p.add_argument(
        "--model", help="architecture the checkpoint is for (read from a tokenmix checkpoint)"
    )
    p.add_argument("--num-classes", type=int, default=None, help="classes of the checkpoint")
    p.add_argument("--img-size", type=int, default=None, help="resolution to convert to")
    p.add_argument("--use-ema", action="store_true", help="take the EMA weights if present")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")


def run(args: argparse.Namespace) -> int:
    import json

    from safetensors.torch import save_file

    import tokenmix
    from tokenmix.config import to_dict
    from tokenmix.engine.predict import load_for_inference
    from tokenmix.models.checkpoint import checkpoint_format
    from tokenmix.utils import atomic_write, sha256_file

    if args.dst.suffix != ".safetensors":
        raise ValueError(f"{args.dst}: the output must be a .safetensors file")
    if args.dst.exists() and not args.force:
        raise ValueError(f"{args.dst} exists; pass --force to overwrite it")
    if not args.src.exists():
        raise FileNotFoundError(f"checkpoint not found: {args.src}")

    loaded = load_for_inference(
        args.src,
        args.model,
        num_classes=args.num_classes,
        img_size=args.img_size,
        use_ema=args.use_ema,
    )
    model, source = loaded.model, Path(loaded.source)
    if loaded.classes is not None and args.num_classes not in (None, len(loaded.classes)):
        raise ValueError(
            f"--num-classes {args.num_classes}: {source} was trained for "
            f"{len(loaded.classes)} classes (leave --num-classes out)"
        )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    height, width = model.pretrained_cfg.input_size[1:]
    metadata = {
        "model": str(loaded.name),
        "num_classes": str(model.num_classes),
        "img_size": f"{height}x{width}",
        "source": source.name,
        "source_format": checkpoint_format(source),
        "source_sha256": sha256_file(source),
        "converted_by": f"tokenmix {tokenmix.__version__}",
    }
    if loaded.config is not None and loaded.classes is not None:
        # still a tokenmix checkpoint: its config (model.img_size now the converted size) and
        # class names let eval / predict / export rebuild the model without --model
        metadata["config"] = json.dumps(to_dict(loaded.config))
        metadata["classes"] = json.dumps(loaded.classes)
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.dst, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    print(
        f"{source} ({metadata['source_format']}) -> {args.dst}: {len(state)} tensors, "
        f"{loaded.name} at {metadata['img_size']}, {model.num_classes} classes"
    )
    return 0
