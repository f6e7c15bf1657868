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

One file may hold the settings of several loaders: a loader given ``table``
reads only that table (``[kafka]``), and the others skip the tables in
:data:`OWN_TABLES`. Keys named as ``secrets`` are read only from the
environment, verbatim (a password ``1e5`` stays the string ``1e5``), and
never echoed in an error.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = [
    "API_TOKEN_ENV",
    "OWN_TABLES",
    "ConfigError",
    "env_overrides",
    "load_config",
    "read_secret",
]

M = TypeVar("M", bound=BaseModel)

#: The bearer token of the trainer's dashboard and the workers' predict API
#: (``--api-token-file`` beats it); here because both sides read it.
API_TOKEN_ENV = "HEADRACE_API_TOKEN"

#: Tables of a config file that a loader of their own reads (``table=``).
OWN_TABLES = frozenset({"kafka"})


class ConfigError(ValueError):
    """A config file or override is unreadable or invalid; the message names the key."""


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(
    prefix: str, environ: Mapping[str, str] | None = None, verbatim: Collection[str] = ()
) -> dict[str, Any]:
    """Nested settings from the environment variables that start with ``prefix``.

    Parameters
    ----------
    prefix
        E.g. ``"HEADRACE_TRAINER__"``; matched case-sensitively.
    environ
        The environment (``os.environ`` by default).
    verbatim
        Top-level keys whose values are taken as plain strings, not TOML.

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
        node[leaf] = raw if not parents and leaf in verbatim else _parse_env_value(raw)
    return settings


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _describe(
    exc: ValidationError, origin: str, variables: Mapping[str, str], secrets: Collection[str]
) -> str:
    """One line per error, naming the key and, for overrides, the variable.

    The value is shown only for a key that is not a secret; errors of the
    whole model (which would show every value) show only their message.
    """
    lines = [f"invalid config ({origin}):"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        source = f" (set by {variables[key]})" if key in variables else ""
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{source}; remove it or fix its spelling")
        elif not key:
            lines.append(f"  {error['msg'].removeprefix('Value error, ')}")
        elif key in secrets:
            lines.append(f"  {key}: {error['msg']}{source}")
        else:
            lines.append(f"  {key}: {error['msg']} (got {error.get('input')!r}){source}")
    return "\n".join(lines)


def _read_table(path: Path, table: str | None, secrets: Collection[str]) -> dict[str, Any]:
    try:
        settings = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    if table is None:
        return {key: value for key, value in settings.items() if key not in OWN_TABLES}
    section = settings.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {table} must be a table ([{table}])")
    if leaked := sorted(secrets & section.keys()):
        raise ConfigError(
            f"{path}: [{table}] {', '.join(leaked)}: secrets are not read from config files; "
            f"set it in the environment or name a file with {leaked[0]}_file"
        )
    return section


def load_config(
    model: type[M],
    path: str | Path | None = None,
    *,
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
    table: str | None = None,
    secrets: Collection[str] = frozenset(),
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
    table
        Read only this table of the file; ``None`` reads the file less the
        tables in :data:`OWN_TABLES`.
    secrets
        Keys read only from the environment, verbatim, and never shown.

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
        settings = _read_table(Path(path), table, frozenset(secrets))
        origins.append(str(path) if table is None else f"{path} [{table}]")
    if env_prefix is not None:
        overrides = env_overrides(env_prefix, environ, verbatim=secrets)
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
        origin = " + ".join(origins) or "defaults"
        raise ConfigError(_describe(exc, origin, variables, secrets)) from None


def read_secret(
    path: str | Path | None, variable: str, environ: Mapping[str, str] | None = None
) -> str | None:
    """A secret from the file at ``path``, else from the variable ``variable``, else None.

    A trailing newline of the file (as ``echo`` writes) is not part of the
    secret; an empty variable counts as unset.

    Raises
    ------
    ConfigError
        When the file cannot be read; the message names the file, never its content.
    """
    if path is not None:
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the secret file {path}: {exc}") from None
    return (os.environ if environ is None else environ).get(variable) or None
