"""Read checkpoint files safely and load them strictly into our models.

Pickle-based files are read with ``torch.load(weights_only=True)`` (no code runs while
loading); Paddle ``.pdparams`` through an allow-list unpickler; safetensors natively. Loading is
strict: every missing, unexpected or mis-shaped key is reported in one error. The only
exception is the classifier when the model was built for another number of classes: those
keys are skipped, the classifier keeps its fresh initialisation, and a warning says so.
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
) -> LoadReport:
    """Load a checkpoint (file or dict) into ``model`` strictly.

    The model's ``checkpoint_filter_fn(state, source_format)``, when it has one, converts
    foreign layouts (Paddle) and resizes resolution-dependent entries (frequency filters,
    position embeddings) to the model's shapes first.
    """
    if isinstance(source, Mapping):
        state, name, fmt = dict(source), "state_dict", source_format or "pth"
    else:
        state = read_state_dict(source, use_ema=use_ema)
        name, fmt = str(source), source_format or checkpoint_format(source)
    filter_fn = getattr(model, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, fmt)

    own = model.state_dict()
    report = LoadReport(source=name, source_format=fmt)
    cfg = getattr(model, "pretrained_cfg", None)
    prefixes = tuple(f"{p}." for p in getattr(cfg, "classifier", ()))
    for key in list(state):
        if key.startswith(prefixes) and (key not in own or own[key].shape != state[key].shape):
            del state[key]
            report.reinitialized.append(key)
    reinit = set(report.reinitialized)

    missing = [k for k in own if k not in state and k not in reinit]
    # a classifier of another size: its fresh initialisation is kept (strict for the rest)
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
    model.load_state_dict(state, strict=not reinit)
    if reinit:
        log.warning(
            "%s: the checkpoint's classifier is for another number of classes; %s not loaded, "
            "the model's classifier keeps its fresh initialisation for %s classes",
            name,
            ", ".join(sorted(reinit)),
            getattr(model, "num_classes", "?"),
        )
    return report


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
