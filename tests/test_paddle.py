"""Paddle .pdparams: safe reading without Paddle, conversion, and the recorded Paddle outputs."""

from __future__ import annotations

import json
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import tokenmix
from tokenmix.cli.main import main as cli_main
from tokenmix.models import CheckpointError, read_state_dict
from tokenmix.models.paddle import convert_paddle_lvvit, convert_paddle_metaformer, read_pdparams

from .conftest import REFERENCE, require

PADDLE = REFERENCE / "paddle"
TINY_DF = {"depths": (1, 1, 2, 1), "dims": (16, 32, 48, 64), "num_classes": 10, "img_size": 64}


def case(name: str) -> tuple[Path, dict[str, torch.Tensor]]:
    path = require(PADDLE / f"{name}.pdparams")
    arrays = np.load(PADDLE / f"{name}.npz")
    return path, {k: torch.from_numpy(arrays[k]) for k in arrays.files}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def scaled_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to ``max(1, max |b|)``: an intermediate such as the stem's
    output reaches |7|, where float32 rounding of another (equally valid) accumulation order --
    oneDNN's channels-last convolution with BatchNorm folded in -- is ~1e-5 absolute. For the
    O(1) outputs this is the plain absolute difference."""
    return max_diff(a, b) / max(1.0, b.abs().max().item())


@pytest.mark.parametrize(
    "name", ["seed_dfformer_tiny", "seed_dfformer_tiny_resize", "seed_lvvit_tiny"]
)
def test_read_pdparams_matches_key_listing(name: str) -> None:
    path, _ = case(name)
    state = read_pdparams(path)
    listed = []
    for line in (PADDLE / f"{name}.keys.txt").read_text().splitlines():
        if line.startswith("#") or "StructuredToParameterName@@" in line:
            continue
        key, shape, dtype = line.split("\t")
        listed.append((key, json.loads(shape), dtype.strip()))
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    assert ours == listed


@pytest.mark.parametrize("name", ["seed_dfformer_tiny", "seed_dfformer_tiny_resize"])
def test_paddle_dfformer_cases(name: str) -> None:
    """Built for 64x64 as the seed; the resize case runs at 96x80 (filters resized)."""
    path, ref = case(name)
    model = tokenmix.create_model("dfformer_s18", pretrained=path, **TINY_DF).eval()
    with torch.no_grad():
        assert max_diff(model(ref["input"]), ref["output"]) <= 1e-5
        feats = model.forward_head(model.forward_features(ref["input"]), pre_logits=True)
        assert max_diff(feats, ref["features"]) <= 1e-5
        mixer = model.stages[0][0].token_mixer  # NHWC in and out, as the seed's
        assert max_diff(mixer(ref["mixer_input"]), ref["mixer_output"]) <= 1e-5
        if "input_native" in ref:
            assert max_diff(model(ref["input_native"]), ref["output_native"]) <= 1e-5


def test_paddle_lvvit_case() -> None:
    """The Paddle port's `output` carries a quirk: its `x_aux.max(1)[0]` takes Paddle's values
    tensor and then batch item 0, so every sample gets sample 0's aux term. tokenmix follows the
    official PyTorch per-sample combination, so we compare x_cls, x_aux, the intermediates and
    the per-sample `x_cls + 0.5 * x_aux.max(1).values` — and show that `output` is the quirk."""
    path, ref = case("seed_lvvit_tiny")
    model = tokenmix.create_model("test_lvvit", pretrained=path).eval()
    x = ref["input"]
    with torch.no_grad():
        assert scaled_diff(model.patch_embed(x), ref["patch_embed_out"]) <= 1e-5
        tokens = model.forward_features(x)
        assert max_diff(tokens, ref["tokens"]) <= 1e-5
        assert max_diff(model.head(tokens[:, 0]), ref["x_cls"]) <= 1e-5
        assert max_diff(model.aux_head(tokens[:, 1:]), ref["x_aux"]) <= 1e-5
        out = model(x)
    per_sample = ref["x_cls"] + 0.5 * ref["x_aux"].max(dim=1).values
    assert max_diff(out, per_sample) <= 1e-5
    quirk = ref["x_cls"] + 0.5 * ref["x_aux"][0].max(dim=0).values
    assert max_diff(quirk, ref["output"]) <= 1e-6
    assert max_diff(out[0], ref["output"][0]) <= 1e-5  # sample 0 is unaffected by the quirk
    assert max_diff(out[1], ref["output"][1]) > 1e-2


@pytest.mark.parametrize(
    ("manifest", "arch", "convert"),
    [
        ("manifest_dfformer_s18.json", "dfformer_s18", convert_paddle_metaformer),
        ("manifest_lvvit_s.json", "lvvit_s", convert_paddle_lvvit),
    ],
)
def test_full_size_paddle_layout_converts_to_ours(manifest: str, arch: str, convert) -> None:
    """Every key and shape of a full-size Paddle state_dict maps onto our model's."""
    entries = json.loads(require(PADDLE / manifest).read_text())["state_dict"]
    paddle_state = {k: torch.zeros(shape) for k, shape, _ in entries}
    converted = convert(paddle_state)
    with torch.device("meta"):
        model = tokenmix.create_model(arch)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    if arch == "lvvit_s":
        assert converted["patch_embed.bn1.num_batches_tracked"].dtype == torch.long


def test_conversion_rules() -> None:
    state = {
        "fc.weight": torch.arange(6.0).reshape(2, 3),  # Paddle Linear [in, out]
        "fc.bias": torch.ones(3),
        "bn._mean": torch.zeros(4),
        "bn._variance": torch.ones(4),
        "conv.weight": torch.zeros(8, 3, 3, 3),
    }
    out = convert_paddle_lvvit(state)
    assert torch.equal(out["fc.weight"], state["fc.weight"].t())
    assert set(out) == {
        "fc.weight",
        "fc.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
        "conv.weight",
    }
    assert out["conv.weight"] is state["conv.weight"]


class _Payload:
    def __init__(self, fn, arg) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("fn", [eval, os.system], ids=["builtins.eval", "os.system"])
def test_malicious_pdparams_is_refused(fn, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    command = f"open({str(marker)!r}, 'w')" if fn is eval else f"touch {marker}"
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"w": np.zeros(2, np.float32), "x": _Payload(fn, command)}))
    with pytest.raises(CheckpointError, match=r"refused to load: global '(builtins|posix|os)\."):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="refused"):
        tokenmix.create_model("test_lvvit", pretrained=path)
    assert not marker.exists()


def test_non_array_entries_and_garbage_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.pdparams"
    path.write_bytes(pickle.dumps({"w": np.zeros(2, np.float32), "note": "text"}))
    with pytest.raises(CheckpointError, match="'note' is str, not a numeric array"):
        read_pdparams(path)
    path.write_bytes(pickle.dumps({"w": np.array([object()], dtype=object)[:0]}))
    with pytest.raises(CheckpointError, match="'w' is object, not a numeric array"):
        read_pdparams(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match=r"odd\.pdparams"):
        read_pdparams(path)
    good = require(PADDLE / "seed_lvvit_tiny.pdparams").read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"odd\.pdparams"):
        read_pdparams(path)


def test_numpy1_names_and_ordered_dict_are_accepted(tmp_path: Path) -> None:
    """Files written under numpy 1.x name numpy.core.multiarray; older Paddle saves OrderedDict."""
    arrays = OrderedDict(a=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.ones(2, np.int64))
    data = pickle.dumps(arrays, protocol=2)
    assert b"numpy._core.multiarray" in data
    path = tmp_path / "old.pdparams"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    state = read_pdparams(path)
    assert torch.equal(state["a"], torch.arange(6.0).reshape(2, 3))
    assert state["b"].dtype == torch.int64


def test_convert_command_writes_loadable_safetensors(tmp_path: Path) -> None:
    path, ref = case("seed_lvvit_tiny")
    dst = tmp_path / "lvvit.safetensors"
    assert cli_main(["convert", str(path), str(dst), "--model", "test_lvvit"]) == 0
    with safe_open(str(dst), "pt") as f:
        meta = f.metadata()
    assert meta["source_format"] == "pdparams" and meta["model"] == "test_lvvit"
    model = tokenmix.create_model("test_lvvit", pretrained=dst).eval()
    with torch.no_grad():
        assert (
            max_diff(model.head(model.forward_features(ref["input"])[:, 0]), ref["x_cls"]) <= 1e-5
        )
    # an existing output is kept unless --force
    assert cli_main(["convert", str(path), str(dst), "--model", "test_lvvit"]) == 2
    assert cli_main(["convert", str(path), str(dst), "--model", "test_lvvit", "--force"]) == 0


def test_convert_command_resizes_and_checks_class_count(tmp_path: Path) -> None:
    path, _ = case("seed_dfformer_tiny")
    dst = tmp_path / "df96.safetensors"
    args = ["convert", str(path), str(dst), "--model", "test_dfformer", "--img-size", "96"]
    assert cli_main(args) == 0
    model = tokenmix.create_model("test_dfformer", pretrained=dst, img_size=96)
    assert model.stages[0][0].token_mixer.complex_weights.shape[:2] == (24, 13)
    wrong = ["convert", str(path), str(tmp_path / "x.safetensors"), "--model", "test_dfformer"]
    assert cli_main([*wrong, "--num-classes", "5"]) == 2
    assert not (tmp_path / "x.safetensors").exists()


def _hex_bomb(levels: int) -> bytes:
    """``{'w': encode(...encode(encode('AAAA', 'latin1'), 'hex')..., 'hex')}``: 4 * 2**levels
    bytes from ~6 * levels; ``_codecs.encode`` is allowed because protocol 2 spells bytes with it."""
    out = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01c_codecs\nencode\nq\x02" + b"h\x02" * levels
    out += b"X\x04\x00\x00\x00AAAAX\x06\x00\x00\x00latin1\x86R"
    out += b"X\x03\x00\x00\x00hexq\x03\x86R" + b"h\x03\x86R" * (levels - 1)
    return out + b"s."


def test_pdparams_codec_amplification_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hex.pdparams"
    path.write_bytes(_hex_bomb(22))  # 16 MiB from 200 bytes; 40 levels would ask for 4 TiB
    with pytest.raises(CheckpointError, match=r"hex\.pdparams: refused to load: _codecs\.encode"):
        read_pdparams(path)


def test_pdparams_array_shape_bombs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "shape.pdparams"
    # numpy's _reconstruct with a 1 TiB shape instead of numpy's (0,)
    path.write_bytes(
        b"\x80\x02}X\x01\x00\x00\x00wcnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        b"\x8a\x06" + (2**40).to_bytes(6, "little") + b"\x85C\x01b\x87Rs."
    )
    with pytest.raises(CheckpointError, match=r"shape\.pdparams: refused .*byte budget exceeded"):
        read_pdparams(path)
    # an object array whose state claims 2**40 items and holds one (numpy allocates first)
    data = pickle.dumps({"w": np.array([None], dtype=object)}, protocol=2)
    path.write_bytes(
        data.replace(b"K\x01\x85", b"\x8a\x06" + (2**40).to_bytes(6, "little") + b"\x85", 1)
    )
    with pytest.raises(
        CheckpointError, match=r"refused .*object array of shape \(1099511627776,\)"
    ):
        read_pdparams(path)


def test_pdparams_deep_nesting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.pdparams"
    levels = 5000  # two bytes a level
    path.write_bytes(b"\x80\x02}X\x01\x00\x00\x00w" + b"]" * levels + b"a" * (levels - 1) + b"s.")
    with pytest.raises(CheckpointError, match=r"deep\.pdparams: refused .*nested deeper than 100"):
        read_pdparams(path)
