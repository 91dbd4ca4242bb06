"""Where a server's settings come from, merged in one place: flags beat environment variables, which beat the
config file's `settings`, which beat the defaults (docs/configuration.md). The CLI and the pytest plugin alike
hand their sources in; nothing here reads a command line, a pytest option or the process environment itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from proxy.config.settings import Settings

# The settings an environment variable gives, as its flag would: the one place each variable is read.
ENVIRONMENT = {"api_key": "PROXY_API_KEY"}
SETTING_NAMES = frozenset(f.name for f in fields(Settings))


def merge_settings(
    file: Mapping[str, Any],
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    defaults: Mapping[str, Any] | None = None,
) -> Settings:
    """One `Settings` from its sources, each already checked and typed where it was read: `file`, the config file's
    `settings` as `load_config` left them; `flags`, by setting name, those given (None, empty text or an empty list:
    not given); `env`, the environment; `defaults`, where a caller's differ from `Settings`' own (the pytest plugin's).
    A list a flag gives replaces the file's (`--cors-origin` given: the file's `cors_origins` do not count), as
    any other flag does its setting."""
    merged = {k: v for k, v in (defaults or {}).items() if _given(v)}
    merged.update(_from_file(file))
    merged.update({name: env[variable] for name, variable in ENVIRONMENT.items() if _given(env.get(variable))})
    merged.update({k: v for k, v in flags.items() if _given(v)})
    unknown = set(merged) - SETTING_NAMES
    if unknown:
        raise TypeError(f"not settings: {', '.join(sorted(unknown))}")
    return Settings(**merged)


def _from_file(file: Mapping[str, Any]) -> dict[str, Any]:
    values = {k: v for k, v in file.items() if k in SETTING_NAMES and _given(v)}
    if _given(file.get("cassettes")):  # the key's other spelling, the flag's (--cassettes)
        values["cassettes_dir"] = file["cassettes"]
    return values


def _given(value: Any) -> bool:
    return value is not None and value != "" and not (isinstance(value, tuple | list) and not value)
