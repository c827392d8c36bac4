"""``feature_info`` and the index rules of ``forward_intermediates``, as timm has them.

:class:`FeatureInfo` describes the feature maps a model hands to a dense-prediction head: one
entry per selected output (``out_indices``), each a dict with ``num_chs``, ``reduction`` (stride
from the input) and ``module`` (the module that produces it). It answers timm's questions
(``.channels()``, ``.reduction()``, ``.module_name()``, ``.get_dicts()``), and it is a list of
those dicts, so ``for info in model.feature_info``, ``model.feature_info[0]["num_chs"]`` and
timm's own feature wrappers work as with the plain list timm models carry.

:func:`feature_take_indices` turns the ``indices`` argument of ``forward_intermediates`` and
``prune_intermediate_layers`` into stage (or block) numbers: an int ``n`` means the last ``n``,
a sequence lists them (negative ones count from the end), ``None`` means the default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, SupportsIndex, overload

__all__ = ["FeatureInfo", "feature_take_indices"]


class FeatureInfo(list):
    """The selected feature maps of a model, in output order: a list of dicts with timm's
    accessors.

    A ``list`` subclass, so code that expects timm's plain ``feature_info`` list (timm's own
    feature wrappers check ``isinstance(feature_info, (list, tuple))``) takes it as is.

    Args:
        entries: one mapping per output with at least ``num_chs``, ``reduction`` and
            ``module``; copied, so the caller's dicts are not shared.
    """

    _REQUIRED = ("num_chs", "reduction", "module")

    def __init__(self, entries: Sequence[Mapping[str, Any]] = ()) -> None:
        copies = [dict(e) for e in entries]
        for i, entry in enumerate(copies):
            missing = [k for k in self._REQUIRED if k not in entry]
            if missing:
                raise ValueError(f"feature_info entry {i} lacks {missing}")
        super().__init__(copies)

    @overload
    def __getitem__(self, idx: SupportsIndex) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, idx: slice) -> FeatureInfo: ...

    def __getitem__(self, idx: SupportsIndex | slice) -> dict[str, Any] | FeatureInfo:
        if isinstance(idx, slice):
            return FeatureInfo(super().__getitem__(idx))
        return super().__getitem__(idx)

    def __repr__(self) -> str:
        return f"FeatureInfo({list(self)!r})"

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        """``key`` of every output (a list), of output ``idx`` or of the outputs in ``idx``."""
        if idx is None:
            return [e[key] for e in self]
        if isinstance(idx, int):
            return self[idx][key]
        return [self[i][key] for i in idx]

    def get_dicts(
        self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Copies of the entries (restricted to ``keys``), all or those at ``idx``."""

        def pick(e: dict[str, Any]) -> dict[str, Any]:
            return dict(e) if keys is None else {k: e[k] for k in keys}

        if idx is None:
            return [pick(e) for e in self]
        if isinstance(idx, int):
            return pick(self[idx])
        return [pick(self[i]) for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        """Channels of each output (``num_chs``)."""
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        """Stride of each output relative to the input."""
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        """Name of the module whose output each feature map is (``stages.2``, ``blocks.7``)."""
        return self.get("module", idx)


def feature_take_indices(
    num_outputs: int, indices: int | Sequence[int] | None, default: Sequence[int] | None = None
) -> tuple[list[int], int]:
    """``indices`` as sorted, validated stage numbers, and the largest of them.

    Args:
        num_outputs: how many stages (or blocks) the model has.
        indices: ``None`` (``default``, else all), an int ``n`` (the last ``n``) or a sequence
            of stage numbers (negative ones count from the end, as in Python).
        default: what ``None`` means; all stages when not given.

    Raises:
        ValueError: an index outside ``[-num_outputs, num_outputs)``, or ``n`` outside
            ``[1, num_outputs]``.
    """
    if indices is None:
        take = list(range(num_outputs)) if default is None else list(default)
    elif isinstance(indices, int):
        if not 0 < indices <= num_outputs:
            raise ValueError(f"indices={indices}: the model has {num_outputs} outputs")
        take = list(range(num_outputs - indices, num_outputs))
    else:
        take = []
        for i in indices:
            if not -num_outputs <= i < num_outputs:
                raise ValueError(f"index {i} out of range for {num_outputs} outputs")
            take.append(i % num_outputs)
    if not take:
        raise ValueError("no output selected")
    take = sorted(set(take))
    return take, take[-1]
