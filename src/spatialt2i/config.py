"""Typed configs: dataclasses filled from YAML presets (``configs/*.yaml`` in the package) or files.

Unknown keys and wrong types are errors naming the file and the key, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

PRESETS = Path(__file__).parent / "configs"
T = TypeVar("T")


def load_yaml(path_or_preset: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from a file path or a preset name (e.g. ``world``)."""
    p = Path(path_or_preset)
    if not p.exists():
        cand = PRESETS / f"{path_or_preset}.yaml"
        if not cand.exists():
            names = sorted(f.stem for f in PRESETS.glob("*.yaml"))
            raise ConfigError(f"config {str(path_or_preset)!r}: no such file or preset (presets: {', '.join(names)})")
        p = cand
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a dict, recursing into nested dataclasses; strict about keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        kwargs[name] = _coerce(tp, value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errs.append(str(e))
        raise ConfigError(errs[0] if errs else f"{where}: bad value {value!r}")
    if origin in (dict,):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, f"{where}[{k!r}]"): _coerce(vt, v, f"{where}[{k!r}]") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        et = args[0] if args else Any
        items = [_coerce(et, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)         # YAML 1.1 reads "1e-3" (no dot) as a string
    if tp is int and isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
