"""Export models for deployment: ONNX through the dynamo exporter, or a ``torch.export`` archive.

Every model of the library exports on its fast path (eval mode): the FFT mixers build their
per-sample filters with real matrix products and reshape filters before making them complex,
so the graph holds only ops the exporters translate; ``rfft2``/``irfft2`` become ONNX ``DFT``
(opset >= 17; the exporter's default opset is used unless one is given). The reference path
(complex ``einsum``, as in the official DFFormer code) does not export, so export always runs
the fast path.

``fft="matmul"`` writes the transforms as products with cosine/sine matrices instead
(:mod:`tokenmix.layers.spectral`): the same function, no ``DFT`` node, and much faster in
onnxruntime on CPU, whose ``DFT`` kernel is slow at the mixers' non-power-of-two sizes.

The exported program is checked against PyTorch on a fresh random batch (onnxruntime for
ONNX, the reloaded program for pt2); a difference above ``atol`` is an error, not a warning.
ONNX files carry the preprocessing the model expects (input size, mean, std, interpolation,
crop fraction) as metadata.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .layers import reference_mode
from .layers.spectral import dft_as_matmul

FORMATS = ("onnx", "pt2")
FFT_MODES = ("dft", "matmul")


class ExportError(RuntimeError):
    """The model could not be exported, or the exported program disagrees with PyTorch."""


@dataclass(frozen=True)
class ExportReport:
    """What was written and how well it matches PyTorch."""

    path: Path
    format: str
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    max_abs_diff: float | None
    seconds: float


def _example(model: nn.Module, input_size: tuple[int, int, int] | None, batch: int) -> torch.Tensor:
    size = input_size or tuple(model.pretrained_cfg.input_size)
    if len(size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {size}")
    return torch.randn(batch, *size)


def _dynamic_shapes(dynamic_batch: bool) -> tuple[dict[int, torch.export.Dim], ...] | None:
    if not dynamic_batch:
        return None
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def _check(expected: torch.Tensor, got: torch.Tensor, atol: float, what: str) -> float:
    if expected.shape != got.shape:
        raise ExportError(
            f"{what}: output shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}"
        )
    diff = (expected.float() - got.float()).abs().max().item()
    if not diff <= atol:
        raise ExportError(f"{what}: max abs difference to PyTorch {diff:.3g} > {atol:g}")
    return diff


def export_model(
    model: nn.Module,
    out: str | Path,
    format: str = "onnx",
    *,
    input_size: tuple[int, int, int] | None = None,
    dynamic_batch: bool = False,
    opset: int | None = None,
    fft: str = "dft",
    verify: bool = True,
    atol: float = 1e-4,
) -> ExportReport:
    """Export ``model`` (switched to eval, fast path) to ``out``.

    Args:
        model: a tokenmix model (any ``nn.Module`` taking one image batch works).
        out: file to write (parents are created).
        format: ``"onnx"`` or ``"pt2"`` (``torch.export`` archive, load with
            ``torch.export.load``).
        input_size: ``(channels, height, width)``; default: the model's ``pretrained_cfg``.
        dynamic_batch: make the batch dimension symbolic (otherwise it is fixed to 1).
        opset: ONNX opset; default: the exporter's (at least 17, needed for ``DFT``).
        fft: ``"dft"`` (FFT ops, ONNX ``DFT``) or ``"matmul"`` (DFT matrices, see above).
        verify: run the exported program on a new random batch and compare with PyTorch.
        atol: largest accepted absolute difference when verifying.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if fft not in FFT_MODES:
        raise ValueError(f"fft must be one of {FFT_MODES}, got {fft!r}")
    if opset is not None and opset < 17 and fft == "dft":
        raise ValueError(f"opset {opset} has no DFT operator; use 17 or newer, or fft='matmul'")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    # A symbolic batch needs an example batch > 1: torch.export specialises size-1 dimensions.
    example = _example(model, input_size, 2 if dynamic_batch else 1)
    start = time.perf_counter()
    with reference_mode(model, enabled=False), dft_as_matmul(fft == "matmul"), torch.no_grad():
        if format == "onnx":
            _export_onnx(model, example, out, dynamic_batch, opset)
        else:
            program = torch.export.export(
                model, (example,), dynamic_shapes=_dynamic_shapes(dynamic_batch)
            )
            torch.export.save(program, out)
        seconds = time.perf_counter() - start
        diff = None
        if verify:
            check = _example(model, input_size, 3 if dynamic_batch else 1)
            expected = model(check)
            got = _run_onnx(out, check) if format == "onnx" else _run_pt2(out, check)
            diff = _check(expected, got, atol, f"{out.name}")
    return ExportReport(out, format, tuple(example.shape), dynamic_batch, diff, seconds)


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Silence the ONNX toolchain's per-node INFO logs (hundreds of lines per model)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_onnx(
    model: nn.Module, example: torch.Tensor, out: Path, dynamic_batch: bool, opset: int | None
) -> None:
    with _quiet("onnxscript", "onnx_ir", "torch.onnx"):
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=_dynamic_shapes(dynamic_batch),
                input_names=["images"],
                output_names=["logits"],
                verbose=False,
            )
        except ImportError as e:
            raise ExportError(
                f"ONNX export needs onnx and onnxscript: pip install 'tokenmix[export]' ({e})"
            ) from e
    if program is None:
        raise ExportError("the ONNX exporter returned no program")
    program.save(str(out))
    _add_onnx_metadata(model, out)


def _add_onnx_metadata(model: nn.Module, path: Path) -> None:
    """Store the preprocessing the model expects next to the graph."""
    import onnx

    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is None:
        return
    proto = onnx.load(str(path))
    meta = {
        "tokenmix.input_size": "x".join(map(str, cfg.input_size)),
        "tokenmix.mean": ",".join(f"{v:g}" for v in cfg.mean),
        "tokenmix.std": ",".join(f"{v:g}" for v in cfg.std),
        "tokenmix.interpolation": str(cfg.interpolation),
        "tokenmix.crop_pct": f"{cfg.crop_pct:g}",
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError("verifying ONNX needs onnxruntime: pip install 'tokenmix[export]'") from e
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def _run_pt2(path: Path, x: torch.Tensor) -> torch.Tensor:
    return torch.export.load(str(path)).module()(x)
