"""Config loading: a TOML file, then environment overrides, into a pydantic model.

Every component keeps its settings in a pydantic model that forbids unknown
keys; :func:`load_config` fills it from a TOML file and from environment
variables, so a typo fails at start with the name of the bad key.

Environment overrides are named ``<PREFIX><KEY>__<SUBKEY>...`` in upper case,
``__`` separating nesting levels, e.g. for the trainer (prefix
``HEADRACE_TRAINER__``)::

    HEADRACE_TRAINER__BATCH_SIZE=64
    HEADRACE_TRAINER__MODEL__HIDDEN='[256, 128]'

A value is read as a TOML value when it parses as one (``64``, ``0.5``,
``true``, ``[1, 2]``, ``"text"``) and as a plain string otherwise. Overrides
beat the file. Lists of tables (such as slots) can only be set in the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "env_overrides", "load_config"]

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is unreadable or invalid; the message names the key."""


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Nested settings from the environment variables that start with ``prefix``.

    Parameters
    ----------
    prefix
        E.g. ``"HEADRACE_TRAINER__"``; matched case-sensitively.
    environ
        The environment (``os.environ`` by default).

    Examples
    --------
    >>> env_overrides("APP__", {"APP__MODEL__KIND": "fm", "APP__BATCH_SIZE": "64", "HOME": "/"})
    {'model': {'kind': 'fm'}, 'batch_size': 64}
    """
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(prefix) or name == prefix:
            continue
        *parents, leaf = name[len(prefix) :].lower().split("__")
        node = settings
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name} nests under {key!r}, which another variable sets")
            node = child
        node[leaf] = _parse_env_value(raw)
    return settings


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _describe(exc: ValidationError, origin: str, variables: Mapping[str, str]) -> str:
    """One line per error, naming the key and, for overrides, the variable."""
    lines = [f"invalid config ({origin}):"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<root>"
        source = f" (set by {variables[key]})" if key in variables else ""
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{source}; remove it or fix its spelling")
        else:
            lines.append(f"  {key}: {error['msg']} (got {error.get('input')!r}){source}")
    return "\n".join(lines)


def load_config(
    model: type[M],
    path: str | Path | None = None,
    *,
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> M:
    """Build ``model`` from its defaults, a TOML file and environment overrides.

    Parameters
    ----------
    model
        A pydantic model class; it should forbid extra keys.
    path
        A TOML file, or ``None`` for the defaults alone.
    env_prefix
        Prefix of override variables (see the module docstring); ``None``
        reads no overrides.
    environ
        The environment (``os.environ`` by default).

    Raises
    ------
    ConfigError
        When the file is missing or not TOML, or a key is unknown or invalid;
        the message names the key and where it came from.
    """
    settings: dict[str, Any] = {}
    origins = []
    variables: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        try:
            settings = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"no config file at {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        origins.append(str(path))
    if env_prefix is not None:
        overrides = env_overrides(env_prefix, environ)
        if overrides:
            settings = _merge(settings, overrides)
            origins.append(f"environment {env_prefix}*")
            environ = os.environ if environ is None else environ
            variables = {
                name[len(env_prefix) :].lower().replace("__", "."): name
                for name in environ
                if name.startswith(env_prefix)
            }
    try:
        return model.model_validate(settings)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, " + ".join(origins) or "defaults", variables)) from None
