"""Loading ``params.yaml`` sections into frozen, validated stage configs.

One frozen dataclass per stage lives beside its stage module; this module only knows how to
build any of them from a mapping and how to say what is wrong with it.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from components.core.errors import UserError

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(UserError, ValueError):
    """A params.yaml value is missing, unknown or out of range; the message says how to fix it."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read the whole params file; a missing or malformed file is a ConfigError, not a trace."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the project root or pass --params PATH.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:  # the parser's message spans lines (with a caret drawing): one line
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}; fix the file and run again.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of stage names to settings.")
    return data


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Accept YAML scalars for the annotated type (lists for tuples, ints for floats)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}.")
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(name, args[0], value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}.")
    return value


def build(cls: type[T], section: Mapping[str, Any] | None, where: str) -> T:
    """Build the frozen config ``cls`` from a params section, rejecting unknown keys by name."""
    section = dict(section or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {unknown}; valid settings are {sorted(fields)}."
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(f"{where}.{k}", hints[k], v) for k, v in section.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def stage_config(cls: type[T], stage: str, params: Mapping[str, Any]) -> T:
    """The config of one stage: ``params[stage]`` built into ``cls``."""
    return build(cls, params.get(stage), where=f"params.yaml:{stage}")


def require(condition: bool, message: str) -> None:
    """Raise a ConfigError with a how-to-fix message when ``condition`` is false."""
    if not condition:
        raise ConfigError(message)
