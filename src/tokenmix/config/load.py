"""Build a checked :class:`~tokenmix.config.schema.Config` from defaults, a YAML recipe and overrides.

Order: dataclass defaults, then the recipe (``configs/*.yaml``), then ``--set key=value``
overrides with dotted keys (``optim.lr=1e-3``, ``model.kwargs.dims=[8,16,24,32]``). Override
values are parsed as YAML, so lists, ``null`` and booleans work. Every value is checked against
the field's type and range; anything unknown or out of range raises :class:`ConfigError` naming
the key and what it accepts, and nothing runs on a config that failed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import math
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .schema import Config

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key that does not exist or a value it does not accept."""


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults, then the recipe at ``path`` or the dict ``base`` (e.g. a checkpoint's stored
    config), then ``key=value`` overrides."""
    if path is not None and base is not None:
        raise ValueError("give a recipe path or a base config, not both")
    raw: dict[str, Any] = copy.deepcopy(dict(base)) if base is not None else {}
    if path is not None:
        raw = read_yaml(path)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return from_dict(Config, raw)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file as a plain dict; a missing file or a non-mapping is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "save the recipe as UTF-8"
        ) from e
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections at the top, got {type(data).__name__}"
        )
    return data


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases and duplicate keys.

    Aliases (``*name``) are how a few hundred bytes of YAML expand to billions of nodes
    ("billion laughs"); a recipe never needs them. A duplicate key silently replaces the first
    value in PyYAML, so a section written twice would lose half its settings without a word.
    """

    source = "<yaml>"

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if event.anchor in self.anchors:  # an undefined alias is PyYAML's own error
                raise ConfigError(
                    f"{self.source}:{event.start_mark.line + 1}: YAML alias *{event.anchor} is "
                    "not allowed in a config (aliases can expand a small file without bound); "
                    "write the value out"
                )
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str) -> Any:
    """Parse config YAML without aliases or duplicate keys; errors name ``source`` and line."""
    loader = _RecipeLoader(text)
    loader.source = source
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    except RecursionError as e:
        raise ConfigError(f"{source}: YAML nested too deeply") from e
    finally:
        loader.dispose()


def _refuse_duplicate_keys(root: yaml.Node, source: str) -> None:
    """Walk the composed document (iteratively) and refuse a key given twice in one mapping."""
    todo: list[tuple[yaml.Node, str]] = [(root, "")]
    while todo:
        node, where = todo.pop()
        if isinstance(node, yaml.SequenceNode):
            todo.extend((item, f"{where}[{i}]") for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                dotted = f"{where}.{key}" if where else key
                line = key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode) and key in seen:
                    raise ConfigError(
                        f"{source}:{line}: duplicate key {dotted} (first given on line "
                        f"{seen[key]}); YAML would silently keep only the last one"
                    )
                seen[key] = line
                todo.append((value_node, dotted))


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", 0.001)``; the value is read as YAML."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-3)")
    try:
        value = parse_yaml(text, f"override {key}") if text.strip() else ""
    except ConfigError as e:
        if not isinstance(e.__cause__, yaml.YAMLError):
            raise  # an alias or a duplicate key: refused, not read as text
        value = text
    return key, value


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw["a"]["b"] = value`` for ``key="a.b"``, creating sections as needed."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"{'.'.join(parts[: i + 1])} is a value, not a section: cannot set {key}"
            )
        node = child
    node[parts[-1]] = value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain YAML/JSON-friendly data (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_dict(cls: type[T], raw: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``raw``, checking every key and value."""
    if not isinstance(raw, Mapping):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: expected a mapping, got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(_unknown_key(prefix, str(key), list(fields)))
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        full = f"{prefix}{name}"
        value = _convert(raw[name], hints[name], full)
        _check_range(value, f.metadata, full)
        values[name] = value
    return cls(**values)


def _convert(value: Any, tp: Any, key: str) -> Any:
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, prefix=f"{key}.")
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(str(a) for a in args)
            raise ConfigError(f"{key}: {_show(value)} is not allowed; allowed values: {allowed}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # `X | None`: X's own message says more
            return _convert(value, options[0], key)
        for option in options:
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {_show(value)} is not {_describe(tp)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: {_show(value)} is not {_describe(tp)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                f"{key}: expected {len(args)} values, got {len(value)}: {_show(value)}"
            )
        return tuple(
            _convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: {_show(value)} is not {_describe(tp)}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: {_show(value)} is not a mapping")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        # YAML reads "1e-3" (no dot) as a string; accept it and integers as floats.
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) >= 2**1024:
                raise ConfigError(f"{key}: an integer of {value.bit_length()} bits is too large")
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if not math.isfinite(number):
                # nan/inf pass every range comparison; refuse them here, by key
                raise ConfigError(f"{key}: {_show(value)} is not a finite number")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{key}: unsupported config type {tp!r}")
    raise ConfigError(f"{key}: {_show(value)} is not {_describe(tp)}")


def _check_range(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if value is None or not meta:
        return
    ge, gt, le, lt = meta.get("ge"), meta.get("gt"), meta.get("le"), meta.get("lt")
    items = value if isinstance(value, tuple) else (value,)
    for v in items:
        if not isinstance(v, (int, float)):
            continue
        if (
            (ge is not None and v < ge)
            or (gt is not None and v <= gt)
            or (le is not None and v > le)
            or (lt is not None and v >= lt)
        ):
            lo = f">= {ge}" if ge is not None else f"> {gt}" if gt is not None else ""
            hi = f"<= {le}" if le is not None else f"< {lt}" if lt is not None else ""
            allowed = " and ".join(p for p in (lo, hi) if p)
            raise ConfigError(f"{key}: {_show(value)} is out of range; allowed: {allowed}")
    if meta.get("ordered") and isinstance(value, tuple) and list(value) != sorted(value):
        raise ConfigError(f"{key}: {_show(value)} must be a (min, max) pair with min <= max")


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is list:
        return f"a list of {_plural(args[0])}"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    names = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
    return names.get(tp, f"values of type {_describe(tp)}")


def _unknown_key(prefix: str, key: str, allowed: list[str]) -> str:
    where = prefix.rstrip(".") or "the top level"
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" Did you mean {prefix}{close[0]!s}?" if close else ""
    return f"unknown key {prefix}{key!s} in {where}; allowed: {', '.join(allowed)}.{hint}"


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f"'{value}'"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
