"""The YAML config file (docs/configuration.md): settings, connections, versions, connectors.

`${VAR}` and `${VAR:-default}` are expanded in every string value after parsing, so a token
never has to be written into the file, and a value with YAML-special characters stays intact.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from proxy.config.expiry import OnExpired, parse_max_age
from proxy.config.known_keys import check_keys
from proxy.config.record_mode import RecordMode
from proxy.config.settings import ReplayLatency, Settings
from proxy.config.web_access import normalize_host_name, normalize_origin
from proxy.errors import ConfigError, InvalidField, UnknownField

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
SECTIONS = ("settings", "connections", "versions", "connectors")
# `settings` takes every server setting (flags beat them), `cassettes` for `cassettes_dir`, and the matching rules.
SETTINGS_KEYS = frozenset(f.name for f in fields(Settings)) | {"cassettes", "ignore", "match_headers", "redact_values"}
IGNORE_KEYS = ("query", "body", "headers")
# The limits on what clients may make the server hold: each setting's type, and what a value must be.
CLIENT_LIMITS: dict[str, tuple[type, str]] = {
    "max_header_bytes": (int, "a positive whole number of bytes"),
    "max_headers": (int, "a positive whole number of headers"),
    "header_timeout": (float, "a positive number of seconds"),
    "max_connections": (int, "a positive whole number of connections"),
    "send_timeout": (float, "a positive number of seconds"),
    "max_flow_viewers": (int, "a positive whole number of viewers"),
    "flow_body_max_bytes": (int, "a positive whole number of bytes"),
}
TEXT_SETTINGS = ("host", "api_key")
PATH_SETTINGS = ("data_dir", "cassettes_dir", "cassettes")
FLAG_SETTINGS = ("allow_http", "traceparent")
# Lists checked one by one with their flag's own parser (`--allowed-host`, `--cors-origin`).
LIST_SETTINGS: dict[str, Callable[[str], str]] = {
    "allowed_hosts": normalize_host_name,
    "cors_origins": normalize_origin,
}
FLAG_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


# Where a credential sits in the file: a connection's or connector's token, password or secret, a custom header.
CREDENTIAL_PLACE = re.compile(
    r"\.(auth_token|authToken|password|token|client_secret|clientSecret)\Z|^connections\[\d+\]\.headers\.[^.]+\Z"
)


@dataclass
class Config:
    settings: dict[str, Any] = field(default_factory=dict)
    connections: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    connectors: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None
    # Credentials from environment variables that are not set: {place in the file: variable}. Their `${VAR}`
    # stays as written; only a server that calls nothing live (record mode none) accepts them.
    unset_credentials: dict[str, str] = field(default_factory=dict)


def expand_env(value: Any, where: str, env: dict[str, str] | None = None, unset: dict[str, str] | None = None) -> Any:
    """`${VAR}` and `${VAR:-default}` in every string. An unset variable without a default is an error, except in
    a credential's place when `unset` is given: there it stays `${VAR}` and is noted in `unset`."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:  # type: ignore[operator]
                return env[name]  # type: ignore[index]
            if default is not None:
                return default
            if unset is not None and CREDENTIAL_PLACE.search(where):
                unset[where] = name
                return match.group(0)
            raise ConfigError(f"config {where}: environment variable {name} is not set")

        return ENV_REFERENCE.sub(replace, value)
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]", env, unset) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k), env, unset) for k, v in value.items()}
    return value


def load_config(path: Path, env: dict[str, str] | None = None) -> Config:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping with {', '.join(SECTIONS)}")
    try:
        check_keys(raw, SECTIONS, what="section")
        settings = _mapping(raw.get("settings"), "settings")
        check_keys(settings, SETTINGS_KEYS, "settings")
        check_keys(_mapping(settings.get("ignore"), "settings.ignore"), IGNORE_KEYS, "settings.ignore")
    except UnknownField as exc:
        raise ConfigError(f"config {exc.message}") from None
    unset: dict[str, str] = {}
    data = expand_env(raw, "", env, unset)
    config = Config(path=path, unset_credentials=unset)
    config.settings = _settings(_mapping(data.get("settings"), "settings"))
    for section in SECTIONS[1:]:
        items = data.get(section) or []
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ConfigError(f"config file {path}: {section} must be a list of mappings")
        setattr(config, section, items)
    return config


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config: {name} must be a mapping")
    return value


def _settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The file's settings, each checked and held as the type `Settings` gives it: the one place they are parsed."""
    try:
        _convert(settings, "record_mode", RecordMode.parse)
        _convert(settings, "replay_latency", _replay_latency)
        _convert(settings, "cassette_max_age", lambda v, where: timedelta(seconds=parse_max_age(v, where)))
        _convert(settings, "on_expired", OnExpired.parse)
        for key in TEXT_SETTINGS:
            _convert(settings, key, _text)
        for key in PATH_SETTINGS:
            _convert(settings, key, lambda v, where: Path(_text(v, where)))
        for key in FLAG_SETTINGS:
            _convert(settings, key, _flag)
        for key, normalize in LIST_SETTINGS.items():
            _convert(settings, key, functools.partial(_text_list, normalize=normalize))
    except InvalidField as exc:
        raise ConfigError(f"config {exc.message}") from None
    _number(settings, "port", int, lambda n: 0 <= n <= 65535, "a port number (0-65535)")
    _number(settings, "replay_speed", float, lambda n: n > 0, "a positive number")
    _number(settings, "fault_seed", int, lambda n: math.isfinite(n) and n == int(n), "an integer")
    _number(settings, "flow_log_size", int, _positive_whole, "a positive whole number of flows")
    for key, (kind, expected) in CLIENT_LIMITS.items():
        _number(settings, key, kind, _positive_whole if kind is int else _positive, expected)
    return settings


def _convert(settings: dict[str, Any], key: str, parse: Callable[[Any, str], Any]) -> None:
    if settings.get(key) is not None:
        settings[key] = parse(settings[key], f"settings.{key}")


def _replay_latency(value: Any, where: str) -> ReplayLatency:
    try:
        return ReplayLatency(str(value).lower())
    except ValueError:
        raise InvalidField(where, f"{value!r} is not one of {', '.join(m.value for m in ReplayLatency)}") from None


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidField(where, f"{value!r} is not text")
    return str(value)


def _text_list(value: Any, where: str, normalize: Callable[[str], str]) -> tuple[str, ...]:
    """A list of text, each item as its flag takes it: a bad one is named by its place (`settings.cors_origins[0]`)."""
    if not isinstance(value, list):
        raise InvalidField(where, f"{value!r} is not a list (write [{value!r}] for one)")
    items = []
    for i, item in enumerate(value):
        try:
            items.append(normalize(_text(item, f"{where}[{i}]")))
        except ValueError as exc:
            raise InvalidField(f"{where}[{i}]", str(exc)) from None
    return tuple(items)


def _flag(value: Any, where: str) -> bool:
    """true or false; as text too, since a `${VAR}` expands to text (`allow_http: ${ALLOW:-false}`)."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if isinstance(value, str) and word in FLAG_WORDS:
        return FLAG_WORDS[word]
    raise InvalidField(where, f"{value!r} is not true or false")


def _positive(n: float) -> bool:
    return math.isfinite(n) and n > 0


def _positive_whole(n: float) -> bool:
    return _positive(n) and n == int(n)


def _number(settings: dict[str, Any], key: str, kind: type, ok: Callable[[Any], bool], expected: str) -> None:
    value = settings.get(key)
    if value is None:
        return
    number = value
    if isinstance(value, str):  # `${PORT}` expands to text
        try:
            number = kind(value)
        except ValueError:
            pass
    if isinstance(number, bool) or not isinstance(number, int | float) or not ok(number):
        raise ConfigError(f"config settings.{key}: {value!r} is not {expected}")
    settings[key] = kind(number)
