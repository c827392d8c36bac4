"""Export a model to ONNX (dynamo exporter, FFTs as DFT) or a torch.export archive (.pt2).

--checkpoint takes a tokenmix run folder, a step checkpoint or a weights file: the
architecture, its overrides, the resolution it was trained at and the class names are read
from it, so --model is not needed. A foreign checkpoint (official .pth, Paddle .pdparams) needs
--model (and --num-classes when its classifier is not the model's default). --res exports at
another resolution (the resolution-dependent weights are resized).

The exported program is run on a random batch and compared with PyTorch (onnxruntime for
ONNX); a difference above --atol is an error. --fft matmul writes the FFT mixers' transforms
as DFT-matrix products: the same function, and ~10x faster than onnxruntime's DFT on CPU. The
fast path is exported (the official-order reference path uses a complex einsum, which no
exporter handles). The file carries the class names and the expected preprocessing (input
size, mean, std, interpolation, crop fraction: the training run's) as metadata. ONNX needs
`pip install 'tokenmix[export]'`.

Examples:
  tokenmix export --checkpoint runs/digits_demo --out digits.onnx
  tokenmix export --model dfformer_s18 --checkpoint weights.pth --format onnx --out dfformer_s18.onnx
  tokenmix export --model cdfformer_s18 --pretrained --res 384 --format onnx --out m.onnx --dynamic-batch
  tokenmix export --model dfformer_s18 --pretrained --fft matmul --out dfformer_s18.onnx
  tokenmix export --model lvvit_s --format pt2 --out lvvit_s.pt2
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "export a model to ONNX or a torch.export .pt2 archive (checked against PyTorch)"

log = logging.getLogger("tokenmix")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="architecture, e.g. dfformer_s18 (read from a tokenmix checkpoint; needed otherwise)",
    )
    weights = p.add_mutually_exclusive_group()
    weights.add_argument(
        "--checkpoint",
        type=Path,
        help="run folder, step checkpoint or weights file (.safetensors/.pth/.pdparams)",
    )
    weights.add_argument("--pretrained", action="store_true", help="the tag's official weights")
    p.add_argument("--use-ema", action="store_true", help="export the EMA weights of the run")
    p.add_argument("--format", choices=("onnx", "pt2"), default="onnx")
    p.add_argument("--out", type=Path, required=True, help="file to write")
    p.add_argument(
        "--res",
        type=int,
        default=None,
        help="input resolution (default: the checkpoint's training size, else the model's)",
    )
    p.add_argument(
        "--num-classes", type=int, default=None, help="classifier size of a foreign checkpoint"
    )
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension")
    p.add_argument(
        "--opset", type=int, default=None, help="ONNX opset (>= 17; default: exporter's)"
    )
    p.add_argument(
        "--fft",
        choices=("dft", "matmul"),
        default="dft",
        help="FFT mixers: ONNX DFT nodes, or DFT matrices (same function, much faster in "
        "onnxruntime on CPU)",
    )
    p.add_argument("--atol", type=float, default=1e-4, help="max abs difference to PyTorch")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tokenmix.engine.predict import eval_preprocessing, load_for_inference
    from tokenmix.export import export_model
    from tokenmix.models import create_model

    if args.checkpoint is not None and not args.checkpoint.exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file or folder")
    if args.checkpoint is None and args.model is None:
        raise ValueError("give --checkpoint RUN_OR_WEIGHTS, or --model NAME (with --pretrained)")
    if args.checkpoint is None and args.use_ema:
        raise ValueError("--use-ema needs --checkpoint")
    if args.pretrained and args.num_classes is not None:
        raise ValueError("--num-classes is for --checkpoint; --pretrained keeps the tag's classes")
    if args.checkpoint is None and not args.pretrained:
        # an architecture with fresh weights: deployment plumbing tests, benchmarks
        model = create_model(args.model, num_classes=args.num_classes, img_size=args.res)
        name, classes, pre = args.model, None, None
    else:
        log.info("loading %s", args.checkpoint or f"the published weights of {args.model}")
        loaded = load_for_inference(
            args.checkpoint,
            args.model,
            num_classes=args.num_classes,
            img_size=args.res,
            use_ema=args.use_ema,
        )
        if loaded.classes is not None and args.num_classes not in (None, len(loaded.classes)):
            raise ValueError(
                f"--num-classes {args.num_classes}: {loaded.source} was trained for "
                f"{len(loaded.classes)} classes (leave --num-classes out)"
            )
        model, name, classes = loaded.model, loaded.name, loaded.classes
        pre = asdict(eval_preprocessing(loaded))
        del pre["input_size"]  # the exported example's own size is stored
    report = export_model(
        model,
        args.out,
        args.format,
        dynamic_batch=args.dynamic_batch,
        opset=args.opset,
        fft=args.fft,
        verify=not args.no_verify,
        atol=args.atol,
        classes=classes,
        preprocessing=pre,
        metadata={"tokenmix.model": str(name)},
    )
    check = (
        "not verified" if report.max_abs_diff is None else f"max |diff| {report.max_abs_diff:.2e}"
    )
    batch = "dynamic" if report.dynamic_batch else str(report.input_shape[0])
    print(
        f"wrote {report.path} ({report.format}, {name}, input {report.input_shape[1:]}, "
        f"batch {batch}, {report.seconds:.1f} s; {check})"
    )
    return 0
