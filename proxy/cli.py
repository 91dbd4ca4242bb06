"""The `proxy` command line."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from proxy.config import Config, load_config
from proxy.errors import ConfigError
from proxy.settings import DEFAULT_CASSETTES_DIR, DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_PORT, Settings

RECORD_MODES = ("none", "once", "new_episodes", "all", "off")


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command that touches connections or cassettes shares."""
    options = [
        click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config file."),
        click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="SQLite data folder."),
        click.option("--cassettes", type=click.Path(path_type=Path), default=None, help="Cassette folder."),
        click.option(
            "--record-mode",
            type=click.Choice(RECORD_MODES, case_sensitive=False),
            default=None,
            help="Record mode (vcrpy's names); default: once.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_settings(config: Config, **flags: Any) -> Settings:
    """Flags beat the config file's settings, which beat the defaults."""
    file = config.settings

    def pick(name: str, default: Any) -> Any:
        value = flags.get(name)
        return value if value is not None else file.get(name, default)

    return Settings(
        host=pick("host", DEFAULT_HOST),
        port=int(pick("port", DEFAULT_PORT)),
        data_dir=Path(pick("data_dir", DEFAULT_DATA_DIR)),
        cassettes_dir=Path(pick("cassettes", file.get("cassettes_dir", DEFAULT_CASSETTES_DIR))),
        record_mode=str(pick("record_mode", "once")).lower(),
        allow_http=bool(flags.get("allow_http") or file.get("allow_http", False)),
        traceparent=bool(file.get("traceparent", True)),
        api_key=pick("api_key", None) or os.environ.get("PROXY_API_KEY"),
        replay_latency=str(pick("replay_latency", "none")).lower(),
    )


def read_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None


@click.group()
@click.version_option(package_name="proxy")
def main() -> None:
    """Local mock-and-record server for Galtea endpoint connections and Cohere connectors."""


@main.command()
@common_options
@click.option("--host", default=None, help=f"Address to bind (default {DEFAULT_HOST}).")
@click.option("--port", type=int, default=None, help=f"Port (default {DEFAULT_PORT}).")
@click.option("--api-key", default=None, help="Require 'Authorization: Bearer KEY' (or set PROXY_API_KEY).")
@click.option(
    "--allow-http", is_flag=True, default=None, help="Accept http:// connection URLs without acknowledgement."
)
def serve(config_path: Path | None, **flags: Any) -> None:
    """Run the server."""
    import uvicorn

    from proxy.app import create_app
    from proxy.runtime import Runtime

    config = read_config(config_path)
    settings = build_settings(config, **flags)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry full upstream URLs
    try:
        runtime = Runtime(settings, config)
        runtime.check_config()
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    app = create_app(runtime)
    click.echo(f"proxy listening on http://{settings.host}:{settings.port}", err=False)
    sys.stdout.flush()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
