"""The long-lived pieces the server and the CLI share: store, registries, engine."""

from __future__ import annotations

import gc
import logging
from typing import Any

import httpx

from proxy.api.demo import DemoHostTransport
from proxy.config import Config
from proxy.connectors import ConnectorIn, ConnectorRegistry
from proxy.engine import Engine
from proxy.errors import ConfigError, ProxyError, UnknownField
from proxy.known_keys import check_keys, check_model_keys
from proxy.models import ConnectionSpec
from proxy.record_mode import RecordMode
from proxy.registry import ConnectionRegistry
from proxy.secrets import REDACTOR, Vault, install_log_redaction, load_fernet
from proxy.sessions import SessionService
from proxy.settings import GC_THRESHOLDS, Settings
from proxy.store import Store
from proxy.transports.http11 import Http11Transport
from proxy.transports.library import CassetteLibrary
from proxy.transports.live import PacedTransport
from proxy.transports.matching import MatchRules
from proxy.transports.record_replay import RecordReplayTransport
from proxy.versions import CONFIG_FIELDS as VERSION_CONFIG_FIELDS
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
        self.library = CassetteLibrary(
            settings.cassettes_dir,
            self.store,
            MatchRules.from_settings(self.config.settings),
            RecordMode.parse(settings.record_mode),
            replay_latency=settings.replay_latency == "recorded",
            replay_speed=settings.replay_speed,
        )
        REDACTOR.add(*(str(v) for v in self.config.settings.get("redact_values") or ()))
        live = PacedTransport(DemoHostTransport(transport or Http11Transport()))
        self.engine = Engine(RecordReplayTransport(live, self.library), send_traceparent=settings.traceparent)
        self.versions = VersionRegistry(self.store, self.connections)
        self.sessions = SessionService(self.store, self.versions, self.engine, self.library)
        self.connectors = ConnectorRegistry(self.store, self.engine, self.library, settings.allow_http)

    def check_config(self) -> None:
        """Validate the config file's connections before serving, and every key of its versions and
        connectors, so a bad one stops start-up with its place and reason instead of a traceback."""
        for index, data in enumerate(self.config.connections):
            try:
                fields = self._without_proxy_fields(data)
                check_model_keys(fields, ConnectionSpec, f"connections[{index}]")
                self.connections.build(fields)
            except UnknownField as exc:
                raise ConfigError(f"config {exc.message}") from None
            except ProxyError as exc:
                raise ConfigError(f"config connections[{index}] ({data.get('name', '?')}): {exc.message}") from None
        try:
            for index, data in enumerate(self.config.versions):
                check_keys(data, VERSION_CONFIG_FIELDS, f"versions[{index}]", camel_case=True)
            for index, data in enumerate(self.config.connectors):
                check_model_keys(data, ConnectorIn, f"connectors[{index}]")
        except UnknownField as exc:
            raise ConfigError(f"config {exc.message}") from None

    def _without_proxy_fields(self, data: dict[str, Any]) -> dict[str, Any]:
        """A config connection may carry this server's own `record_mode` beside the Galtea fields."""
        mode = data.get("record_mode", data.get("recordMode"))
        if mode is not None:
            self.library.connection_modes[str(data.get("name"))] = RecordMode.parse(mode, "record_mode")
        return {k: v for k, v in data.items() if k not in ("record_mode", "recordMode")}

    async def start(self) -> None:
        self.library.recover()
        self.connections.load()
        self.versions.load()
        self.sessions.load()
        self.connectors.load()
        for data in self.config.connections:
            conn = await self.connections.upsert_by_name(self._without_proxy_fields(data))
            log.info("connection %s (%s) loaded from config", conn.name, conn.id)
        for index, data in enumerate(self.config.versions):
            try:
                version = await self.versions.upsert_by_name(data)
            except ProxyError as exc:
                raise ConfigError(f"config versions[{index}] ({data.get('name', '?')}): {exc.message}") from None
            log.info("version %s (%s) loaded from config", version.name, version.id)
        for index, data in enumerate(self.config.connectors):
            # A connector that fails its registration test is reported, not fatal: the server still serves.
            try:
                connector = await self.connectors.upsert(data)
                log.info("connector %s loaded from config", connector.id)
            except ProxyError as exc:
                log.error("config connectors[%d] (%s) not registered: %s", index, data.get("name", "?"), exc.message)
        self.library.start_periodic_flush()
        # What start-up loaded lives as long as the server: keep the collector from walking it again.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    async def close(self) -> None:
        await self.library.close()
        await self.engine.aclose()
        self.store.close()
