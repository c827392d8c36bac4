"""ONNX (dynamo exporter, FFTs as DFT) and torch.export archives of every model family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tokenmix
from tokenmix.export import ExportError, export_model
from tokenmix.layers import set_reference_mode

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

FAMILIES = ["test_dfformer", "test_cdfformer", "test_gfformer", "test_caformer", "test_lvvit"]
FFT_MODELS = {"test_dfformer", "test_cdfformer", "test_gfformer"}


def _ort_run(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_matches_pytorch(name: str, tmp_path: Path) -> None:
    model = tokenmix.create_model(name).eval()
    set_reference_mode(model)  # export must still take the (exportable) fast path
    path = tmp_path / f"{name}.onnx"
    report = export_model(model, path, "onnx", dynamic_batch=True)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    for batch in (1, 4):  # the batch dimension is symbolic
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            expected = model(x)
        assert (_ort_run(path, x) - expected).abs().max().item() <= 1e-4
    proto = onnx.load(str(path))
    ops = {node.op_type for node in proto.graph.node}
    assert ("DFT" in ops) == (name in FFT_MODELS)  # FFTs map to ONNX DFT, not to matmuls
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["tokenmix.input_size"] == "3x64x64"
    assert meta["tokenmix.interpolation"] == "bicubic"


@pytest.mark.parametrize("name", ["test_dfformer", "test_gfformer"])
def test_onnx_fft_as_matmul(name: str, tmp_path: Path) -> None:
    """DFT matrices instead of DFT nodes: same outputs, no DFT in the graph."""
    model = tokenmix.create_model(name, img_size=(96, 80)).eval()  # odd FFT widths
    path = tmp_path / f"{name}.onnx"
    report = export_model(model, path, "onnx", fft="matmul", dynamic_batch=True)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert "DFT" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        assert (_ort_run(path, x) - model(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["test_dfformer", "test_lvvit"])
def test_pt2_archive_round_trip(name: str, tmp_path: Path) -> None:
    model = tokenmix.create_model(name).eval()
    path = tmp_path / f"{name}.pt2"
    report = export_model(model, path, "pt2", dynamic_batch=True)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-5
    program = torch.export.load(str(path))
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-5)


def test_fixed_batch_and_resolution(tmp_path: Path) -> None:
    model = tokenmix.create_model("test_dfformer", img_size=96).eval()
    path = tmp_path / "m.onnx"
    report = export_model(model, path, "onnx")
    assert report.input_shape == (1, 3, 96, 96) and not report.dynamic_batch
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (_ort_run(path, x) - model(x)).abs().max().item() <= 1e-4


def test_bad_requests_fail_clearly(tmp_path: Path) -> None:
    model = tokenmix.create_model("test_dfformer")
    with pytest.raises(ValueError, match="format"):
        export_model(model, tmp_path / "m.tflite", "tflite")
    with pytest.raises(ValueError, match="DFT"):
        export_model(model, tmp_path / "m.onnx", "onnx", opset=16)
    with pytest.raises(ValueError, match="fft"):
        export_model(model, tmp_path / "m.onnx", "onnx", fft="fftw")


def test_verification_catches_a_wrong_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the exported program disagrees with PyTorch, export fails instead of warning."""
    import tokenmix.export as export

    monkeypatch.setattr(export, "_run_pt2", lambda path, x: torch.zeros(x.shape[0], 10))
    model = tokenmix.create_model("test_dfformer")
    with pytest.raises(ExportError, match="max abs difference"):
        export_model(model, tmp_path / "m.pt2", "pt2")


def test_cli_export(tmp_path: Path) -> None:
    from tokenmix.cli.main import main

    ckpt = tmp_path / "w.pth"
    torch.save(tokenmix.create_model("test_caformer").state_dict(), ckpt)
    out = tmp_path / "cli.onnx"
    code = main(
        ["export", "--model", "test_caformer", "--checkpoint", str(ckpt), "--out", str(out)]
    )
    assert code == 0 and out.is_file()
    assert (
        main(
            [
                "export",
                "--model",
                "test_caformer",
                "--checkpoint",
                str(tmp_path / "missing.pth"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
