"""Untrusted pickles (.pth, .pdparams, CIFAR batches): crafted files that amplify are refused.

Every attack here is small on disk and would, unchecked, build far more than it holds. The
sizes are chosen so that even the unfixed readers survive them (they fail the assertions, not
the machine): what runs unchecked creates at most ~16 MB, and the claims of terabytes fail
allocation at once. Bounds that only the scan can show (memo tables, deep nesting, object
counts) are tested on :mod:`tokenmix.utils.unpickle` directly.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenmix.data.datasets import open_cifar10
from tokenmix.models import CheckpointError, read_state_dict

GiB = 2**30


def hex_bomb(levels: int, key: str = "w") -> bytes:
    """Protocol 2 ``{key: encode(...encode(encode('AAAA', 'latin1'), 'hex')..., 'hex')}``.

    ``_codecs.encode`` is on every allow-list (protocol 2 spells bytes with it), and the hex
    codec doubles its input: ``levels`` nested calls make ``4 * 2**levels`` bytes from a file of
    ``~6 * levels`` bytes.
    """
    name = key.encode()
    out = b"\x80\x02}q\x00X" + len(name).to_bytes(4, "little") + name + b"q\x01"
    out += b"c_codecs\nencode\nq\x02" + b"h\x02" * levels
    out += b"X\x04\x00\x00\x00AAAAX\x06\x00\x00\x00latin1\x86R"
    out += b"X\x03\x00\x00\x00hexq\x03\x86R" + b"h\x03\x86R" * (levels - 1)
    return out + b"s."


def deep_list(levels: int) -> bytes:
    """``{'w': [[[...]]]}`` nested ``levels`` deep, two bytes per level."""
    return b"\x80\x02}X\x01\x00\x00\x00w" + b"]" * levels + b"a" * (levels - 1) + b"s."


def with_data_pkl(tmp_path: Path, name: str, edit) -> Path:
    """A real ``torch.save`` zip whose ``data.pkl`` is replaced by ``edit(data.pkl)``."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            out.writestr(info.filename, edit(data) if info.filename.endswith("data.pkl") else data)
    return path


# --------------------------------------------------------------------------- .pth


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pth_codec_amplification_is_refused(tmp_path: Path) -> None:
    path = with_data_pkl(tmp_path, "hex.pth", lambda _: hex_bomb(22))  # 16 MiB from 200 bytes
    assert path.stat().st_size < 2048
    with pytest.raises(CheckpointError, match=r"hex\.pth: refused to load: _codecs\.encode"):
        read_state_dict(path)


def test_pth_storage_larger_than_its_record_is_refused(tmp_path: Path) -> None:
    # numel 2 -> 2**28 - 1 FloatStorage elements (1 GiB) over an 8-byte record
    path = with_data_pkl(
        tmp_path, "claim.pth", lambda d: d.replace(b"K\x02t", b"J\xff\xff\xff\x0ft")
    )
    with pytest.raises(CheckpointError, match=r"claim\.pth: refused .*storage '0' claims 1,07"):
        read_state_dict(path)


def test_pth_tensor_view_larger_than_its_storage_is_refused(tmp_path: Path) -> None:
    # size (2,) stride (1,) -> size (2**40,) stride (0,): a 4 TiB tensor over 8 bytes, which
    # torch.load builds as a view and the first .contiguous() tries to allocate
    size = b"\x8a\x06" + (2**40).to_bytes(6, "little")
    path = with_data_pkl(
        tmp_path,
        "view.pth",
        lambda d: d.replace(
            b"K\x00K\x02\x85q\x08K\x01\x85", b"K\x00" + size + b"\x85q\x08K\x00\x85"
        ),
    )
    with pytest.raises(CheckpointError, match=r"view\.pth: refused .*does not fit its storage"):
        read_state_dict(path)


def test_pth_global_allowed_by_torch_but_not_needed_is_refused(tmp_path: Path) -> None:
    # builtins.bytearray is on torch's weights_only list; bytearray(2**50) asks for 1 PiB
    bomb = b"\x80\x02}X\x01\x00\x00\x00wcbuiltins\nbytearray\n\x8a\x07" + (2**50).to_bytes(
        7, "little"
    )
    path = with_data_pkl(tmp_path, "ba.pth", lambda _: bomb + b"\x85Rs.")
    with pytest.raises(CheckpointError, match=r"ba\.pth: refused .*builtins\.bytearray"):
        read_state_dict(path)


def test_legacy_pth_storage_claim_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert data.count(b"K\x02N") == 1  # numel 2, then view metadata None
    path.write_bytes(data.replace(b"K\x02N", b"\x8a\x06" + (2**40).to_bytes(6, "little") + b"N"))
    with pytest.raises(CheckpointError, match=r"old\.pth: refused .*storages claim 4,398,046"):
        read_state_dict(path)


def test_real_checkpoints_pass_the_scan(tmp_path: Path) -> None:
    import argparse

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 2)).sum().backward()
    opt.step()
    ckpt = {
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
        "args": argparse.Namespace(lr=0.1, sizes=[1, 2]),
        "epoch": 3,
        "view": torch.arange(10)[2:5],
        "bf16": torch.zeros(2, dtype=torch.bfloat16),
        "param": torch.nn.Parameter(torch.ones(2)),
    }
    for legacy in (False, True):
        path = tmp_path / f"ck{legacy}.pth"
        torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
        state = read_state_dict(path)
        assert torch.equal(state["0.weight"], model[0].weight.detach())


# --------------------------------------------------------------------------- CIFAR batches


def test_cifar_batch_codec_amplification_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}
    for name in names:
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    (folder / "data_batch_2").write_bytes(hex_bomb(22, key="data"))
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_2: refused: _codecs\.encode"):
        open_cifar10(tmp_path, "train")


# --------------------------------------------------------------------------- the bounds


def test_terabyte_codec_bomb_is_refused_before_it_runs() -> None:
    from tokenmix.utils.unpickle import NUMPY_ARRAY_GLOBALS, UnsafePickleError, load_pickle

    data = hex_bomb(40)  # 4 TiB from 300 bytes: never run unchecked
    assert len(data) < 1024
    with pytest.raises(UnsafePickleError) as err:
        load_pickle(data, "bomb.pkl", NUMPY_ARRAY_GLOBALS)
    assert err.value.bound == "call" and "bomb.pkl" in str(err.value)


def test_byte_budget_is_tied_to_the_file_size() -> None:
    from tokenmix.utils.unpickle import NUMPY_ARRAY_GLOBALS, PickleLimits, load_pickle

    data = pickle.dumps({"w": np.arange(1000, dtype=np.float32)}, protocol=2)
    assert load_pickle(data, "ok.pkl", NUMPY_ARRAY_GLOBALS)["w"][-1] == 999
    tight = PickleLimits(bytes_per_input_byte=1, min_bytes=0)  # arrays copy their data once
    with pytest.raises(pickle.UnpicklingError, match=r"ok\.pkl: refused: byte budget exceeded"):
        load_pickle(data, "ok.pkl", NUMPY_ARRAY_GLOBALS, limits=tight)


@pytest.mark.parametrize(
    ("data", "bound", "words"),
    [
        # numpy's _reconstruct allocates whatever shape it is given (1 GiB here)
        (
            b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            b"J\x00\x00\x00\x40\x85C\x01b\x87R.",
            "bytes",
            "byte budget exceeded: a numpy array",
        ),
        # an object array allocates its shape before it looks at its one item
        (
            pickle.dumps(np.array([None], dtype=object), protocol=2).replace(
                b"K\x01\x85", b"J\x00\x00\x00\x40\x85", 1
            ),
            "call",
            "object array of shape (1073741824,)",
        ),
        # a memo index makes the C unpickler zero a table that large (16 GiB)
        (b"\x80\x02Nr\xff\xff\xff\x7f.", "objects", "memo index 2,147,483,647"),
        # a tuple nested 10,000 deep (one byte a level): hashing it overflows the C stack
        (b"\x80\x02)" + b"\x85" * 10_000 + b".", "depth", "nested deeper than 100"),
        (deep_list(5000), "depth", "nested deeper than 100"),
        (b"\x80\x02]\x94h\x00a.", "depth", "reference cycle"),
        (b"\x80\x02cos\nsystem\n.", "global", "refusing global os.system"),
        (b"\x80\x02X\x01\x00\x00\x00a", "format", "not a well-formed pickle"),
    ],
    ids=["reconstruct", "object-array", "memo", "deep-tuple", "deep-list", "cycle", "os", "cut"],
)
def test_scan_refuses_each_bound(data: bytes, bound: str, words: str) -> None:
    from tokenmix.utils.unpickle import NUMPY_ARRAY_GLOBALS, UnsafePickleError, load_pickle

    with pytest.raises(UnsafePickleError) as err:
        load_pickle(data, "x.pkl", NUMPY_ARRAY_GLOBALS)
    assert err.value.bound == bound and words in str(err.value), str(err.value)
    assert str(err.value).startswith("x.pkl: ")


def test_object_count_bound() -> None:
    from tokenmix.utils.unpickle import PickleLimits, UnsafePickleError, load_pickle

    data = pickle.dumps(list(range(5000)), protocol=2)
    assert len(load_pickle(data, "n.pkl", {})) == 5000
    with pytest.raises(UnsafePickleError) as err:
        load_pickle(data, "n.pkl", {}, limits=PickleLimits(max_objects=1000))
    assert err.value.bound == "objects" and "more than 1,000 objects" in str(err.value)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4])
def test_numpy_pickles_of_every_protocol_load(protocol: int) -> None:
    from tokenmix.utils.unpickle import NUMPY_ARRAY_GLOBALS, load_pickle

    obj = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [b"x", "y"], "i": 2**70}
    got = load_pickle(pickle.dumps(obj, protocol=protocol), "p.pkl", NUMPY_ARRAY_GLOBALS)
    assert np.array_equal(got["w"], obj["w"]) and got["b"] == obj["b"] and got["i"] == 2**70


def test_training_state_is_scanned_before_torch_load(tmp_path: Path) -> None:
    """``state.pt`` of a step checkpoint (read by --resume) gets the same pre-scan."""
    from tokenmix.engine.checkpoint import STATE_FILE, load_train_state

    step = tmp_path / "step_00000001"
    step.mkdir()
    bomb = with_data_pkl(tmp_path, "bomb.pth", lambda _: hex_bomb(22))
    bomb.rename(step / STATE_FILE)
    with pytest.raises(CheckpointError, match=r"state\.pt: cannot read the training state .*_codecs"):
        load_train_state(step)
