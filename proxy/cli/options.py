"""The options and settings the `proxy` commands share: the option decorators, flags over the config file over the
defaults, and the config file and Runtime as clean CLI errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from proxy.config.file import Config, load_config
from proxy.config.record_mode import RecordMode
from proxy.config.settings import (
    DEFAULT_CASSETTES_DIR,
    DEFAULT_DATA_DIR,
    DEFAULT_REPLAY_SPEED,
    ReplayLatency,
    Settings,
)
from proxy.config.sources import merge_settings
from proxy.errors import ConfigError

RECORD_MODES = tuple(mode.value for mode in RecordMode)
# Flags named otherwise than their setting.
FLAG_SETTINGS = {"cassettes": "cassettes_dir"}


def shown_default(default: Any) -> dict[str, Any]:
    """An option's default left None, so that a flag left out lets the config file's setting count; --help still
    shows the default that then applies."""
    return {"default": None, "show_default": str(default)}


CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="YAML config file (connections, settings…)."
)
DATA_DIR_OPTION = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    **shown_default(DEFAULT_DATA_DIR),
    help="Data folder (SQLite store, key).",
)
CASSETTES_OPTION = click.option(
    "--cassettes", type=click.Path(path_type=Path), **shown_default(DEFAULT_CASSETTES_DIR), help="Cassette folder."
)
RECORD_MODE_OPTION = click.option(
    "--record-mode",
    type=click.Choice(RECORD_MODES, case_sensitive=False),
    **shown_default(RecordMode.ONCE.value),
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
            type=click.Choice([m.value for m in ReplayLatency], case_sensitive=False),
            **shown_default(ReplayLatency.NONE.value),
            help="On replay: answer at once (none), or sleep each answer's recorded latency (recorded).",
        ),
        click.option(
            "--replay-speed",
            type=click.FloatRange(min=0, min_open=True),
            **shown_default(DEFAULT_REPLAY_SPEED),
            metavar="F",
            help="With --replay-latency recorded: divide the recorded delays by F (2 replays twice as fast).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_settings(config: Config, **flags: Any) -> Settings:
    """The settings of a command: its flags (an option left out is None: see `shown_default`), then PROXY_API_KEY,
    then the config file's settings, then the defaults (proxy/config/sources.py)."""
    given = {FLAG_SETTINGS.get(name, name): value for name, value in flags.items() if value is not False}
    return merge_settings(config.settings, given, os.environ)


def read_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None


def load_runtime(config_path: Path | None, flags: dict[str, Any]) -> Any:
    """A Runtime for the in-process commands, with config errors as clean CLI errors."""
    from proxy.server.runtime import Runtime

    config = read_config(config_path)
    settings = build_settings(config, **flags)
    try:
        runtime = Runtime(settings, config)
        runtime.check_config()
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    return runtime


def data_dir_option(what_for: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--data-dir` for a cassettes command, saying what it reads there."""
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        **shown_default(DEFAULT_DATA_DIR),
        help=f"Data folder: {what_for}",
    )


def cassette_root(cassettes: Path | None, config_path: Path | None) -> Path:
    """The cassette folder a cassettes command works on: the flag, else the config file's, else the default."""
    config = read_config(config_path)
    return build_settings(config, cassettes=cassettes).cassettes_dir
