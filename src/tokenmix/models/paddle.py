"""Paddle ``.pdparams`` checkpoints: read them without Paddle, convert them to our layout.

``paddle.save(model.state_dict(), path)`` writes a plain pickle of a dict of numpy arrays (plus
a ``StructuredToParameterName@@`` name table). Unpickling such a file with ``pickle.load``
would run whatever callables it names, so :func:`read_pdparams` uses an allow-list unpickler
that resolves only the globals a Paddle state_dict needs (numpy's array reconstructor,
``ndarray``, ``dtype``, ``OrderedDict``, and ``_codecs.encode`` for protocol-2 bytes);
anything else, e.g. a ``builtins.eval`` or ``os.system`` payload, is refused before it can
be called. The unpickler is :func:`tokenmix.utils.unpickle.load_pickle`, which first scans the
file without running it and refuses one that would expand (a 200-byte file of nested
``_codecs.encode(..., "hex")`` calls asks for terabytes) or nest without bound.

Layout differences from PyTorch (checked on the Paddle ports in ``shared/reference/paddle``
by ``tests/test_paddle.py``):

- ``nn.Linear`` weights are stored ``[in, out]``: every 2-D ``*.weight`` is transposed.
- ``BatchNorm2D`` running statistics are ``_mean`` / ``_variance``: renamed to
  ``running_mean`` / ``running_var``, and ``num_batches_tracked`` (absent in Paddle) set to 0.
- Conv weights ``[out, in, kh, kw]``, norms, ``complex_weights``, ``pos_embed`` and
  ``cls_token`` are stored as in PyTorch.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..utils.unpickle import (
    NUMPY_ARRAY_GLOBALS,
    ORDERED_DICT_GLOBALS,
    UnsafePickleError,
    load_pickle,
)
from .checkpoint import CheckpointError

__all__ = ["convert_paddle_lvvit", "convert_paddle_metaformer", "read_pdparams"]

# Paddle's table of structured name -> internal parameter name; not a tensor.
_NAME_TABLE = "StructuredToParameterName@@"


# What a Paddle state_dict may name: numpy arrays (under numpy 1.x and 2.x names), protocol-2
# bytes (``_codecs.encode(text, "latin1")``) and ``OrderedDict`` (older Paddle).
_ALLOWED_GLOBALS = {**NUMPY_ARRAY_GLOBALS, **ORDERED_DICT_GLOBALS}
_REFUSAL = "a Paddle state_dict holds only numpy arrays"


def read_pdparams(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a Paddle ``.pdparams`` state_dict into ``{name: tensor}`` without Paddle.

    Raises:
        CheckpointError: the file names a global outside the allow-list (the message says
            which), is not a pickle, or holds something other than numeric arrays.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from e
    try:
        obj = load_pickle(data, str(path), _ALLOWED_GLOBALS, refusal=_REFUSAL)
    except UnsafePickleError as e:
        if e.bound == "format":
            raise CheckpointError(f"{path}: not a readable Paddle state_dict ({e.reason})") from e
        if e.bound == "global":
            raise CheckpointError(
                f"{path}: refused to load: global '{e.global_name}' is not allowed in a Paddle "
                "state_dict. A .pdparams file holds only numpy arrays; unpickling anything "
                "else could run code."
            ) from e
        raise CheckpointError(f"{path}: refused to load: {e.reason}") from e
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as e:
        raise CheckpointError(f"{path}: not a readable Paddle state_dict ({e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of arrays, got {type(obj).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if key == _NAME_TABLE:
            continue
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: key {key!r} is not a string")
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise CheckpointError(f"{path}: entry {key!r} is {kind}, not a numeric array")
        state[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
    return state


def _convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Paddle -> PyTorch rules shared by every family (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("._mean"):
            out[key.removesuffix("._mean") + ".running_mean"] = value
        elif key.endswith("._variance"):
            base = key.removesuffix("._variance")
            out[base + ".running_var"] = value
            out[base + ".num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        elif key.endswith(".weight") and value.ndim == 2:
            out[key] = value.t().contiguous()
        else:
            out[key] = value
    return out


def convert_paddle_metaformer(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Paddle DFFormer/MetaFormer state_dict -> ours (names already equal; Linear transposed).

    ``complex_weights`` ``[h, w, filters, 2]`` keep their layout (last axis real, imag).
    """
    return _convert(state)


def convert_paddle_lvvit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Paddle LV-ViT state_dict -> ours: Linear transposed, stem BatchNorm stats renamed.

    The Paddle port's constructor names the class count ``class_dim``; weights are named as
    the official PyTorch model's, so only layouts change.
    """
    return _convert(state)
