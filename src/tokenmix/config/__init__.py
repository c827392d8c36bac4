"""Typed training configuration: schema (dataclasses) and YAML loading with dotted overrides."""

from .load import ConfigError, dump_yaml, from_dict, load_config, parse_override, to_dict
from .schema import Config

__all__ = [
    "Config",
    "ConfigError",
    "dump_yaml",
    "from_dict",
    "load_config",
    "parse_override",
    "to_dict",
]
