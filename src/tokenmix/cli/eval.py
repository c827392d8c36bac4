"""Evaluate a checkpoint: top-1/top-5, loss, per-class accuracy and a confusion-matrix image.

The eval transform comes from the model's pretrained cfg (resize by 1/crop_pct, centre crop,
interpolation, mean/std), each overridable. --checkpoint takes a tokenmix run folder, a step
checkpoint or a weights file (the architecture and class names are read from it), or a foreign
checkpoint (official .pth, Paddle .pdparams) with --model; without --checkpoint the model's
published weights are used.

Examples:
  tokenmix eval --checkpoint runs/digits_demo --data digits
  tokenmix eval --model dfformer_s18 --data /data/imagenet --split val
  tokenmix eval --model convformer_s18 --checkpoint convformer_s18.pth --data /data/imagenet --crop-pct 1.0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "evaluate a checkpoint: top-1/5, loss, per-class accuracy, confusion matrix"


def _pixels(text: str) -> int:
    """A shift in whole pixels, >= 0: refused when parsing, before any model is loaded."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 pixels, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="architecture (needed for foreign checkpoints)")
    p.add_argument("--checkpoint", help="run folder, step checkpoint or weights file")
    p.add_argument(
        "--data", required=True, help="dataset spec: folder, CIFAR-10 archive, list file, digits"
    )
    p.add_argument(
        "--split",
        default="val",
        choices=("train", "val", "test"),
        help="dataset split (val falls back to a validation/ or test/ folder)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="loader processes")
    p.add_argument(
        "--limit", type=int, default=None, help="evaluate a fixed subset of this many images"
    )
    p.add_argument("--img-size", type=int, default=None, help="override the input size")
    p.add_argument("--crop-pct", type=float, default=None, help="override the centre-crop fraction")
    p.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"), default=None)
    p.add_argument("--mean", type=float, nargs=3, default=None)
    p.add_argument("--std", type=float, nargs=3, default=None)
    p.add_argument(
        "--hflip",
        action="store_true",
        help="test-time flip: average the logits of each image and its mirror (2x compute)",
    )
    p.add_argument(
        "--shift",
        type=_pixels,
        default=0,
        metavar="PX",
        help="test-time shift: also average over the image moved PX pixels left, right, up and"
        " down, edges replicated (5x compute; with --hflip each view mirrored too)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--amp",
        choices=("auto", "none", "bf16", "fp16"),
        default="none",
        help="autocast: auto = bf16 where the device has bf16 units, else float32; bf16 without"
        " them warns and runs float32",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: beside the checkpoint)"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from tokenmix.data.datasets import open_dataset
    from tokenmix.data.loader import build_loader
    from tokenmix.engine.build import limit
    from tokenmix.engine.distributed import resolve_device
    from tokenmix.engine.evaluate import evaluate
    from tokenmix.engine.predict import eval_preprocessing, load_for_inference
    from tokenmix.engine.train import autocast_context
    from tokenmix.viz.plots import plot_confusion

    device = resolve_device(args.device)
    dataset = open_dataset(args.data, args.split)
    loaded = load_for_inference(
        args.checkpoint, args.model, num_classes=len(dataset.classes), device=device
    )
    model, classes = loaded.model, loaded.classes or dataset.classes
    if len(classes) != len(dataset.classes):
        raise ValueError(
            f"the model predicts {len(classes)} classes, {args.data} has {len(dataset.classes)}"
        )
    if loaded.classes is not None and loaded.classes != dataset.classes:
        raise ValueError(
            f"{args.data} names its classes differently from the checkpoint's: {dataset.classes[:5]}..."
        )
    dataset.transform, normalize = eval_preprocessing(
        loaded,
        img_size=args.img_size,
        crop_pct=args.crop_pct,
        interpolation=args.interpolation,
        mean=tuple(args.mean) if args.mean else None,
        std=tuple(args.std) if args.std else None,
    ).transforms()
    dataset = limit(dataset, args.limit, seed=0)
    loader = build_loader(
        dataset, batch_size=args.batch_size, train=False, num_workers=args.workers
    )
    loader.set_epoch(0)
    result = evaluate(
        model,
        ((x, y) for x, y, _ in loader),
        num_classes=len(classes),
        device=device,
        prepare=normalize.to(device),
        autocast=autocast_context(device, args.amp),
        total=len(dataset),
        progress=True,
        hflip=args.hflip,
        shift=args.shift,
    )
    print(f"{loaded.source} on {args.data} [{args.split}], {result.num_samples} images")
    print(f"top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  loss {result.loss:.4f}")
    per_class = dict(zip(classes, result.per_class_accuracy, strict=True))
    worst = sorted(per_class.items(), key=lambda kv: kv[1])[:10]
    print("lowest per-class accuracy: " + ", ".join(f"{k} {v:.1f}%" for k, v in worst))

    out = args.out or _default_out(loaded.source, args.data, args.split)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "checkpoint": loaded.source,
        "data": args.data,
        "split": args.split,
        "num_samples": result.num_samples,
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        "per_class_accuracy": per_class,
    }
    (out / "eval.json").write_text(json.dumps(record, indent=2, allow_nan=True))
    torch.save(result.confusion, out / "confusion.pt")
    image = plot_confusion(result.confusion, classes, out / "confusion.png")
    print(f"wrote {out / 'eval.json'} and {image}")
    return 0


def _default_out(source: str, data: str, split: str) -> Path:
    """``<run>/eval/<data>-<split>`` for a training run's weights, else ``eval/<name>-...``."""
    tag = f"{Path(data).name or data}-{split}"
    path = Path(source)
    if path.parent.name == "checkpoints" or path.parent.parent.name == "checkpoints":
        run_dir = (
            path.parent.parent if path.parent.name == "checkpoints" else path.parent.parent.parent
        )
        return run_dir / "eval" / tag
    return Path("eval") / f"{path.stem}-{tag}"
