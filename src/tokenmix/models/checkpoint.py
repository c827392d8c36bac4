"""Read checkpoint files safely and load them strictly into our models.

Pickle-based files are read with ``torch.load(weights_only=True)`` (no code runs while
loading); Paddle ``.pdparams`` through an allow-list unpickler; safetensors natively. Loading is
strict: every missing, unexpected or mis-shaped key is reported in one error. The only
exception is the classifier when the model was built for another number of classes (or none):
those keys are skipped, the classifier keeps its fresh initialisation, and a warning says so.
Weights holding NaN or inf are refused unless the caller allows them. ``.pth`` files are
scanned (:func:`check_torch_file`) before ``torch.load`` reads them.

ConvFormer / CAFormer checkpoints in timm's key layout (``stem.conv.weight``,
``stages.N.blocks.M...``, as in the ``timm/caformer_s18.sail_in1k`` Hub repositories) are
recognised and converted (:mod:`tokenmix.models.timm_layout`) before the strict load. A source
``"hf-hub:org/repo"`` is fetched through ``huggingface_hub`` first
(:func:`tokenmix.models.hub.download_hf_hub`).
"""

from __future__ import annotations

import argparse
import logging
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.unpickle import (
    PickleLimits,
    UnsafePickleError,
    scan_pickle,
    torch_checkpoint_globals,
)
from . import timm_layout

log = logging.getLogger("tokenmix")

# Wrappers that training scripts put around the state_dict, in the order we look for them.
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_ema", "state_dict_ema")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


@dataclass
class LoadReport:
    """What :func:`load_weights` did: the source and the classifier keys it left initialised."""

    source: str
    source_format: str
    reinitialized: list[str] = field(default_factory=list)
    adjusted: list[str] = field(default_factory=list)  # model settings changed to match the source


def checkpoint_format(path: str | Path) -> str:
    """``"safetensors"``, ``"pdparams"`` or ``"pth"``, from the file name."""
    suffix = Path(path).suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix == ".pdparams":
        return "pdparams"
    return "pth"


def read_state_dict(path: str | Path, *, use_ema: bool = False) -> dict[str, Any]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict without running its code.

    Accepts a bare state_dict or one wrapped under ``state_dict`` / ``model`` / ``model_ema``
    (``use_ema`` prefers the EMA weights), strips a DDP ``module.`` prefix, and raises
    :class:`CheckpointError` naming the file for anything it cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    fmt = checkpoint_format(path)
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if fmt == "pdparams":
        from .paddle import read_pdparams

        return read_pdparams(path)
    check_torch_file(path)
    try:
        # timm-style training checkpoints carry their argparse.Namespace under "args"; it is
        # a plain attribute bag, safe to rebuild, so it is the one class we allow beyond tensors.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and "
            f"plain containers, and unpickling them could run code. ({_first_line(e)})"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: cannot read the checkpoint; is it truncated or not a PyTorch file? "
            f"({_first_line(e)})"
        ) from e
    return unwrap_state_dict(obj, str(path), use_ema=use_ema)


_TORCH_REFUSAL = (
    "a PyTorch checkpoint holds only tensors and plain containers, and unpickling anything "
    "else could run code"
)
# what torch.load reads, in order, from a pre-1.6 (non-zip) file; the fourth is the checkpoint
_LEGACY_PICKLES = ("magic number", "protocol version", "system info", "checkpoint", "storage keys")


def check_torch_file(path: str | Path, *, limits: PickleLimits | None = None) -> None:
    """Scan a PyTorch file's pickle without running it, before ``torch.load`` sees the file.

    ``torch.load(weights_only=True)`` cannot run arbitrary code, but the callables it allows can
    still expand a tiny file without bound (nested ``_codecs.encode(..., "hex")``, storages or
    tensor views claiming far more than the file holds). This refuses, naming the file and the
    bound: globals outside :func:`~tokenmix.utils.unpickle.torch_checkpoint_globals`, anything
    over :class:`~tokenmix.utils.unpickle.PickleLimits`, a storage claiming more bytes than its
    data record (zip files) or than the rest of the file (legacy files), a tensor larger than
    its storage, and compressed or duplicated zip members (``torch.save`` writes neither).

    Raises:
        CheckpointError: the file is refused or is not a PyTorch file at all.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                f.seek(0)
                _check_torch_zip(path, f, limits)
            else:
                f.seek(0)
                _check_torch_legacy(path, f, limits)
    except UnsafePickleError as e:
        if e.bound == "format":
            raise CheckpointError(
                f"{path}: cannot read the checkpoint; is it truncated or not a PyTorch file? "
                f"({e.reason})"
            ) from e
        raise CheckpointError(f"{path}: refused to load: {e.reason}") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(
            f"{path}: cannot read the checkpoint; is it truncated or not a PyTorch file? "
            f"({_first_line(e)})"
        ) from e


def _check_torch_zip(path: Path, f: Any, limits: PickleLimits | None) -> None:
    with zipfile.ZipFile(f) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if not names:
            raise CheckpointError(f"{path}: an empty zip file, not a PyTorch checkpoint")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise CheckpointError(f"{path}: refused to load: zip member {dup!r} appears twice")
        packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise CheckpointError(
                f"{path}: refused to load: zip member {packed[0]!r} is compressed; torch.save "
                "stores members uncompressed, and a compressed one can expand without bound"
            )
        # torch reads records under the first member's top folder (the archive name)
        prefix = names[0].split("/", 1)[0] + "/"
        try:
            data = archive.read(prefix + "data.pkl")
        except KeyError:
            raise CheckpointError(f"{path}: a zip file without {prefix}data.pkl") from None
        records = {
            info.filename[len(prefix) + 5 :]: info.file_size
            for info in infos
            if info.filename.startswith(prefix + "data/")
        }
    scan = scan_pickle(
        data,
        str(path),
        torch_checkpoint_globals(),
        limits=limits,
        refusal=_TORCH_REFUSAL,
        persistent=True,
    )
    for key, claimed in scan.storages.items():
        have = records.get(key)
        if have is None or claimed > have:
            held = "has no data record" if have is None else f"has a {have:,}-byte record"
            raise UnsafePickleError(
                str(path),
                "storage",
                f"storage {key!r} claims {claimed:,} bytes but {held} in the archive",
            )


def _check_torch_legacy(path: Path, f: Any, limits: PickleLimits | None) -> None:
    size = path.stat().st_size
    storages: dict[str, int] = {}
    for what in _LEGACY_PICKLES:
        checkpoint = what == "checkpoint"
        scan = scan_pickle(
            f,
            f"{path} ({what})",
            torch_checkpoint_globals() if checkpoint else {},
            limits=limits,
            input_size=size,
            refusal=_TORCH_REFUSAL,
            persistent=checkpoint,
        )
        storages.update(scan.storages if checkpoint else {})
    # torch allocates each storage at the size the pickle claims, then reads it from the rest
    claimed, left = sum(storages.values()), size - f.tell()
    if claimed > left:
        raise UnsafePickleError(
            str(path),
            "storage",
            f"its storages claim {claimed:,} bytes but only {left:,} bytes of data follow",
        )


def unwrap_state_dict(obj: Any, source: str = "checkpoint", *, use_ema: bool = False) -> dict:
    """Find the state_dict inside a training checkpoint and check it holds only tensors."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    keys = _WRAPPER_KEYS[::-1] if use_ema else _WRAPPER_KEYS
    for key in keys:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            obj = inner
            break
    state = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"{source}: entry {k!r} is a {type(v).__name__}, not a tensor; "
                "this does not look like a model state_dict"
            )
        state[k[len("module.") :] if k.startswith("module.") else k] = v
    return state


def load_weights(
    model: nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    source_format: str | None = None,
    use_ema: bool = False,
    allow_nonfinite: bool = False,
) -> LoadReport:
    """Load a checkpoint (file or dict) into ``model`` strictly.

    The model's ``checkpoint_filter_fn(state, source_format)``, when it has one, converts
    foreign layouts (Paddle) and resizes resolution-dependent entries (frequency filters,
    position embeddings) to the model's shapes first.

    Classifier keys (``pretrained_cfg.classifier``) are the one exception to strictness: one
    whose shape differs from the model's (another class count) keeps the model's fresh
    initialisation, and one whose layer the model does not have (``num_classes=0``) is
    dropped; a warning says which. Any other key the model lacks, under the classifier or
    not, is an error like every unexpected key.

    A MetaFormer checkpoint in timm's layout is converted to ours first, and the model's MLP
    head then normalises with timm's epsilon (1e-6; the official code uses 1e-5) so it gives
    timm's outputs; :attr:`LoadReport.adjusted` says so.

    Args:
        source: a checkpoint file, a state_dict, or ``"hf-hub:org/repo[@revision][/file]"``
            (downloaded with ``huggingface_hub``, the ``hub`` extra).
        allow_nonfinite: load weights holding NaN or inf. They are refused by default because
            such a model evaluates to chance level without any error.
    """
    if isinstance(source, Mapping):
        state, name, fmt = dict(source), "state_dict", source_format or "pth"
    else:
        path = source
        if isinstance(source, str) and source.startswith("hf-hub:"):
            from .hub import download_hf_hub

            path = download_hf_hub(source)
        state = read_state_dict(path, use_ema=use_ema)
        name, fmt = str(source), source_format or checkpoint_format(path)
        if path is not source:
            name = f"{source} ({path})"
    if fmt != "pdparams" and timm_layout.is_timm_metaformer(state) and _is_metaformer(model):
        state, fmt = timm_layout.timm_to_tokenmix(state), "timm"
    filter_fn = getattr(model, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, fmt)

    own = model.state_dict()
    report = LoadReport(source=name, source_format=fmt)
    cfg = getattr(model, "pretrained_cfg", None)
    prefixes = tuple(f"{p}." for p in getattr(cfg, "classifier", ()))
    resized, dropped = _classifier_keys(model, own, state, prefixes)
    for key in resized + dropped:
        del state[key]
    report.reinitialized = resized + dropped

    missing = [k for k in own if k not in state and k not in resized]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            _mismatch_message(name, type(model).__name__, missing, unexpected, mismatched, len(own))
        )
    if not allow_nonfinite:
        _refuse_nonfinite(name, state)
    model.load_state_dict(state, strict=not resized)
    if fmt == "timm":
        report.adjusted = timm_layout.match_timm_numerics(model)
        log.info(
            "%s: converted from timm's layout%s",
            name,
            "".join(f"; {a}" for a in report.adjusted),
        )
    if resized:
        log.warning(
            "%s: the checkpoint's classifier is for another number of classes; %s not loaded, "
            "the model's classifier keeps its fresh initialisation for %s classes",
            name,
            ", ".join(sorted(resized)),
            getattr(model, "num_classes", "?"),
        )
    if dropped:
        log.warning(
            "%s: the model has no classifier layer for %s (num_classes=%s); not loaded",
            name,
            ", ".join(sorted(dropped)),
            getattr(model, "num_classes", "?"),
        )
    return report


def _is_metaformer(model: nn.Module) -> bool:
    """Our MetaFormer layout (its stem), the one timm's MetaFormer checkpoints convert to."""
    return "downsample_layers.0.conv.weight" in model.state_dict()


def _classifier_keys(
    model: nn.Module, own: Mapping[str, Any], state: Mapping[str, Any], prefixes: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """Checkpoint classifier keys that are not loaded: ``(resized, dropped)``.

    Resized: the model has the key with another shape. Dropped: the key's layer exists in the
    model but holds no weights (an ``nn.Identity`` left by ``num_classes=0``). A key whose layer
    the model does not have at all (``head.fc9.weight``) is neither: it stays unexpected.
    """
    if not prefixes:
        return [], []
    modules = dict(model.named_modules())
    resized, dropped = [], []
    for key in state:
        if not key.startswith(prefixes):
            continue
        if key in own:
            if own[key].shape != state[key].shape:
                resized.append(key)
            continue
        layer = key.rpartition(".")[0]
        if layer in modules and not any(k.startswith(layer + ".") for k in own):
            dropped.append(key)
    return resized, dropped


def _refuse_nonfinite(name: str, state: Mapping[str, torch.Tensor]) -> None:
    bad = [
        k
        for k, v in state.items()
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad) - 5} more)" if len(bad) > 5 else "")
        raise CheckpointError(
            f"{name}: {len(bad)} tensor(s) hold NaN or inf: {shown}. A model loaded from them "
            "evaluates to chance level; pass allow_nonfinite=True to load them anyway."
        )


def _mismatch_message(
    name: str,
    model_name: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    total: int,
) -> str:
    lines = [f"{name} does not fit {model_name}:"]
    for title, items in (
        ("missing from the checkpoint", missing),
        ("unexpected in the checkpoint", unexpected),
        ("shape mismatch", mismatched),
    ):
        if items:
            more = f", ... ({len(items) - 12} more)" if len(items) > 12 else ""
            shown = ", ".join(items[:12]) + more
            lines.append(f"  {len(items)} {title}: {shown}")
    if len(missing) + len(unexpected) > total // 2:
        lines.append("  Most keys differ: is this a checkpoint of another architecture?")
    return "\n".join(lines)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
