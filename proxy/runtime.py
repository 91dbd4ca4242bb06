"""The long-lived pieces the server and the CLI share: store, registries, engine."""

from __future__ import annotations

import logging

import httpx

from proxy.config import Config
from proxy.engine import Engine
from proxy.errors import ConfigError, ProxyError
from proxy.registry import ConnectionRegistry
from proxy.secrets import Vault, install_log_redaction, load_fernet
from proxy.settings import Settings
from proxy.store import Store

log = logging.getLogger("proxy")


class Runtime:
    def __init__(
        self, settings: Settings, config: Config | None = None, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        install_log_redaction()
        self.settings = settings
        self.config = config or Config()
        self.store = Store(settings.data_dir, Vault(load_fernet(settings.data_dir)))
        self.connections = ConnectionRegistry(self.store, settings.allow_http)
        self.engine = Engine(transport, send_traceparent=settings.traceparent)

    def check_config(self) -> None:
        """Validate the config file's connections before serving, so a bad one stops start-up with
        its place and reason instead of a traceback."""
        for index, data in enumerate(self.config.connections):
            try:
                self.connections.build(data)
            except ProxyError as exc:
                name = data.get("name", "?")
                raise ConfigError(f"config connections[{index}] ({name}): {exc.message}") from None

    async def start(self) -> None:
        self.connections.load()
        for data in self.config.connections:
            conn = await self.connections.upsert_by_name(data)
            log.info("connection %s (%s) loaded from config", conn.name, conn.id)

    async def close(self) -> None:
        await self.engine.aclose()
        self.store.close()
