"""ONNX (dynamo exporter, FFTs as DFT) and torch.export archives of every model family."""

from __future__ import annotations

import json
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


# --- the command line on tokenmix's own checkpoints -------------------------------------------
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A tiny DFFormer run at 32 px (the model's default is 64): 2 steps on the digits."""
    from tokenmix.cli.main import main

    out = tmp_path_factory.mktemp("runs")
    recipe = out / "df32.yaml"
    recipe.write_text("model: {name: test_dfformer, img_size: 32}\n")
    sets = [
        "data.train_limit=32",
        "data.val_limit=16",
        "data.num_workers=0",
        "data.load_size=32",
        "data.crop_pct=0.9",
        "train.batch_size=16",
        "train.max_steps=2",
        "train.cpu_threads=1",
        "log.tensorboard=false",
        "log.progress=false",
        "log.plots=false",
        f"run.output_dir={out}",
    ]
    assert main(["train", "--config", str(recipe), "--set", *sets]) == 0
    return out / "df32"


def _digits_batch(meta: dict[str, str], count: int = 8) -> torch.Tensor:
    """Digits prepared only from what the exported file says (size, crop, mean, std)."""
    from tokenmix.data.datasets import open_dataset
    from tokenmix.data.transforms import Normalize, ResizeCenterCrop

    _, h, w = (int(v) for v in meta["tokenmix.input_size"].split("x"))
    load = ResizeCenterCrop(
        (h, w),
        crop_pct=float(meta["tokenmix.crop_pct"]),
        interpolation=meta["tokenmix.interpolation"],
    )
    mean, std = (
        tuple(float(v) for v in meta[k].split(",")) for k in ("tokenmix.mean", "tokenmix.std")
    )
    data = open_dataset("digits", "val")
    images = torch.stack([load(data.load(i)) for i in range(count)])
    return Normalize(mean, std)(images)


def test_cli_export_reads_the_run(run_folder: Path, tmp_path: Path, capfd, caplog) -> None:
    """--checkpoint RUN: architecture, the trained 32 px, class names and the run's crop come
    from the checkpoint; the ONNX model predicts what the PyTorch model predicts."""
    import logging
    import warnings

    from tokenmix.cli.main import main
    from tokenmix.engine.predict import load_for_inference
    from tokenmix.export import read_metadata

    out = tmp_path / "run.onnx"
    with caplog.at_level(logging.INFO, logger="tokenmix"), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the exporter's own deprecation notes
        assert (
            main(["export", "--checkpoint", str(run_folder), "--out", str(out), "--dynamic-batch"])
            == 0
        )
    captured = capfd.readouterr()
    assert "torchvision" not in captured.err + captured.out  # the exporter's notes are silenced
    assert "input (3, 32, 32)" in captured.out and "test_dfformer" in captured.out
    assert "exporting to" in caplog.text and "verifying" in caplog.text  # says what takes time
    meta = read_metadata(out)
    assert meta["tokenmix.input_size"] == "3x32x32" and meta["tokenmix.model"] == "test_dfformer"
    assert json.loads(meta["tokenmix.classes"]) == [str(i) for i in range(10)]
    assert meta["tokenmix.crop_pct"] == "0.9"  # the run's data.crop_pct, not the model's default
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert (
        session.get_modelmeta().custom_metadata_map["tokenmix.classes"] == meta["tokenmix.classes"]
    )
    x = _digits_batch(meta)
    model = load_for_inference(run_folder).model
    with torch.no_grad():
        expected = model(x)
    got = _ort_run(out, x)
    assert (got - expected).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_cli_export_pt2_from_a_step_and_errors(run_folder: Path, tmp_path: Path, capsys) -> None:
    from tokenmix.cli.main import main
    from tokenmix.export import read_metadata

    step = sorted((run_folder / "checkpoints").glob("step_*"))[-1]
    out = tmp_path / "step.pt2"
    assert main(["export", "--checkpoint", str(step), "--format", "pt2", "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["tokenmix.input_size"] == "3x32x32" and meta["tokenmix.num_classes"] == "10"
    program = torch.export.load(str(out))
    assert program.module()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert main(["export", "--out", str(out)]) == 2  # neither a checkpoint nor a model
    assert "--checkpoint" in capsys.readouterr().err
    assert (
        main(["export", "--checkpoint", str(step), "--model", "test_lvvit", "--out", str(out)]) == 2
    )
    assert "holds a test_dfformer" in capsys.readouterr().err
    # a foreign checkpoint for another class count is refused, not exported with a random head
    foreign = tmp_path / "seven.pth"
    torch.save(tokenmix.create_model("test_caformer", num_classes=7).state_dict(), foreign)
    args = ["export", "--model", "test_caformer", "--checkpoint", str(foreign), "--out", str(out)]
    assert main(args) == 2
    assert "--num-classes" in capsys.readouterr().err


def test_missing_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Without onnx / onnxruntime, export fails at once with the extra that installs them."""
    import sys

    from tokenmix.cli.main import main
    from tokenmix.extras import MissingExtraError, require

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'tokenmix\[export\]'"):
        require("onnxruntime", "export")
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "test_caformer", "--out", str(out)]) == 2
    assert "pip install 'tokenmix[export]'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown extra"):
        require("onnxruntime", "exports")
