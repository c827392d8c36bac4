"""Official weights: download once, verify, cache, and load strictly.

``create_model(name, pretrained=True)`` ends here. A weight file lives in the cache under its
official file name (``$TOKENMIX_HOME/weights/<file_name>``, default
``~/.cache/tokenmix/weights``), next to a sidecar ``<file_name>.json`` that records where it came
from, its size and its SHA-256. The authors publish no hashes, so the sidecar's hash, taken
when the file was first downloaded, is what every later use is checked against: a file that
was truncated or altered since is reported and fetched again, never loaded as it is, and the
new download must have that same hash (a pin: ``refresh=True`` / ``tokenmix download --refresh``
accepts a replaced upstream file).

Environment:

- ``TOKENMIX_HOME``: cache root (weights go to its ``weights/`` folder).
- ``TOKENMIX_OFFLINE=1``: never open a connection; only cached files can be used.
- ``TOKENMIX_WEIGHTS_BASE_URL``: a mirror holding the files under their official names
  (``<base>/<file_name>``), e.g. a copy of someone's cache served over HTTP; tests point it at
  a local server.

The transfer itself is :func:`tokenmix.download.download_file`: ``<file_name>.part``, resumed
with ``Range`` + ``If-Range`` (also across runs), size and hash checks, a file lock, bounded
retries. When neither a size nor a hash is known, the file must load as weights to be kept.

**Files on the Hugging Face Hub** (the ConvFormer / CAFormer weights in ``sail/dl``, and any
``pretrained="hf-hub:org/repo"``) go through ``huggingface_hub`` when it is installed (the
``hub`` extra): its cache (``HF_HOME`` / ``HF_HUB_CACHE``), locking, resume after a dropped
connection and offline mode (``HF_HUB_OFFLINE``, and ``TOKENMIX_OFFLINE`` too) replace ours for
those files, and on every use the file is checked against the SHA-256 the Hub publishes for it
(the Git LFS object id its cache names the file by). A copy already in our cache (downloaded
before ``huggingface_hub`` was installed, or placed there by hand) is still used first; without
``huggingface_hub`` these files go through our downloader like the GitHub-release ones. A
mirror (``TOKENMIX_WEIGHTS_BASE_URL``) always goes through our downloader.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

from tokenmix import download as dl
from tokenmix.download import ENV_OFFLINE, DownloadError, FolderError, file_lock, is_offline
from tokenmix.utils import atomic_write, sha256_file

from ..extras import require
from .checkpoint import (
    CheckpointError,
    LoadReport,
    checkpoint_format,
    load_weights,
    read_state_dict,
)
from .pretrained import PretrainedCfg
from .registry import get_pretrained_cfg, list_pretrained_cfgs, split_model_name

__all__ = [
    "ENV_BASE_URL",
    "ENV_HOME",
    "ENV_OFFLINE",
    "HF_HUB_PREFIX",
    "ChecksumError",
    "HfFile",
    "Weights",
    "WeightsError",
    "cache_dir",
    "cache_record",
    "cached_path",
    "download_hf_hub",
    "download_weights",
    "hf_file_of_url",
    "is_offline",
    "load_pretrained",
    "parse_hf_hub",
    "resolve",
    "sha256_file",
]

log = logging.getLogger("tokenmix")

ENV_HOME = "TOKENMIX_HOME"
ENV_BASE_URL = "TOKENMIX_WEIGHTS_BASE_URL"

# passed to tokenmix.download at each call (tests shorten them)
_ATTEMPTS = dl.ATTEMPTS
_RETRY_DELAY_S = dl.RETRY_DELAY_S
_TIMEOUT_S = dl.TIMEOUT_S


class WeightsError(DownloadError):
    """Weights that cannot be fetched or verified; the message says how to get them by hand."""


class ChecksumError(WeightsError, dl.ChecksumError):
    """A downloaded or cached file whose size or SHA-256 differs from the expected one."""


@dataclass(frozen=True)
class Weights:
    """One published weight file resolved for this machine: where from, where to."""

    name: str  # arch.tag
    cfg: PretrainedCfg
    url: str  # after the mirror override
    path: Path  # final location in the cache

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    @property
    def part(self) -> Path:
        return self.path.with_name(self.path.name + ".part")


# --- configuration ---------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$TOKENMIX_HOME/weights``, else ``$XDG_CACHE_HOME/tokenmix/weights`` or ``~/.cache/...``."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser() / "weights"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "tokenmix" / "weights"


def resolve(name: str | PretrainedCfg) -> Weights:
    """Published weights for ``arch`` (its default tag) or ``arch.tag``, or for a cfg itself.

    Raises:
        WeightsError: the cfg has no published weights; lists the tags that do.
    """
    if isinstance(name, PretrainedCfg):
        cfg, full = name, name.tag or name.file_name
    else:
        cfg = get_pretrained_cfg(name)
        arch, _ = split_model_name(name)
        full = cfg.full_name(arch)
        if not cfg.has_weights:
            tagged = [c.full_name(arch) for c in list_pretrained_cfgs(arch) if c.has_weights]
            hint = f" Published: {', '.join(tagged)}." if tagged else ""
            raise WeightsError(
                f"{full} has no published weights.{hint} To load your own checkpoint, pass "
                "pretrained='/path/to/checkpoint' instead of pretrained=True."
            )
    if not cfg.has_weights:
        raise WeightsError(f"{full}: the cfg has no url")
    file_name = cfg.file_name or cfg.url.rsplit("/", 1)[-1]
    base = os.environ.get(ENV_BASE_URL, "").strip()
    url = f"{base.rstrip('/')}/{file_name}" if base else cfg.url
    return Weights(name=full, cfg=cfg, url=url, path=cache_dir() / file_name)


# --- public API --------------------------------------------------------------------------------
def download_weights(
    name: str | PretrainedCfg,
    *,
    force: bool = False,
    refresh: bool = False,
    progress: bool = True,
) -> Path:
    """The verified cached file of ``name``'s weights, downloaded first if needed.

    The SHA-256 recorded when the file was first downloaded is a pin: a later download (after
    the cached copy was corrupted, or with ``force``) must produce the same file.

    Args:
        name: ``arch`` or ``arch.tag`` (or a :class:`PretrainedCfg` with a url).
        force: download again even when a verified copy is cached.
        refresh: download again and accept a file whose SHA-256 differs from the recorded one
            (the upstream file was replaced); a published hash is still enforced.
        progress: show a tqdm progress bar while downloading.

    Raises:
        WeightsError: offline without a cached copy, a cache folder that cannot be written, or
            the download failed; the message names the URL and where to put the file by hand.
        ChecksumError: the downloaded file does not match the published size or SHA-256, or
            not the recorded SHA-256 (pass ``refresh=True`` to replace that).
    """
    w = resolve(name)
    force = force or refresh
    hf = _hub_route(w)
    if hf is not None and (force or not w.path.is_file()):
        return _hf_download(hf, w.name, force=force, progress=progress)
    try:
        dl.prepare_folder(w.path.parent)
        folder_error: FolderError | None = None
    except FolderError as e:  # a read-only shared cache is fine while it holds the file
        folder_error = e
    with file_lock(w.path) if folder_error is None else contextlib.nullcontext():
        problem = "download forced" if force else _check_cached(w)
        if problem is None:
            return w.path
        state = "not in the cache" if problem == "not cached" else f"cached copy bad: {problem}"
        if is_offline():
            raise WeightsError(
                f"{w.name}: {state}, and {ENV_OFFLINE} is set, so {w.url} was not fetched."
                f"\n{_manual_hint(w)}"
            )
        if folder_error is not None:
            raise WeightsError(
                f"{w.name}: {state}, and it cannot be downloaded: {folder_error} (or set "
                f"{ENV_HOME} to a writable cache).\n{_manual_hint(w)}"
            )
        pin = None if refresh else (_read_sidecar(w) or {}).get("sha256")
        if w.path.exists():
            if not force:
                log.warning("%s: %s; downloading it again", w.path, problem)
            w.path.unlink()
        _download(w, pin=pin, progress=progress)
    return w.path


def load_pretrained(model: nn.Module, name: str) -> LoadReport:
    """Load ``name``'s official weights into ``model`` (called by ``create_model``).

    The file is converted by the model's ``checkpoint_filter_fn`` when its ``source_format``
    says so (Paddle), and loaded strictly. A cached file that cannot be read (truncated,
    corrupt) is reported, deleted and downloaded again once; the second failure is an error.
    """
    w = resolve(name)
    path = download_weights(name)
    try:
        state = read_state_dict(path)
    except CheckpointError as e:
        if is_offline():
            raise WeightsError(
                f"{path} is unreadable ({e}) and {ENV_OFFLINE} is set.\n{_manual_hint(w)}"
            ) from e
        # its hash matched the record, so the record is of this unreadable file: no pin
        log.warning("%s is unreadable (%s); downloading it again", path, e)
        path = download_weights(name, refresh=True)
        state = read_state_dict(path)
    report = load_weights(model, state, source_format=w.cfg.source_format)
    report.source = f"{w.name} ({path})"
    log.info("loaded %s from %s (licence: %s)", w.name, path, w.cfg.license or "not stated")
    return report


def cached_path(name: str | PretrainedCfg) -> Path | None:
    """The cached file of ``name`` if present with its recorded size (cheap: no hashing).

    A file copied in by hand has no record yet and counts as cached; its hash is checked and
    recorded on first use. A Hub file not in our cache is looked up in the Hugging Face cache.
    """
    w = resolve(name)
    if not w.path.is_file():
        hf = _hub_route(w)
        return None if hf is None else _hf_cached(hf)
    meta = _read_sidecar(w)
    if meta is not None and w.path.stat().st_size != meta.get("num_bytes"):
        return None
    return w.path


def cache_record(name: str | PretrainedCfg) -> dict[str, Any] | None:
    """The sidecar of ``name``'s cached file: url, num_bytes, sha256 and how it was obtained.

    For a file in the Hugging Face cache: the same fields, the SHA-256 being the one the Hub
    publishes (its Git LFS object id).
    """
    w = resolve(name)
    hf = _hub_route(w)
    if hf is None or w.path.is_file():
        return _read_sidecar(w)
    path = _hf_cached(hf)
    if path is None:
        return None
    return {
        "name": w.name,
        "url": w.url,
        "path": str(path),
        "num_bytes": path.stat().st_size,
        "sha256": _lfs_sha256(path),
        "sha256_source": "published by the Hugging Face Hub (Git LFS object id)",
    }


# --- cache checks ------------------------------------------------------------------------------
def _check_cached(w: Weights) -> str | None:
    """``None`` when the cached file is present and verified, else what is wrong with it.

    A file placed by hand (no sidecar) is accepted when it matches the published hash, or when
    no hash is published; its hash is then recorded so later changes are caught.
    """
    if not w.path.is_file():
        return "not cached"
    size = w.path.stat().st_size
    meta = _read_sidecar(w)
    expected_size = w.cfg.num_bytes or (meta or {}).get("num_bytes")
    if expected_size is not None and size != expected_size:
        return f"size {size} bytes, expected {expected_size} (truncated or replaced?)"
    expected_hash = w.cfg.sha256 or (meta or {}).get("sha256")
    actual = sha256_file(w.path)
    if expected_hash is not None and actual != expected_hash.lower():
        return f"SHA-256 {actual} does not match the expected {expected_hash}"
    if meta is None:
        log.info("%s: found in the cache without a record; recording its SHA-256", w.path)
        try:
            _write_sidecar(w, size, actual, "recorded when found in the cache")
        except OSError as e:  # a read-only shared cache: use the file, just do not record it
            log.warning("%s: cannot record its SHA-256 (%s)", w.sidecar, e)
    return None


def _read_sidecar(w: Weights) -> dict[str, Any] | None:
    try:
        meta = json.loads(w.sidecar.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable record (%s); ignoring it", w.sidecar, e)
        return None
    return meta if isinstance(meta, dict) else None


def _write_sidecar(w: Weights, num_bytes: int, sha256: str, how: str) -> None:
    meta = {
        "name": w.name,
        "url": w.url,
        "num_bytes": num_bytes,
        "sha256": sha256,
        "sha256_source": "published" if w.cfg.sha256 else how,
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(w.sidecar, lambda tmp: tmp.write_text(text))


# --- download ----------------------------------------------------------------------------------
def _download(w: Weights, *, pin: str | None, progress: bool) -> None:
    """Fetch ``w.url`` with :func:`tokenmix.download.download_file`, then record it."""
    published = w.cfg.sha256.lower() if w.cfg.sha256 else None
    fmt = checkpoint_format(w.path)
    try:
        got = dl.download_file(
            w.url,
            w.path,
            sha256=published or pin,
            size=w.cfg.num_bytes,
            verify=lambda part: _check_loads(part, fmt),
            progress=progress,
            desc=w.path.name,
            timeout=_TIMEOUT_S,
            attempts=_ATTEMPTS,
            retry_delay=_RETRY_DELAY_S,
            lock=False,
        )
    except dl.ChecksumError as e:
        if e.algorithm == "sha256" and published:
            raise ChecksumError(
                f"{w.url}: SHA-256 {e.actual} does not match the published {published}; the "
                "file was deleted. The server may hold a different file than the one published."
            ) from None
        if e.algorithm == "sha256":
            raise ChecksumError(
                f"{w.name}: {w.url} now serves a file with SHA-256 {e.actual}, but SHA-256 "
                f"{pin} was recorded when it was first downloaded ({w.sidecar}); the new file "
                "was deleted. If the upstream file was really replaced, accept it with "
                f"download_weights({w.name!r}, refresh=True) or `tokenmix download --refresh "
                f"{w.name}`."
            ) from None
        raise ChecksumError(f"{w.name}: {e}") from None
    except DownloadError as e:
        raise WeightsError(f"{w.name}: {e}\n{_manual_hint(w)}") from None
    _write_sidecar(w, got.num_bytes, got.sha256, "recorded at download")
    log.info("%s: saved %s (%d bytes, sha256 %s)", w.name, w.path, got.num_bytes, got.sha256)


def _check_loads(path: Path, fmt: str) -> None:
    """Read a downloaded ``.part`` as weights of format ``fmt`` (it has no telling suffix)."""
    if fmt == "safetensors":
        from safetensors.torch import load_file

        load_file(str(path))
    elif fmt == "pdparams":
        from .paddle import read_pdparams

        read_pdparams(path)
    else:
        read_state_dict(path)  # a ``.part`` reads as a PyTorch file, weights_only


# --- Hugging Face Hub --------------------------------------------------------------------------
HF_HUB_PREFIX = "hf-hub:"
# what a model repository holds, in the order tried (timm's and transformers' file names)
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_HOSTS = ("huggingface.co", "hf.co")
_HF_SPEC = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[^/]+))?(?:/(?P<filename>.+))?")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HfFile:
    """One file of a Hugging Face Hub repository (``revision=None``: its default branch)."""

    repo_id: str
    filename: str
    revision: str | None = None

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{HF_HUB_PREFIX}{self.repo_id}{at}/{self.filename}"


def hf_file_of_url(url: str) -> HfFile | None:
    """The Hub file behind ``https://huggingface.co/<org>/<repo>/resolve/<revision>/<path>``.

    ``None`` for any other URL (GitHub releases, mirrors): those keep our downloader.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or parts.hostname not in _HF_HOSTS:
        return None
    segments = [urllib.parse.unquote(p) for p in parts.path.strip("/").split("/")]
    if len(segments) < 5 or segments[2] != "resolve":
        return None
    return HfFile(f"{segments[0]}/{segments[1]}", "/".join(segments[4:]), segments[3])


def parse_hf_hub(spec: str) -> tuple[str, str | None, str | None]:
    """``"hf-hub:org/repo[@revision][/path/in/repo]"`` -> ``(repo_id, revision, filename)``.

    Raises:
        ValueError: not of that form.
    """
    body = spec[len(HF_HUB_PREFIX) :] if spec.startswith(HF_HUB_PREFIX) else spec
    m = _HF_SPEC.fullmatch(body)
    if m is None:
        raise ValueError(
            f"{spec!r} is not a Hugging Face Hub reference: use 'hf-hub:org/repo', "
            "'hf-hub:org/repo@revision' or 'hf-hub:org/repo/path/to/file.safetensors'"
        )
    return m["repo"], m["revision"], m["filename"]


def download_hf_hub(spec: str, *, force: bool = False, progress: bool = True) -> Path:
    """The local path of the weights at ``"hf-hub:org/repo"``, through ``huggingface_hub``.

    Without a file name, the repository's ``model.safetensors`` is used, else its
    ``pytorch_model.bin`` (how timm and transformers publish weights). The file lands in the
    Hugging Face cache and is checked against the SHA-256 the Hub publishes for it.

    Raises:
        MissingExtraError: ``huggingface_hub`` is not installed (``pip install 'tokenmix[hub]'``).
        WeightsError: the repository or file does not exist, or cannot be fetched (offline).
        ValueError: ``spec`` is malformed.
    """
    repo_id, revision, filename = parse_hf_hub(spec)
    hf = _huggingface_hub(spec)
    if filename is not None:
        return _hf_download(
            HfFile(repo_id, filename, revision), spec, force=force, progress=progress
        )
    tried = []
    for candidate in _HF_WEIGHT_FILES:
        f = HfFile(repo_id, candidate, revision)
        try:
            return _hf_download(f, spec, force=force, progress=progress, missing_ok=True)
        except hf.utils.EntryNotFoundError as e:
            tried.append(f"{candidate} ({_first_line(e)})")
    if _hf_offline(hf):
        raise WeightsError(
            f"{spec}: none of {', '.join(_HF_WEIGHT_FILES)} is in the Hugging Face cache, and "
            "offline mode is set (TOKENMIX_OFFLINE or HF_HUB_OFFLINE)."
        )
    raise WeightsError(
        f"{spec}: the repository holds none of the weight files tried: {'; '.join(tried)}. "
        f"Name the file: '{HF_HUB_PREFIX}{repo_id}/<file name>'."
    )


def _huggingface_hub(what: object) -> Any:
    """``huggingface_hub`` with its ``utils`` and ``constants`` loaded (it imports them lazily)."""
    hf = require("huggingface_hub", "hub", f"downloading {what} from the Hugging Face Hub")
    importlib.import_module("huggingface_hub.constants")
    importlib.import_module("huggingface_hub.utils")
    return hf


def _hub_route(w: Weights) -> HfFile | None:
    """The Hub file to fetch ``w`` through ``huggingface_hub``, or ``None`` for our downloader.

    ``None`` when the file is not on the Hub, when a mirror replaces its URL, or when
    ``huggingface_hub`` is not installed (our downloader fetches the same URL then).
    """
    if w.url != w.cfg.url:  # TOKENMIX_WEIGHTS_BASE_URL
        return None
    f = hf_file_of_url(w.url)
    if f is None:
        return None
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        log.debug("%s: huggingface_hub not installed; using tokenmix's downloader", w.name)
        return None
    return f


def _hf_offline(hf: Any) -> bool:
    """``TOKENMIX_OFFLINE``, or ``HF_HUB_OFFLINE`` (read now, and as huggingface_hub read it)."""
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return is_offline() or env or bool(getattr(hf.constants, "HF_HUB_OFFLINE", False))


@contextlib.contextmanager
def _progress_bars(hf: Any, enabled: bool) -> Iterator[None]:
    if enabled or hf.utils.are_progress_bars_disabled():
        yield
        return
    hf.utils.disable_progress_bars()
    try:
        yield
    finally:
        hf.utils.enable_progress_bars()


def _hf_download(
    f: HfFile, label: str, *, force: bool = False, progress: bool = True, missing_ok: bool = False
) -> Path:
    """``hf_hub_download`` of ``f``, its SHA-256 checked; a corrupted cached copy is fetched again.

    Args:
        label: what the messages call the weights (``arch.tag`` or the ``hf-hub:`` reference).
        missing_ok: let ``EntryNotFoundError`` through (the caller tries another file name).
    """
    hf = _huggingface_hub(label)
    offline = _hf_offline(hf)
    if force and offline:
        raise WeightsError(f"{label}: a new download was asked for, but offline mode is set")
    path = _hf_fetch(
        hf,
        f,
        label,
        force=force,
        offline=offline,
        progress=progress,
        missing_ok=missing_ok,
    )
    problem = _hf_check(path)
    if problem is None:
        return path
    if offline:
        raise ChecksumError(
            f"{label}: the cached {path} is corrupt ({problem}), and offline mode is set, so it "
            f"was not fetched again. Delete it, or fetch it again once online."
        )
    log.warning("%s: %s is corrupt (%s); downloading it again", label, path, problem)
    path = _hf_fetch(hf, f, label, force=True, offline=False, progress=progress)
    problem = _hf_check(path)
    if problem is not None:
        raise ChecksumError(
            f"{label}: {f} was downloaded again but {problem}; the server may hold a "
            "different file than the one it publishes."
        )
    return path


def _hf_fetch(
    hf: Any,
    f: HfFile,
    label: str,
    *,
    force: bool,
    offline: bool,
    progress: bool,
    missing_ok: bool = False,
) -> Path:
    from tokenmix import __version__

    try:
        with _progress_bars(hf, progress):
            got = hf.hf_hub_download(
                f.repo_id,
                f.filename,
                revision=f.revision,
                force_download=force,
                local_files_only=offline,
                library_name="tokenmix",
                library_version=__version__,
            )
    except hf.utils.EntryNotFoundError as e:
        if missing_ok:
            raise
        raise WeightsError(_hf_failure(f, label, e, offline)) from e
    except (hf.utils.HfHubHTTPError, OSError, ValueError) as e:
        raise WeightsError(_hf_failure(f, label, e, offline)) from e
    return Path(got)


def _hf_failure(f: HfFile, label: str, e: BaseException, offline: bool) -> str:
    why = (
        "it is not in the Hugging Face cache and offline mode is set (TOKENMIX_OFFLINE or "
        "HF_HUB_OFFLINE)"
        if offline
        else _first_line(e)
    )
    return (
        f"{label}: cannot get {f}: {why}. To use the file without this download, fetch it "
        f"yourself (`hf download {f.repo_id} {f.filename}`) and pass pretrained='/path/to/file'."
    )


def _hf_cached(f: HfFile) -> Path | None:
    import huggingface_hub as hf

    got = hf.try_to_load_from_cache(f.repo_id, f.filename, revision=f.revision)
    return Path(got) if isinstance(got, str) else None


def _lfs_sha256(path: Path) -> str | None:
    """The SHA-256 the Hub published for a cached file: the name of the blob it links to."""
    name = path.resolve().name
    return name if _SHA256.fullmatch(name) else None


def _hf_check(path: Path) -> str | None:
    """``None`` when the file's SHA-256 is the one the Hub published, else what is wrong.

    Files kept in git rather than LFS are named by their git hash, and a cache without symlinks
    (Windows) keeps no blob names; both are not checked here (huggingface_hub checked the size).
    """
    published = _lfs_sha256(path)
    if published is None:
        return None
    actual = sha256_file(path)
    return (
        None if actual == published else f"its SHA-256 is {actual}, the Hub publishes {published}"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _manual_hint(w: Weights) -> str:
    return (
        f"To use the file without this download, fetch {w.url} yourself and either pass "
        f"pretrained='/path/to/{w.path.name}' to create_model, or copy it to {w.path} "
        f"(the cache; {ENV_HOME} moves it)."
    )
