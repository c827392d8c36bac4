"""Loading checkpoints: wrappers, formats, strictness, and refusal of bad files."""

from __future__ import annotations

import argparse
import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import tokenmix
from tokenmix.models import CheckpointError, load_weights, read_state_dict


@pytest.fixture
def model() -> torch.nn.Module:
    return tokenmix.create_model("test_dfformer").eval()


def _same_output(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict", "model_ema", "module."])
def test_wrapped_state_dicts_load(model, tmp_path, wrapper) -> None:
    state = model.state_dict()
    if wrapper == "module.":
        obj = {f"module.{k}": v for k, v in state.items()}
    elif wrapper:
        obj = {wrapper: state, "epoch": 3} if wrapper != "model_ema" else {"model_ema": state}
    else:
        obj = state
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    other = tokenmix.create_model("test_dfformer", pretrained=path)
    assert _same_output(model, other)


def test_timm_training_checkpoint_with_args_namespace(model, tmp_path) -> None:
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=1e-3)}, path)
    assert _same_output(model, tokenmix.create_model("test_dfformer", pretrained=path))


def test_use_ema_prefers_ema_weights(model, tmp_path) -> None:
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "model_ema": ema}, path)
    assert torch.equal(read_state_dict(path)["norm.bias"], model.state_dict()["norm.bias"])
    assert torch.equal(read_state_dict(path, use_ema=True)["norm.bias"], ema["norm.bias"])


def test_safetensors_load(model, tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    assert _same_output(model, tokenmix.create_model("test_dfformer", pretrained=str(path)))


def test_checkpoint_of_another_architecture_is_refused(tmp_path) -> None:
    path = tmp_path / "caformer.pth"
    torch.save(tokenmix.create_model("test_caformer").state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        tokenmix.create_model("test_dfformer", pretrained=path)
    text = str(err.value)
    assert str(path) in text and "missing from the checkpoint" in text
    assert "complex_weights" in text and "unexpected in the checkpoint" in text


def test_missing_unexpected_and_mismatched_are_all_listed(model, tmp_path) -> None:
    state = model.state_dict()
    del state["norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["stages.0.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, state)
    text = str(err.value)
    assert "norm.weight" in text and "extra.weight" in text
    assert "stages.0.0.mlp.fc1.weight: checkpoint (3, 3) vs model (64, 16)" in text


def test_truncated_file_gives_clear_error(model, tmp_path) -> None:
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(path)
    st = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(st))
    st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="safetensors"):
        read_state_dict(st)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > " + os.environ.get("_PWN_MARK", "/tmp/_tokenmix_pwned"),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch) -> None:
    mark = tmp_path / "pwned"
    monkeypatch.setenv("_PWN_MARK", str(mark))
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(path)
    assert not mark.exists()


def test_non_tensor_entries_are_refused(tmp_path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"weight": torch.zeros(1), "note": "hello"}, path)
    with pytest.raises(CheckpointError, match="'note' is a str"):
        read_state_dict(path)


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        read_state_dict("nope.pth")


def test_classifier_reinitialised_for_other_class_count(model, tmp_path, caplog) -> None:
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="tokenmix"):
        other = tokenmix.create_model("test_dfformer", pretrained=path, num_classes=4)
    assert "head.fc2.weight" in caplog.text and "4 classes" in caplog.text
    assert torch.equal(other.head.fc1.weight, model.head.fc1.weight)  # hidden head layer kept
    assert other.head.fc2.weight.shape == (4, 256)
    backbone = tokenmix.create_model("test_dfformer", pretrained=path, num_classes=0)
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, backbone.num_features)  # timm: 64
