"""How the pytest plugin reads its options and ini values: paths (relative to the working directory or the ini
file), the record mode, `NAME=VALUE` lists, flags, and the folders the session's cassettes and lasting data use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config.record_mode import RecordMode

DEFAULT_PLUGIN_RECORD_MODE = RecordMode.NONE  # CI stays offline unless asked


def _option_path(config: pytest.Config, option: str, ini: str) -> Path | None:
    """A path from the command line (relative to the working directory) or the ini file (relative to it)."""
    given = config.getoption(option)
    if given:
        return Path(given).absolute()
    from_ini = config.getini(ini)
    if from_ini:
        base = config.inipath.parent if config.inipath else config.rootpath
        return base / str(from_ini)
    return None


def _record_mode(config: pytest.Config) -> RecordMode:
    value = config.getoption("--proxy-record-mode") or config.getini("proxy_record_mode")
    if not value:
        return DEFAULT_PLUGIN_RECORD_MODE
    from proxy.errors import InvalidField

    try:
        return RecordMode.parse(value, "proxy_record_mode")
    except InvalidField as exc:
        raise pytest.UsageError(exc.message) from None


def _assignments(config: pytest.Config, option: str, ini: str) -> list[tuple[str, str]]:
    """`NAME=VALUE` pairs from a repeatable option and its ini list; a malformed one stops the run."""
    given = [*config.getini(ini), *(config.getoption(option) or [])]
    if not given:
        return []
    from proxy.engine.upstreams import parse_assignment
    from proxy.errors import InvalidField

    try:
        return [parse_assignment(str(text), option.removeprefix("--")) for text in given if str(text).strip()]
    except InvalidField as exc:
        raise pytest.UsageError(f"proxy_server: {exc.message}") from None


def _flag(config: pytest.Config, option: str, ini: str) -> bool:
    return bool(config.getoption(option)) or str(config.getini(ini)).lower() in ("1", "true", "yes", "on")


def _lasting_dir(config: pytest.Config) -> Path:
    """Where what outlives the session is kept: cassette use and orphans."""
    return _option_path(config, "--proxy-data-dir", "proxy_data_dir") or config.rootpath / ".proxy"


def _cassettes_dir(config: pytest.Config) -> Path:
    """The cassette folder as the server will use it (the same merge), without loading the config when an option
    names it."""
    given = _option_path(config, "--proxy-cassettes", "proxy_cassettes")
    if given is not None:
        return given
    from proxy.config.sources import merge_settings

    return merge_settings(
        _file_settings(config), {}, {}, {"cassettes_dir": config.rootpath / "cassettes"}
    ).cassettes_dir


def _file_settings(config: pytest.Config) -> dict[str, Any]:
    """The config file's settings, or none when there is no file or it is unusable (the server says why)."""
    config_path = _option_path(config, "--proxy-config", "proxy_config")
    if config_path is None:
        return {}
    from proxy.config.file import load_config
    from proxy.errors import ConfigError

    try:
        return load_config(config_path).settings
    except ConfigError:
        return {}
