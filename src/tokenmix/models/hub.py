"""Official weights: download once, verify, cache, and load strictly.

``create_model(name, pretrained=True)`` ends here. A weight file lives in the cache under its
official file name (``$TOKENMIX_HOME/weights/<file_name>``, default
``~/.cache/tokenmix/weights``), next to a sidecar ``<file_name>.json`` that records where it came
from, its size and its SHA-256. The authors publish no hashes, so the sidecar's hash, taken
when the file was first downloaded, is what every later use is checked against: a file that
was truncated or altered since is reported and fetched again, never loaded as it is.

Environment:

- ``TOKENMIX_HOME``: cache root (weights go to its ``weights/`` folder).
- ``TOKENMIX_OFFLINE=1``: never open a connection; only cached files can be used.
- ``TOKENMIX_WEIGHTS_BASE_URL``: a mirror holding the files under their official names
  (``<base>/<file_name>``), e.g. a copy of someone's cache served over HTTP; tests point it at
  a local server.

Downloads go to ``<file_name>.part`` and resume with an HTTP ``Range`` request after a dropped
connection (also across runs); a file lock keeps parallel processes (one per GPU) from writing
the same file at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, LoadReport, load_weights, read_state_dict
from .pretrained import PretrainedCfg
from .registry import get_pretrained_cfg, list_pretrained_cfgs, split_model_name

log = logging.getLogger("tokenmix")

ENV_HOME = "TOKENMIX_HOME"
ENV_OFFLINE = "TOKENMIX_OFFLINE"
ENV_BASE_URL = "TOKENMIX_WEIGHTS_BASE_URL"

_CHUNK = 1 << 20
_ATTEMPTS = 5  # connection drops tolerated per download, each resumed where it stopped
_RETRY_DELAY_S = 1.0  # doubled after each failed attempt
_TIMEOUT_S = 60.0
_USER_AGENT = "tokenmix-weights/0.1 (+python-urllib)"


class WeightsError(RuntimeError):
    """Weights that cannot be fetched or verified; the message says how to get them by hand."""


class ChecksumError(WeightsError):
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


def is_offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in {"1", "true", "yes", "on"}


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
    name: str | PretrainedCfg, *, force: bool = False, progress: bool = True
) -> Path:
    """The verified cached file of ``name``'s weights, downloaded first if needed.

    Args:
        name: ``arch`` or ``arch.tag`` (or a :class:`PretrainedCfg` with a url).
        force: download again even when a verified copy is cached.
        progress: show a tqdm progress bar while downloading.

    Raises:
        WeightsError: offline without a cached copy, or the download failed; the message names
            the URL and where to put the file by hand.
        ChecksumError: the downloaded file does not match the published size or SHA-256.
    """
    w = resolve(name)
    w.path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(w):
        problem = "download forced" if force else _check_cached(w)
        if problem is None:
            return w.path
        if is_offline():
            state = "not in the cache" if problem == "not cached" else f"cached copy bad: {problem}"
            raise WeightsError(
                f"{w.name}: {state}, and {ENV_OFFLINE} is set, so {w.url} was not fetched."
                f"\n{_manual_hint(w)}"
            )
        if w.path.exists():
            if not force:
                log.warning("%s: %s; downloading it again", w.path, problem)
            _remove(w.path, w.sidecar)
        _download(w, progress=progress)
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
        log.warning("%s is unreadable (%s); downloading it again", path, e)
        path = download_weights(name, force=True)
        state = read_state_dict(path)
    report = load_weights(model, state, source_format=w.cfg.source_format)
    report.source = f"{w.name} ({path})"
    log.info("loaded %s from %s (licence: %s)", w.name, path, w.cfg.license or "not stated")
    return report


def cached_path(name: str | PretrainedCfg) -> Path | None:
    """The cached file of ``name`` if present with its recorded size (cheap: no hashing).

    A file copied in by hand has no record yet and counts as cached; its hash is checked and
    recorded on first use.
    """
    w = resolve(name)
    if not w.path.is_file():
        return None
    meta = _read_sidecar(w)
    if meta is not None and w.path.stat().st_size != meta.get("num_bytes"):
        return None
    return w.path


def cache_record(name: str | PretrainedCfg) -> dict[str, Any] | None:
    """The sidecar of ``name``'s cached file: url, num_bytes, sha256 and how it was obtained."""
    return _read_sidecar(resolve(name))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    tmp = w.sidecar.with_name(w.sidecar.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, w.sidecar)


def _lock(w: Weights) -> contextlib.AbstractContextManager[Any]:
    """A lock per file, so that processes sharing a cache (one per GPU) download it once.

    A read-only cache (shared, filled by someone else) needs no lock: nothing is written.
    """
    if not os.access(w.path.parent, os.W_OK):
        return contextlib.nullcontext()
    return FileLock(str(w.path.with_name(w.path.name + ".lock")))


def _remove(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


# --- download ----------------------------------------------------------------------------------
def _download(w: Weights, *, progress: bool) -> None:
    """Fetch ``w.url`` into ``w.part`` (resuming it), verify, then move it into place."""
    total: int | None = None
    last_error: Exception | None = None
    for attempt in range(_ATTEMPTS):
        if attempt:
            delay = _RETRY_DELAY_S * 2 ** (attempt - 1)
            log.warning(
                "%s: download interrupted (%s); resuming in %.0f s (attempt %d/%d)",
                w.url,
                last_error,
                delay,
                attempt + 1,
                _ATTEMPTS,
            )
            time.sleep(delay)
        try:
            total = _fetch(w, progress=progress)
            break
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code not in (408, 429):
                raise WeightsError(
                    f"{w.name}: {w.url} answered HTTP {e.code} {e.reason}.\n{_manual_hint(w)}"
                ) from e
            last_error = e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            last_error = e
    else:
        raise WeightsError(
            f"{w.name}: could not download {w.url} ({_describe(last_error)}); "
            f"{w.part.stat().st_size if w.part.exists() else 0} bytes kept in {w.part} for the "
            f"next attempt.\n{_manual_hint(w)}"
        ) from last_error

    size = w.part.stat().st_size
    expected_size = w.cfg.num_bytes or total
    if expected_size is not None and size != expected_size:
        _remove(w.part)
        raise ChecksumError(f"{w.url}: got {size} bytes, expected {expected_size}")
    digest = sha256_file(w.part)
    if w.cfg.sha256 and digest != w.cfg.sha256.lower():
        _remove(w.part)
        raise ChecksumError(
            f"{w.url}: SHA-256 {digest} does not match the published {w.cfg.sha256}; the file "
            "was deleted. The server may hold a different file than the one published."
        )
    os.replace(w.part, w.path)
    _write_sidecar(w, size, digest, "recorded at download")
    log.info("%s: saved %s (%d bytes, sha256 %s)", w.name, w.path, size, digest)


def _fetch(w: Weights, *, progress: bool) -> int | None:
    """One HTTP request: append to ``w.part`` from its current size; the file's total size."""
    offset = w.part.stat().st_size if w.part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(w.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:
            raise
        # Range not satisfiable: the .part is not a prefix of this file. Start over.
        log.warning("%s: server refused to resume at byte %d; starting over", w.url, offset)
        _remove(w.part)
        return _fetch(w, progress=progress)
    with response:
        if offset and response.status != 206:  # server ignored Range: start over
            offset = 0
        elif offset:
            _check_content_range(response, offset, w.url)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            open(w.part, "ab" if offset else "wb") as f,
            _progress_bar(w, total, offset, progress) as bar,
        ):
            received = 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if length is not None and received < int(length):
            raise http.client.IncompleteRead(b"", int(length) - received)
    return total


def _check_content_range(response: Any, offset: int, url: str) -> None:
    value = response.headers.get("Content-Range", "")
    try:
        start = int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        raise WeightsError(f"{url}: unusable Content-Range {value!r} when resuming") from None
    if start != offset:
        raise WeightsError(f"{url}: asked to resume at byte {offset}, server sent from {start}")


@contextlib.contextmanager
def _progress_bar(w: Weights, total: int | None, initial: int, enabled: bool) -> Iterator[Any]:
    bar = tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=w.path.name,
        disable=not enabled,
        leave=False,
    )
    try:
        yield bar
    finally:
        bar.close()


def _describe(e: Exception | None) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return str(e.reason)
    return f"{type(e).__name__}: {e}" if e is not None else "unknown error"


def _manual_hint(w: Weights) -> str:
    return (
        f"To use the file without this download, fetch {w.url} yourself and either pass "
        f"pretrained='/path/to/{w.path.name}' to create_model, or copy it to {w.path} "
        f"(the cache; {ENV_HOME} moves it)."
    )
