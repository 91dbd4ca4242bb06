"""The long-lived pieces the server and the CLI share: store, registries, engine."""

from __future__ import annotations

import logging

import httpx

from proxy.config import Config
from proxy.engine import Engine
from proxy.errors import ConfigError, ProxyError
from proxy.registry import ConnectionRegistry
from proxy.secrets import Vault, install_log_redaction, load_fernet
from proxy.sessions import SessionService
from proxy.settings import Settings
from proxy.store import Store
from proxy.versions import VersionRegistry

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
        self.versions = VersionRegistry(self.store, self.connections)
        self.sessions = SessionService(self.store, self.versions, self.engine)

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
        self.versions.load()
        self.sessions.load()
        for data in self.config.connections:
            conn = await self.connections.upsert_by_name(data)
            log.info("connection %s (%s) loaded from config", conn.name, conn.id)
        for index, data in enumerate(self.config.versions):
            try:
                version = await self.versions.upsert_by_name(data)
            except ProxyError as exc:
                raise ConfigError(f"config versions[{index}] ({data.get('name', '?')}): {exc.message}") from None
            log.info("version %s (%s) loaded from config", version.name, version.id)

    async def close(self) -> None:
        await self.engine.aclose()
        self.store.close()
