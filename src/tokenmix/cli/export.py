"""Export a model to ONNX (dynamo exporter, FFTs as DFT) or a torch.export archive (.pt2).

The exported program is run on a random batch and compared with PyTorch (onnxruntime for
ONNX); a difference above --atol is an error. --fft matmul writes the FFT mixers' transforms
as DFT-matrix products: the same function, and ~10x faster than onnxruntime's DFT on CPU. The fast path is exported (the official-order
reference path uses a complex einsum, which no exporter handles). ONNX files carry the
expected preprocessing (input size, mean, std, interpolation, crop fraction) as metadata.

Examples:
  tokenmix export --model dfformer_s18 --checkpoint weights.pth --format onnx --out dfformer_s18.onnx
  tokenmix export --model cdfformer_s18 --pretrained --res 384 --format onnx --out m.onnx --dynamic-batch
  tokenmix export --model dfformer_s18 --pretrained --fft matmul --out dfformer_s18.onnx
  tokenmix export --model lvvit_s --format pt2 --out lvvit_s.pt2
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a model to ONNX or a torch.export .pt2 archive (checked against PyTorch)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="architecture name, e.g. dfformer_s18")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=Path, help=".pth/.pt/.safetensors/.pdparams file")
    weights.add_argument("--pretrained", action="store_true", help="the tag's official weights")
    p.add_argument("--format", choices=("onnx", "pt2"), default="onnx")
    p.add_argument("--out", type=Path, required=True, help="file to write")
    p.add_argument("--res", type=int, default=None, help="input resolution (default: the model's)")
    p.add_argument(
        "--num-classes", type=int, default=None, help="classifier size of the checkpoint"
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
    from tokenmix.export import export_model
    from tokenmix.models import create_model

    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    pretrained = True if args.pretrained else args.checkpoint
    model = create_model(
        args.model, pretrained=pretrained, num_classes=args.num_classes, img_size=args.res
    )
    report = export_model(
        model,
        args.out,
        args.format,
        dynamic_batch=args.dynamic_batch,
        opset=args.opset,
        fft=args.fft,
        verify=not args.no_verify,
        atol=args.atol,
    )
    check = (
        "not verified" if report.max_abs_diff is None else f"max |diff| {report.max_abs_diff:.2e}"
    )
    batch = "dynamic" if report.dynamic_batch else str(report.input_shape[0])
    print(
        f"wrote {report.path} ({report.format}, input {report.input_shape[1:]}, batch {batch}, "
        f"{report.seconds:.1f} s; {check})"
    )
    return 0
