"""Recipe configs: one ``@dataclass`` per recipe, filled from YAML plus ``key=value`` overrides.

An unknown key is an error (a typo must not silently fall back to a default). Values from the command
line are parsed as YAML scalars (``lr=1e-5``, ``lora=true``, ``ks=[5,10]``) and checked against the
field's type for the simple cases (bool, int, float, str).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the recipe's dataclass."""


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0]) if len(inner) == 1 else value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        return str(value)
    container = origin if origin is not None else annotation
    if container in (list, tuple) and isinstance(value, (list, tuple)):
        return list(value) if container is list else tuple(value)
    return value


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-5", "lora=true"]`` -> ``{"lr": 1e-5, "lora": True}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        out[key.strip()] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from a YAML file (optional) and ``key=value`` overrides; unknown keys raise."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        data.update(loaded)
    data.update(parse_overrides(overrides))
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} for {cls.__name__}; known: {sorted(names)}")
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in data.items()})


def config_from_argv(cls: type[T], argv: Sequence[str]) -> T:
    """A recipe's command line: an optional YAML path first (any argument without ``=``), then
    ``key=value`` overrides."""
    args = list(argv)
    path = args.pop(0) if args and "=" not in args[0] else None
    return load_config(cls, path, args)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
