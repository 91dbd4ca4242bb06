"""The options and settings the `proxy` commands share: the option decorators, flags over the config file over the
defaults, and the config file and Runtime as clean CLI errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from proxy.config import CLIENT_LIMITS, Config, load_config
from proxy.errors import ConfigError
from proxy.record_mode import RecordMode
from proxy.settings import (
    DEFAULT_CASSETTES_DIR,
    DEFAULT_DATA_DIR,
    DEFAULT_FLOW_LOG_SIZE,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_REPLAY_SPEED,
    ON_EXPIRED,
    REPLAY_LATENCIES,
    Settings,
)

RECORD_MODES = tuple(mode.value for mode in RecordMode)


CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="YAML config file (connections, settings…)."
)
DATA_DIR_OPTION = click.option(
    "--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR, help="Data folder (SQLite store, key)."
)
CASSETTES_OPTION = click.option(
    "--cassettes", type=click.Path(path_type=Path), default=DEFAULT_CASSETTES_DIR, help="Cassette folder."
)
RECORD_MODE_OPTION = click.option(
    "--record-mode",
    type=click.Choice(RECORD_MODES, case_sensitive=False),
    default=RecordMode.ONCE.value,
    help="Record mode, with vcrpy's names (off: live, cassettes untouched).",
)


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command that touches connections or cassettes shares."""
    for option in reversed([CONFIG_OPTION, DATA_DIR_OPTION, CASSETTES_OPTION, RECORD_MODE_OPTION]):
        fn = option(fn)
    return fn


def replay_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """How replayed answers are paced (`serve` and `run`)."""
    options = [
        click.option(
            "--replay-latency",
            type=click.Choice(REPLAY_LATENCIES, case_sensitive=False),
            default=REPLAY_LATENCIES[0],
            help="On replay: answer at once (none), or sleep each answer's recorded latency (recorded).",
        ),
        click.option(
            "--replay-speed",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_REPLAY_SPEED,
            metavar="F",
            help="With --replay-latency recorded: divide the recorded delays by F (2 replays twice as fast).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_settings(config: Config, **flags: Any) -> Settings:
    """Flags beat the config file's settings, which beat the defaults. A flag that only holds the
    default its --help shows was not given, so the file's setting still counts."""
    file = config.settings
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        flags = {k: v for k, v in flags.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}

    def pick(name: str, default: Any) -> Any:
        value = flags.get(name)
        return value if value is not None else file.get(name, default)

    return Settings(
        host=pick("host", DEFAULT_HOST),
        port=int(pick("port", DEFAULT_PORT)),
        data_dir=Path(pick("data_dir", DEFAULT_DATA_DIR)),
        cassettes_dir=Path(pick("cassettes", file.get("cassettes_dir", DEFAULT_CASSETTES_DIR))),
        record_mode=RecordMode.parse(pick("record_mode", RecordMode.ONCE)).value,
        allow_http=bool(flags.get("allow_http") or file.get("allow_http", False)),
        traceparent=bool(file.get("traceparent", True)),
        api_key=pick("api_key", None) or os.environ.get("PROXY_API_KEY"),
        replay_latency=str(pick("replay_latency", "none")).lower(),
        allowed_hosts=tuple(flags.get("allowed_hosts") or ()),
        cors_origins=tuple(flags.get("cors_origins") or ()),
        replay_speed=float(pick("replay_speed", DEFAULT_REPLAY_SPEED)),
        fault_seed=None if file.get("fault_seed") is None else int(file["fault_seed"]),
        cassette_max_age=file.get("cassette_max_age"),
        on_expired=str(file.get("on_expired", ON_EXPIRED[0])),
        flow_log_size=flow_log_size(file.get("flow_log_size", DEFAULT_FLOW_LOG_SIZE)),
        # Checked when the file was read; what it leaves out keeps its default.
        **{key: kind(file[key]) for key, (kind, _) in CLIENT_LIMITS.items() if file.get(key) is not None},
    )


def flow_log_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise click.ClickException(f"settings.flow_log_size: {value!r} is not a positive whole number of flows")
    return value


def read_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None


def load_runtime(config_path: Path | None, flags: dict[str, Any]) -> Any:
    """A Runtime for the in-process commands, with config errors as clean CLI errors."""
    from proxy.runtime import Runtime

    config = read_config(config_path)
    settings = build_settings(config, **flags)
    try:
        runtime = Runtime(settings, config)
        runtime.check_config()
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    return runtime
