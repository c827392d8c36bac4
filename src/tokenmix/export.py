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
Both formats carry what a deployment needs to feed the model and read its outputs: the
preprocessing (input size, mean, std, interpolation, crop fraction) and, when given, the class
names, as ONNX ``metadata_props`` (onnxruntime: ``session.get_modelmeta().custom_metadata_map``)
or a ``tokenmix.json`` extra file of the ``.pt2`` archive; :func:`read_metadata` reads either.

onnx, onnxscript and onnxruntime come with the ``export`` extra (``pip install
'tokenmix[export]'``); ``.pt2`` needs only torch.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .extras import require
from .layers import reference_mode
from .layers.spectral import dft_as_matmul

FORMATS = ("onnx", "pt2")
FFT_MODES = ("dft", "matmul")
PT2_METADATA = "tokenmix.json"  # extra file of a .pt2 archive holding the metadata

log = logging.getLogger("tokenmix")


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
    classes: Sequence[str] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
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
        classes: names of the outputs, stored as ``tokenmix.classes`` (a JSON list).
        preprocessing: ``crop_pct``, ``interpolation``, ``mean``, ``std`` the model was trained
            with, where they differ from its ``pretrained_cfg`` (a training run's ``data.*``).
        metadata: more ``key: value`` strings to store (e.g. ``tokenmix.model``).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if fft not in FFT_MODES:
        raise ValueError(f"fft must be one of {FFT_MODES}, got {fft!r}")
    if opset is not None and opset < 17 and fft == "dft":
        raise ValueError(f"opset {opset} has no DFT operator; use 17 or newer, or fft='matmul'")
    num_outputs = getattr(model, "num_classes", None)
    if classes is not None and num_outputs is not None and len(classes) != num_outputs:
        raise ValueError(f"{len(classes)} class names for a model with {num_outputs} outputs")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    # A symbolic batch needs an example batch > 1: torch.export specialises size-1 dimensions.
    example = _example(model, input_size, 2 if dynamic_batch else 1)
    meta = export_metadata(model, tuple(example.shape[1:]), classes, preprocessing, metadata)
    start = time.perf_counter()
    with reference_mode(model, enabled=False), dft_as_matmul(fft == "matmul"), torch.no_grad():
        log.info(
            "exporting to %s (%s, input %s): tracing the model, a few seconds to a minute",
            out,
            format,
            "x".join(map(str, example.shape[1:])),
        )
        if format == "onnx":
            _export_onnx(model, example, out, dynamic_batch, opset, meta)
        else:
            with _exporter_quiet():
                program = torch.export.export(
                    model, (example,), dynamic_shapes=_dynamic_shapes(dynamic_batch)
                )
            torch.export.save(program, out, extra_files={PT2_METADATA: json.dumps(meta)})
        seconds = time.perf_counter() - start
        diff = None
        if verify:
            runtime = "onnxruntime" if format == "onnx" else "the reloaded program"
            log.info("verifying %s against PyTorch with %s", out.name, runtime)
            check = _example(model, input_size, 3 if dynamic_batch else 1)
            expected = model(check)
            got = _run_onnx(out, check) if format == "onnx" else _run_pt2(out, check)
            diff = _check(expected, got, atol, f"{out.name}")
    return ExportReport(out, format, tuple(example.shape), dynamic_batch, diff, seconds)


def export_metadata(
    model: nn.Module,
    input_size: tuple[int, ...],
    classes: Sequence[str] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ``tokenmix.*`` strings an exported file carries: how to prepare an image for it
    (the model's ``pretrained_cfg``, with ``preprocessing`` overriding), and its class names."""
    cfg = getattr(model, "pretrained_cfg", None)
    pre = {
        key: getattr(cfg, key)
        for key in ("crop_pct", "interpolation", "mean", "std")
        if cfg is not None
    }
    pre.update({k: v for k, v in (preprocessing or {}).items() if v is not None})
    unknown = set(pre) - {"crop_pct", "interpolation", "mean", "std"}
    if unknown:
        raise ValueError(f"preprocessing: unknown keys {sorted(unknown)}")
    meta = {"tokenmix.input_size": "x".join(map(str, input_size))}
    if "mean" in pre:
        meta["tokenmix.mean"] = ",".join(f"{v:g}" for v in pre["mean"])
    if "std" in pre:
        meta["tokenmix.std"] = ",".join(f"{v:g}" for v in pre["std"])
    if "interpolation" in pre:
        meta["tokenmix.interpolation"] = str(pre["interpolation"])
    if "crop_pct" in pre:
        meta["tokenmix.crop_pct"] = f"{pre['crop_pct']:g}"
    num_outputs = getattr(model, "num_classes", None)
    if num_outputs is not None:
        meta["tokenmix.num_classes"] = str(num_outputs)
    if classes is not None:
        # ASCII JSON: a class name that is not UTF-8 (a lone surrogate) stays storable
        meta["tokenmix.classes"] = json.dumps(list(classes))
    meta.update(extra or {})
    return meta


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``tokenmix.*`` metadata of an exported ``.onnx`` or ``.pt2`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    if path.suffix == ".pt2":
        files = {PT2_METADATA: ""}
        torch.export.load(str(path), extra_files=files)
        return json.loads(files[PT2_METADATA]) if files[PT2_METADATA] else {}
    onnx = require("onnx", "export", "reading ONNX metadata")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


class _DropTorchvisionNotes(logging.Filter):
    """The dynamo exporter warns, once per op, that torchvision is not installed and its
    detection ops (nms, roi_align, ...) will not be registered; no tokenmix model uses them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "torchvision is not installed" not in record.getMessage()


@contextmanager
def _exporter_quiet() -> Iterator[None]:
    """Silence the exporters' notes that say nothing about this export: the torchvision
    warnings above and a pytree deprecation warning raised inside torch itself."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    note = _DropTorchvisionNotes()
    registration.addFilter(note)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*treespec, LeafSpec.*", category=FutureWarning
            )
            yield
    finally:
        registration.removeFilter(note)


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
    model: nn.Module,
    example: torch.Tensor,
    out: Path,
    dynamic_batch: bool,
    opset: int | None,
    meta: Mapping[str, str],
) -> None:
    onnx = require("onnx", "export", "ONNX export")
    require("onnxscript", "export", "ONNX export")
    with _quiet("onnxscript", "onnx_ir", "torch.onnx"), _exporter_quiet():
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
    if program is None:
        raise ExportError("the ONNX exporter returned no program")
    program.save(str(out))
    proto = onnx.load(str(out))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    ort = require("onnxruntime", "export", "verifying an ONNX export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def _run_pt2(path: Path, x: torch.Tensor) -> torch.Tensor:
    return torch.export.load(str(path)).module()(x)
