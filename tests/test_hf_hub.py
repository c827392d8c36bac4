"""Weights on the Hugging Face Hub, fetched through ``huggingface_hub``.

A fake Hub on 127.0.0.1 answers the two requests ``hf_hub_download`` makes per file (``HEAD``
then ``GET`` of ``/<repo>/resolve/<revision>/<path>``, with the ``X-Repo-Commit``,
``X-Linked-Etag`` and ``X-Linked-Size`` headers of a Git LFS file); huggingface_hub's endpoint
and cache are pointed at it and at a temporary folder, and a guard fails any connection to
another host.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

import tokenmix
from tokenmix.extras import MissingExtraError
from tokenmix.models import get_pretrained_cfg, hub, registry, timm_layout
from tokenmix.models.hub import ChecksumError, HfFile, WeightsError

hf_lib = pytest.importorskip("huggingface_hub", reason="huggingface_hub (the hub extra) missing")
hf_constants = pytest.importorskip("huggingface_hub.constants")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


# --- a fake Hub ----------------------------------------------------------------------------------
@dataclass
class FakeHub:
    url: str = ""
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # file requests only

    def put(self, repo_id: str, filename: str, body: bytes) -> str:
        self.files[(repo_id, filename)] = body
        return hashlib.sha256(body).hexdigest()

    def asked(self, method: str | None = None) -> list[str]:
        return [p for m, p in self.requests if method is None or m == method]


class _HubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, body_too: bool) -> None:
        state: FakeHub = self.server.state  # type: ignore[attr-defined]
        parts = self.path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":  # e.g. /api/agent-harnesses: no such API
            self.send_error(404)
            return
        state.requests.append((self.command, self.path))
        repo_id, filename = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
        if not any(r == repo_id for r, _ in state.files):
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = state.files.get((repo_id, filename))
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        digest = hashlib.sha256(body).hexdigest()
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{digest}"')
        self.send_header("X-Linked-Etag", f'"{digest}"')
        self.send_header("X-Linked-Size", str(len(body)))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body_too:
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._answer(body_too=False)

    def do_GET(self) -> None:
        self._answer(body_too=True)


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    server.daemon_threads = True
    state = FakeHub(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


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
def hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_hub: FakeHub) -> Path:
    """huggingface_hub's endpoint -> the fake Hub, its caches -> tmp; our cache empty; online.

    huggingface_hub reads HF_ENDPOINT / HF_HUB_CACHE once, at import, into ``constants``; the
    tests set those constants (its download code reads them at call time).
    """
    constants = hf_constants
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        fake_hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # huggingface_hub caches an /api/ answer under HF_HOME; keep it out of the real one
    monkeypatch.setattr(
        constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agents.json"), raising=False
    )
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(hub.ENV_HOME, str(tmp_path / "tokenmix"))
    monkeypatch.delenv(hub.ENV_OFFLINE, raising=False)
    monkeypatch.delenv(hub.ENV_BASE_URL, raising=False)
    return tmp_path / "hf"


def _source(arch: str = "test_caformer", seed: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = tokenmix.create_model(arch)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _pth(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _out(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return model.eval()(x)


# --- hf-hub: references ----------------------------------------------------------------------------
def test_parse_hf_hub_reference() -> None:
    assert hub.parse_hf_hub("hf-hub:timm/caformer_s18.sail_in1k") == (
        "timm/caformer_s18.sail_in1k",
        None,
        None,
    )
    assert hub.parse_hf_hub("hf-hub:sail/dl@v1/caformer/caformer_s18.pth") == (
        "sail/dl",
        "v1",
        "caformer/caformer_s18.pth",
    )
    with pytest.raises(ValueError, match="not a Hugging Face Hub reference"):
        hub.parse_hf_hub("hf-hub:no-repo")


def test_timm_repo_in_timm_layout_loads(hf_env, fake_hub) -> None:
    """``pretrained="hf-hub:timm/..."``: model.safetensors in timm's layout, converted."""
    source = _source()
    theirs = timm_layout.tokenmix_to_timm(source.state_dict())
    fake_hub.put("timm/test_caformer.fake", "model.safetensors", safetensors_bytes(theirs))
    model = tokenmix.create_model("test_caformer", pretrained="hf-hub:timm/test_caformer.fake")
    timm_layout.match_timm_numerics(source)  # the loaded model runs timm's head epsilon
    assert torch.allclose(_out(model), _out(source), atol=1e-6)
    file = "/timm/test_caformer.fake/resolve/main/model.safetensors"
    assert fake_hub.requests == [("HEAD", file), ("GET", file)]
    assert list(hf_env.glob("models--timm--test_caformer.fake/snapshots/*/model.safetensors"))


def test_falls_back_to_pytorch_model_bin_then_works_offline(hf_env, fake_hub, monkeypatch):
    source = _source("test_dfformer")
    fake_hub.put("org/plain", "pytorch_model.bin", _pth(source.state_dict()))
    model = tokenmix.create_model("test_dfformer", pretrained="hf-hub:org/plain")
    assert torch.equal(_out(model), _out(source))
    assert fake_hub.asked("HEAD") == [
        "/org/plain/resolve/main/model.safetensors",
        "/org/plain/resolve/main/pytorch_model.bin",
    ]

    fake_hub.requests.clear()
    for env in ("HF_HUB_OFFLINE", hub.ENV_OFFLINE):  # either one: the cache only
        with monkeypatch.context() as m:
            m.setenv(env, "1")
            again = tokenmix.create_model("test_dfformer", pretrained="hf-hub:org/plain")
        assert torch.equal(_out(again), _out(source)) and fake_hub.requests == []

    monkeypatch.setenv(hub.ENV_OFFLINE, "1")
    with pytest.raises(WeightsError, match="offline"):
        tokenmix.create_model("test_dfformer", pretrained="hf-hub:org/other")
    assert fake_hub.requests == []


def test_missing_files_are_named(hf_env, fake_hub) -> None:
    fake_hub.put("org/repo", "README.md", b"no weights here")
    with pytest.raises(WeightsError, match=r"model\.safetensors .*pytorch_model\.bin"):
        tokenmix.create_model("test_dfformer", pretrained="hf-hub:org/repo")
    with pytest.raises(WeightsError, match=r"hf-hub:org/repo/w\.pth"):
        tokenmix.create_model("test_dfformer", pretrained="hf-hub:org/repo/w.pth")
    with pytest.raises(WeightsError, match="org/none"):
        tokenmix.create_model("test_dfformer", pretrained="hf-hub:org/none")


def test_corrupted_cached_file_is_fetched_again(hf_env, fake_hub, caplog) -> None:
    source = _source("test_dfformer")
    digest = fake_hub.put("org/plain", "model.safetensors", safetensors_bytes(source.state_dict()))
    path = hub.download_hf_hub("hf-hub:org/plain")
    assert path.resolve().name == digest  # the blob is named by the SHA-256 the Hub publishes
    blob = path.resolve()
    blob.write_bytes(blob.read_bytes()[:-8] + b"garbage!")  # same size, other bytes
    fake_hub.requests.clear()
    with caplog.at_level(logging.WARNING, logger="tokenmix"):
        model = tokenmix.create_model("test_dfformer", pretrained="hf-hub:org/plain")
    assert "is corrupt" in caplog.text and digest in caplog.text
    assert torch.equal(_out(model), _out(source))
    assert fake_hub.asked("GET") == ["/org/plain/resolve/main/model.safetensors"]

    blob.write_bytes(blob.read_bytes()[:-8] + b"garbage!")
    with pytest.MonkeyPatch.context() as m:
        m.setenv(hub.ENV_OFFLINE, "1")
        with pytest.raises(ChecksumError, match="corrupt"):
            hub.download_hf_hub("hf-hub:org/plain")


def test_without_huggingface_hub_the_extra_is_named(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(MissingExtraError, match=r"tokenmix\[hub\]"):
        tokenmix.create_model("test_dfformer", pretrained="hf-hub:org/repo")
    # the published sail/dl files then use our downloader
    assert hub._hub_route(hub.resolve("caformer_s18")) is None


# --- published weights hosted on the Hub (sail/dl) -----------------------------------------------
def test_published_hub_files_route_through_huggingface_hub(monkeypatch) -> None:
    w = hub.resolve("caformer_s18.in21k_ft_in1k_384")
    assert hub._hub_route(w) == HfFile("sail/dl", "caformer/caformer_s18_384_in21ft1k.pth", "main")
    assert hub._hub_route(hub.resolve("dfformer_s18")) is None  # GitHub release: ours
    assert hub._hub_route(hub.resolve("lvvit_s")) is None
    monkeypatch.setenv(hub.ENV_BASE_URL, "http://127.0.0.1:9")  # a mirror: ours
    assert hub._hub_route(hub.resolve("caformer_s18")) is None
    assert hub.hf_file_of_url("https://example.com/sail/dl/resolve/main/x.pth") is None


def _publish_on_hub(monkeypatch, arch: str, filename: str) -> str:
    cfg = replace(
        get_pretrained_cfg(arch),
        tag="hubfake",
        url=f"https://huggingface.co/sail/dl/resolve/main/{filename}",
        file_name=filename.rsplit("/", 1)[-1],
    )
    monkeypatch.setitem(registry._CFGS[arch], "hubfake", cfg)
    return f"{arch}.hubfake"


def test_published_hub_weights_use_the_hf_cache(hf_env, fake_hub, monkeypatch, capsys) -> None:
    source = _source("test_convformer")
    body = _pth(source.state_dict())
    digest = fake_hub.put("sail/dl", "convformer/test_convformer.pth", body)
    name = _publish_on_hub(monkeypatch, "test_convformer", "convformer/test_convformer.pth")
    assert hub.cached_path(name) is None

    model = tokenmix.create_model(name, pretrained=True)
    assert torch.equal(_out(model), _out(source))
    assert fake_hub.asked("GET") == ["/sail/dl/resolve/main/convformer/test_convformer.pth"]
    assert not (hub.cache_dir() / "test_convformer.pth").exists()  # not in our cache
    cached = hub.cached_path(name)
    assert cached is not None and cached.is_relative_to(hf_env)
    record = hub.cache_record(name)
    assert record is not None and record["sha256"] == digest and record["num_bytes"] == len(body)

    from tokenmix.cli.main import main as cli_main

    assert cli_main(["download", name, "--no-progress"]) == 0
    assert digest in capsys.readouterr().out
    assert len(fake_hub.asked("GET")) == 1  # the cached copy, not a second download


def test_published_file_already_in_our_cache_is_used(hf_env, fake_hub, monkeypatch) -> None:
    """A copy placed in tokenmix's cache (by hand, or before huggingface_hub was installed)."""
    source = _source("test_convformer")
    name = _publish_on_hub(monkeypatch, "test_convformer", "convformer/test_convformer.pth")
    hub.cache_dir().mkdir(parents=True)
    (hub.cache_dir() / "test_convformer.pth").write_bytes(_pth(source.state_dict()))
    model = tokenmix.create_model(name, pretrained=True)
    assert torch.equal(_out(model), _out(source)) and fake_hub.requests == []
