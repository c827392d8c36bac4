"""Pretrained weights: download, cache, resume, verification, offline mode, conversion.

Every test serves fake checkpoints (made here from the tiny ``test_*`` models, in the official
layouts) from a threaded HTTP server on 127.0.0.1, reached through
``TOKENMIX_WEIGHTS_BASE_URL``; a guard fails any connection to another host, so no test can
reach the internet.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import tokenmix
from tokenmix.cli.main import main as cli_main
from tokenmix.models import get_pretrained_cfg, hub, list_models, registry
from tokenmix.models.hub import ChecksumError, WeightsError

from .conftest import REFERENCE, require
from .fileserver import FileServer, serve

ARCH = "test_dfformer"


# --- a local weights server (tests/fileserver.py) -------------------------------------------
@pytest.fixture
def server() -> Iterator[FileServer]:
    with serve() as state:
        yield state


@pytest.fixture(autouse=True)
def _local_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse every connection that is not to 127.0.0.1: no test may reach the internet."""
    real = socket.create_connection

    def guarded(address, *args, **kwargs):  # type: ignore[no-untyped-def]
        if address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"test tried to reach {address}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: FileServer) -> Path:
    """A fresh cache, the mirror pointed at the local server, no retry delays."""
    monkeypatch.setenv(hub.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.setenv(hub.ENV_BASE_URL, server.url)
    monkeypatch.delenv(hub.ENV_OFFLINE, raising=False)
    monkeypatch.setattr(hub, "_RETRY_DELAY_S", 0.0)
    return tmp_path / "home" / "weights"


def publish(
    monkeypatch: pytest.MonkeyPatch,
    file_name: str,
    *,
    tag: str = "fake",
    arch: str = ARCH,
    **overrides: object,
) -> str:
    """Register weights ``arch.tag`` whose official URL is unreachable (``.invalid``).

    Only the mirror override can make them downloadable, so a test passing proves the override
    was used.
    """
    cfg = replace(
        get_pretrained_cfg(arch),
        tag=tag,
        url=f"https://weights.invalid/release/{file_name}",
        file_name=file_name,
        top1=12.5,
        **overrides,
    )
    monkeypatch.setitem(registry._CFGS[arch], tag, cfg)
    return f"{arch}.{tag}"


def _source_model(seed: int = 123) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tokenmix.create_model(ARCH).eval()


def _pth_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _output(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def official(monkeypatch: pytest.MonkeyPatch, server: FileServer, env: Path):
    """A published fake checkpoint: (name, file bytes, source model)."""
    source = _source_model()
    # the layout of a timm training script's release: state_dict under a key, plus metadata
    data = _pth_bytes({"state_dict": source.state_dict(), "epoch": 299})
    server.put("test_dfformer_fake.pth", data)
    name = publish(monkeypatch, "test_dfformer_fake.pth")
    return name, data, source


# --- tests -------------------------------------------------------------------------------------
def test_first_download_then_cache_hit_with_server_stopped(official, server, env) -> None:
    name, data, source = official
    model = tokenmix.create_model(name, pretrained=True)
    assert torch.equal(_output(model), _output(source))
    assert server.gets("test_dfformer_fake.pth") == [None]

    path = env / "test_dfformer_fake.pth"
    assert path.read_bytes() == data and not path.with_suffix(".pth.part").exists()
    record = json.loads((env / "test_dfformer_fake.pth.json").read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["num_bytes"] == len(data)
    assert record["url"] == f"{server.url}/test_dfformer_fake.pth"
    assert record["sha256_source"] == "recorded at download"

    server.stop()
    again = tokenmix.create_model(name, pretrained=True)
    assert torch.equal(_output(again), _output(source))
    assert len(server.requests) == 1


def test_resume_after_dropped_connection(official, server, env) -> None:
    name, data, source = official
    server.files["test_dfformer_fake.pth"].cut_after.append(len(data) // 3)
    path = hub.download_weights(name, progress=False)
    assert path.read_bytes() == data
    assert server.gets("test_dfformer_fake.pth") == [None, f"bytes={len(data) // 3}-"]
    assert torch.equal(_output(tokenmix.create_model(name, pretrained=True)), _output(source))


def _earlier_run_stopped_after(name: str, file: str, n: int, server, monkeypatch) -> None:
    """A run that lost its connection after ``n`` bytes and gave up: ``.part`` + its record."""
    server.files[file].cut_after.append(n)
    monkeypatch.setattr(hub, "_ATTEMPTS", 1)
    with pytest.raises(WeightsError, match=f"{n} bytes kept in"):
        hub.download_weights(name, progress=False)
    monkeypatch.setattr(hub, "_ATTEMPTS", 5)
    server.requests.clear()


def test_resume_partial_file_from_an_earlier_run(official, server, env, monkeypatch) -> None:
    name, data, _ = official
    _earlier_run_stopped_after(name, "test_dfformer_fake.pth", 1000, server, monkeypatch)
    assert (env / "test_dfformer_fake.pth.part").read_bytes() == data[:1000]
    assert hub.download_weights(name, progress=False).read_bytes() == data
    assert server.gets("test_dfformer_fake.pth") == ["bytes=1000-"]


def test_server_without_range_support_restarts_cleanly(official, server, env) -> None:
    name, data, _ = official
    server.honour_range = False
    server.files["test_dfformer_fake.pth"].cut_after.append(5000)
    assert hub.download_weights(name, progress=False).read_bytes() == data
    assert server.gets("test_dfformer_fake.pth") == [None, "bytes=5000-"]


def test_part_longer_than_the_file_starts_over(official, server, env, monkeypatch) -> None:
    name, data, _ = official
    _earlier_run_stopped_after(name, "test_dfformer_fake.pth", 1000, server, monkeypatch)
    (env / "test_dfformer_fake.pth.part").write_bytes(data + b"junk")
    assert hub.download_weights(name, progress=False).read_bytes() == data
    assert server.gets("test_dfformer_fake.pth") == [f"bytes={len(data) + 4}-", None]


def test_published_hash_is_checked(monkeypatch, server, env) -> None:
    data = _pth_bytes(_source_model().state_dict())
    server.put("good.pth", data)
    good = publish(monkeypatch, "good.pth", tag="good", sha256=hashlib.sha256(data).hexdigest())
    hub.download_weights(good, progress=False)
    assert json.loads((env / "good.pth.json").read_text())["sha256_source"] == "published"

    server.put("bad.pth", data)
    bad = publish(monkeypatch, "bad.pth", tag="bad", sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(ChecksumError, match=r"bad\.pth: SHA-256 .* does not match"):
        tokenmix.create_model(bad, pretrained=True)
    assert sorted(p.name for p in env.iterdir() if not p.name.endswith(".lock")) == [
        "good.pth",
        "good.pth.json",
    ]


def test_published_size_is_checked(monkeypatch, server, env) -> None:
    server.put("sized.pth", b"x" * 100)
    name = publish(monkeypatch, "sized.pth", tag="sized", num_bytes=99)
    with pytest.raises(ChecksumError, match="got 100 bytes, expected 99"):
        hub.download_weights(name, progress=False)
    assert not (env / "sized.pth").exists() and not (env / "sized.pth.part").exists()


def test_offline_mode_never_touches_the_network(official, server, env, monkeypatch) -> None:
    name, _, source = official
    monkeypatch.setenv(hub.ENV_OFFLINE, "1")
    with pytest.raises(WeightsError) as err:
        tokenmix.create_model(name, pretrained=True)
    message = str(err.value)
    assert f"{server.url}/test_dfformer_fake.pth" in message
    assert str(env / "test_dfformer_fake.pth") in message and "pretrained='/path/to/" in message
    assert server.requests == []

    monkeypatch.delenv(hub.ENV_OFFLINE)
    hub.download_weights(name, progress=False)
    monkeypatch.setenv(hub.ENV_OFFLINE, "1")
    assert torch.equal(_output(tokenmix.create_model(name, pretrained=True)), _output(source))
    assert len(server.requests) == 1


def test_unreachable_server_error_says_how_to_place_the_file(official, server, env) -> None:
    name, data, source = official
    server.stop()
    with pytest.raises(WeightsError) as err:
        tokenmix.create_model(name, pretrained=True)
    message = str(err.value)
    assert f"could not download {server.url}/test_dfformer_fake.pth" in message
    assert f"copy it to {env / 'test_dfformer_fake.pth'}" in message

    # following the advice works without any network
    (env / "test_dfformer_fake.pth").write_bytes(data)
    model = tokenmix.create_model(name, pretrained=True)
    assert torch.equal(_output(model), _output(source))
    record = json.loads((env / "test_dfformer_fake.pth.json").read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["sha256_source"] == "recorded when found in the cache"


def test_http_error_is_not_retried(monkeypatch, server, env) -> None:
    name = publish(monkeypatch, "missing.pth", tag="missing")
    with pytest.raises(WeightsError, match="answered HTTP 404"):
        hub.download_weights(name, progress=False)
    assert server.gets("missing.pth") == [None]


def test_corrupt_cached_file_is_reported_and_downloaded_again(official, server, env, caplog):
    name, data, source = official
    hub.download_weights(name, progress=False)
    path = env / "test_dfformer_fake.pth"
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed
    path.write_bytes(bytes(flipped))
    with caplog.at_level("WARNING", logger="tokenmix"):
        model = tokenmix.create_model(name, pretrained=True)
    assert "does not match the expected" in caplog.text and "downloading it again" in caplog.text
    assert torch.equal(_output(model), _output(source))
    assert path.read_bytes() == data and len(server.requests) == 2

    path.write_bytes(data[:-10])  # truncated
    caplog.clear()
    with caplog.at_level("WARNING", logger="tokenmix"):
        hub.download_weights(name, progress=False)
    assert "truncated or replaced" in caplog.text
    assert path.read_bytes() == data and len(server.requests) == 3


def test_unreadable_file_without_record_is_downloaded_again(official, server, env, caplog) -> None:
    name, data, source = official
    env.mkdir(parents=True)
    (env / "test_dfformer_fake.pth").write_bytes(b"not a checkpoint")  # placed by hand, wrong
    with caplog.at_level("WARNING", logger="tokenmix"):
        model = tokenmix.create_model(name, pretrained=True)
    assert "is unreadable" in caplog.text
    assert torch.equal(_output(model), _output(source))
    assert (env / "test_dfformer_fake.pth").read_bytes() == data


def test_unreadable_file_in_offline_mode_is_an_error(official, env, monkeypatch) -> None:
    name, _, _ = official
    env.mkdir(parents=True)
    (env / "test_dfformer_fake.pth").write_bytes(b"not a checkpoint")
    monkeypatch.setenv(hub.ENV_OFFLINE, "1")
    with pytest.raises(WeightsError, match="unreadable"):
        tokenmix.create_model(name, pretrained=True)


def test_bad_cached_copy_in_offline_mode_is_an_error(official, server, env, monkeypatch) -> None:
    name, data, _ = official
    hub.download_weights(name, progress=False)
    (env / "test_dfformer_fake.pth").write_bytes(data[:100])
    monkeypatch.setenv(hub.ENV_OFFLINE, "1")
    with pytest.raises(WeightsError, match="cached copy bad: size 100 bytes"):
        tokenmix.create_model(name, pretrained=True)
    assert len(server.requests) == 1


def test_architecture_without_weights_names_the_alternatives(env) -> None:
    with pytest.raises(WeightsError, match="gfformer_s18 has no published weights"):
        tokenmix.create_model("gfformer_s18", pretrained=True)
    if tokenmix.list_models("lvvit_l"):  # no 224 weights: the default cfg has none
        with pytest.raises(
            WeightsError, match=r"Published: lvvit_l\.tl_in1k_448, lvvit_l\.tl_in1k_512"
        ):
            hub.download_weights("lvvit_l")


def test_cache_dir_resolution(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(hub.ENV_HOME, str(tmp_path / "tm"))
    assert hub.cache_dir() == tmp_path / "tm" / "weights"
    monkeypatch.delenv(hub.ENV_HOME)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "tokenmix" / "weights"


def test_cli_download_and_models_listing(official, server, env, capsys) -> None:
    name, data, _ = official
    assert cli_main(["models", "--pretrained", "test_dfformer", "--no-macs"]) == 0
    out = capsys.readouterr().out
    assert f"weights cache: {env}" in out
    assert re.search(rf"{re.escape(name)}\s.*3x64x64\s+12\.5\s+1\.00\s+-$", out, re.M)

    assert cli_main(["download", "test_dfformer.*", "--no-progress"]) == 0
    out = capsys.readouterr().out
    path = env / "test_dfformer_fake.pth"
    assert f"{name}\t{path}\t" in out and hashlib.sha256(data).hexdigest() in out

    cli_main(["models", "--pretrained", "test_dfformer", "--no-macs"])
    assert re.search(
        rf"{re.escape(name)}\s.*\s{re.escape(str(path))}$", capsys.readouterr().out, re.M
    )

    assert cli_main(["download", "gfformer_s18", "--no-progress"]) == 1
    assert "no published weights" in capsys.readouterr().err


# --- issue 11: holes closed by tokenmix.download ------------------------------------------------
FAKE = "test_dfformer_fake.pth"


def test_resume_never_splices_a_replaced_file(official, server, env, monkeypatch) -> None:
    """Hole 1: the file changed on the server between runs; If-Range makes it send it whole."""
    name, data, _ = official
    _earlier_run_stopped_after(name, FAKE, 1000, server, monkeypatch)
    replaced = bytearray(data)
    replaced[500] ^= 0xFF  # same size, differs inside the part we already have
    server.put(FAKE, bytes(replaced))
    assert hub.download_weights(name, progress=False).read_bytes() == bytes(replaced)
    assert server.gets(FAKE) == ["bytes=1000-"]  # asked to resume, got the whole new file


def test_no_validator_means_no_resume(official, server, env) -> None:
    """Hole 1: without an ETag/Last-Modified a dropped download starts again from zero."""
    name, data, _ = official
    server.files[FAKE].etag = None
    server.files[FAKE].cut_after.append(3000)
    assert hub.download_weights(name, progress=False).read_bytes() == data
    assert server.gets(FAKE) == [None, None]


def test_body_without_length_that_ends_early_is_not_cached(official, server, env) -> None:
    """Hole 2: no Content-Length, no hash: the weights must load before they are kept."""
    name, data, source = official
    server.files[FAKE].send_length = False
    server.files[FAKE].cut_after.append(len(data) // 2)  # looks like a complete body to the client
    with pytest.raises(ChecksumError, match=r"sent no size .* does not load"):
        hub.download_weights(name, progress=False)
    assert sorted(p.name for p in env.iterdir()) == []
    model = tokenmix.create_model(name, pretrained=True)  # the whole body this time: loads
    assert torch.equal(_output(model), _output(source))
    assert (env / FAKE).read_bytes() == data


def test_recorded_hash_is_a_pin_until_refresh(official, server, env, capsys) -> None:
    """Hole 3: after local corruption a different download is refused, naming both hashes."""
    name, data, _ = official
    hub.download_weights(name, progress=False)
    old = hashlib.sha256(data).hexdigest()
    other = _pth_bytes({"state_dict": _source_model(seed=9).state_dict()})
    new = hashlib.sha256(other).hexdigest()
    server.put(FAKE, other)
    (env / FAKE).write_bytes(data[:-10])  # local corruption
    with pytest.raises(ChecksumError) as err:
        hub.download_weights(name, progress=False)
    assert old in str(err.value) and new in str(err.value) and "refresh" in str(err.value)
    assert not (env / FAKE).exists() and hub.cache_record(name)["sha256"] == old
    assert cli_main(["download", name, "--no-progress"]) == 1
    assert new in capsys.readouterr().err

    assert hub.download_weights(name, refresh=True, progress=False).read_bytes() == other
    assert hub.cache_record(name)["sha256"] == new
    server.put(FAKE, data)
    assert cli_main(["download", name, "--refresh", "--no-progress"]) == 0
    assert old in capsys.readouterr().out and (env / FAKE).read_bytes() == data


def test_name_resolution_failure_fails_at_once(official, env, monkeypatch) -> None:
    """Hole 19: no DNS: one try, an offline hint, no '0 bytes kept', no stale .lock file."""
    name, _, _ = official
    calls = []

    def no_dns(address, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(address)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_dns)
    with pytest.raises(WeightsError) as err:
        hub.download_weights(name, progress=False)
    message = str(err.value)
    assert "cannot be resolved" in message and hub.ENV_OFFLINE in message
    assert "bytes kept" not in message and f"copy it to {env / FAKE}" in message
    assert len(calls) == 1
    assert sorted(p.name for p in env.iterdir()) == []


def _unwritable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder.chmod(0o555)
    try:  # root ignores modes: make the write probe fail as a read-only mount would
        (folder / ".probe").touch()
    except OSError:
        return
    (folder / ".probe").unlink()
    from tokenmix import download as dl

    def denied(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dl.tempfile, "mkstemp", denied)


def test_read_only_cache_fails_at_once_naming_the_folder(official, server, env, monkeypatch):
    name, _, _ = official
    env.mkdir(parents=True)
    _unwritable(env, monkeypatch)
    try:
        with pytest.raises(WeightsError, match=f"the folder {re.escape(str(env))} is not writ"):
            hub.download_weights(name, progress=False)
    finally:
        env.chmod(0o755)
    assert server.requests == []


def test_cache_folder_that_cannot_be_created_fails_at_once(official, server, env, monkeypatch):
    name, _, _ = official
    blocker = env.parent.parent / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(hub.ENV_HOME, str(blocker / "home"))
    with pytest.raises(WeightsError, match=f"cannot create the folder {re.escape(str(blocker))}"):
        hub.download_weights(name, progress=False)
    assert server.requests == []


def test_read_only_cache_holding_the_file_still_works(official, server, env, monkeypatch):
    name, _, source = official
    hub.download_weights(name, progress=False)
    _unwritable(env, monkeypatch)
    try:
        model = tokenmix.create_model(name, pretrained=True)
    finally:
        env.chmod(0o755)
    assert torch.equal(_output(model), _output(source)) and len(server.requests) == 1


# --- the weights table ---------------------------------------------------------------------------
def test_weights_table_has_provenance() -> None:
    names = list_models(pretrained=True)
    assert len(names) >= 40
    files = []
    for name in names:
        cfg = get_pretrained_cfg(name)
        assert cfg.url.startswith("https://") and cfg.url.endswith("/" + cfg.file_name), name
        assert cfg.license and cfg.source and cfg.paper.startswith("https://arxiv.org/"), name
        assert cfg.top1 is None or 75.0 < cfg.top1 < 90.0, name
        assert cfg.sha256 is None or re.fullmatch("[0-9a-f]{64}", cfg.sha256), name
        res = re.search(r"_(\d{3})$", cfg.tag)
        assert cfg.input_size == (
            3,
            int(res.group(1)) if res else 224,
            int(res.group(1)) if res else 224,
        )
        files.append(cfg.file_name)
    assert len(files) == len(set(files)), "cache file names must be unique"
    assert get_pretrained_cfg("caformer_b36.in21k_ft_in1k_384").top1 == 88.1
    assert get_pretrained_cfg("convformer_s18").tag == "in1k"
    assert get_pretrained_cfg("dfformer_s18").url.endswith(
        "okojoalg/dfformer/releases/download/weights/dfformer_s18.pth"
    )


@pytest.mark.parametrize(
    ("name", "res"),
    [
        ("caformer_s18.in1k_384", 384),
        ("dfformer_s18", 224),
        ("lvvit_s.tl_in1k_384", 384),
        ("lvvit_m.tl_in1k_448", 448),
        ("lvvit_l.tl_in1k_512", 512),
    ],
)
def test_resolution_tags_build_at_their_size(name: str, res: int) -> None:
    if not tokenmix.list_models(name.split(".")[0]):
        pytest.skip(f"{name.split('.')[0]} is not registered yet")
    with torch.device("meta"):
        model = tokenmix.create_model(name)
    assert model.pretrained_cfg.input_size == (3, res, res)
    assert tuple(model.img_size) == (res, res)


# --- Paddle ------------------------------------------------------------------------------------
def _paddle_layout(model: torch.nn.Module) -> dict[str, object]:
    """``paddle.save(model.state_dict())`` of the same network: numpy arrays, Linear [in, out]."""
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    state: dict[str, object] = {}
    for key, value in model.state_dict().items():
        array = value.detach().numpy()
        state[key] = np.ascontiguousarray(array.T if key in linear else array)
    state["StructuredToParameterName@@"] = {k: f"param_{i}" for i, k in enumerate(state)}
    return state


def test_paddle_checkpoint_is_converted_on_the_fly(monkeypatch, server, env) -> None:
    paddle = pytest.importorskip("tokenmix.models.paddle")
    if not hasattr(paddle, "convert_paddle_metaformer"):
        pytest.skip("tokenmix.models.paddle.convert_paddle_metaformer is not written yet")
    source = _source_model(seed=5)
    server.put("test_dfformer_fake.pdparams", pickle.dumps(_paddle_layout(source), protocol=4))
    name = publish(
        monkeypatch, "test_dfformer_fake.pdparams", tag="paddle", source_format="pdparams"
    )
    model = tokenmix.create_model(name, pretrained=True)
    assert torch.allclose(_output(model), _output(source), atol=1e-6)
    assert server.gets("test_dfformer_fake.pdparams") == [None]


def test_real_paddle_file_served_and_converted(monkeypatch, server, env) -> None:
    """The reference ``.pdparams`` written by Paddle itself, downloaded and loaded: same logits."""
    case = require(REFERENCE / "paddle" / "seed_dfformer_tiny.pdparams")
    server.put("seed_dfformer_tiny.pdparams", case.read_bytes())
    name = publish(monkeypatch, "seed_dfformer_tiny.pdparams", tag="seed", source_format="pdparams")
    model = tokenmix.create_model(name, pretrained=True).eval()
    expected = np.load(case.with_suffix(".npz"))
    with torch.no_grad():
        out = model(torch.from_numpy(expected["input"]))
    assert (out - torch.from_numpy(expected["output"])).abs().max() <= 1e-5
