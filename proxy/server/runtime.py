"""The long-lived pieces the server and the CLI share: store, registries, engine, and the redactor that
knows this server's secrets (one per Runtime: two servers in one process never see each other's). A Runtime
leaves its host process as it found it (collector, logging): that is for `proxy serve` to set."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx

from proxy.cassettes.library import CassetteLibrary
from proxy.cassettes.matching import MatchRules
from proxy.cassettes.parse_cache import ParseCache
from proxy.cassettes.record_replay import RecordReplayTransport
from proxy.config.file import Config
from proxy.config.known_keys import check_keys, check_model_keys
from proxy.config.record_mode import RecordMode
from proxy.config.settings import MIN_SECRET_LEN, ReplayLatency, Settings
from proxy.connections.compiled import connection_secrets
from proxy.connections.registry import CONNECTIONS, ConnectionRegistry
from proxy.connections.spec import ConnectionSpec, parse_spec
from proxy.connections.versions import CONFIG_FIELDS as VERSION_CONFIG_FIELDS
from proxy.connections.versions import VersionRegistry
from proxy.connectors.input import ConnectorIn, config_connector_secrets
from proxy.connectors.registry import ConnectorRegistry
from proxy.connectors.sealing import CONNECTORS
from proxy.engine.call import Engine
from proxy.engine.transports.client import AiohttpTransport
from proxy.engine.transports.demo import DemoHostTransport
from proxy.engine.transports.faults import FaultTransport
from proxy.engine.transports.live import PacedTransport
from proxy.engine.transports.unset import UnsetCredentialGuard
from proxy.engine.upstreams import ClientSecrets, ForwardUpstream, forward_upstream
from proxy.errors import ConfigError, InvalidField, ProxyError, UnknownField
from proxy.flows.log import FlowLog
from proxy.security.redaction import Redactor
from proxy.security.vault import KEY_FILE_NAME, SECRET_KEY_ENV, has_key, load_vault
from proxy.sessions import SessionService
from proxy.storage.entity_tables import read_live, stored_secrets
from proxy.storage.store import DB_FILE_NAME, Store

log = logging.getLogger("proxy")
UNSET_OWNER = re.compile(r"connections\[(\d+)\]")  # the connection a credential's place in the config belongs to


class Runtime:
    def __init__(
        self, settings: Settings, config: Config | None = None, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self.config = config or Config()
        self.redactor = Redactor()
        self.redactor.register("config", redact_values(self.config))
        self.store = Store(settings.data_dir, load_vault(settings.data_dir))
        self.connections = ConnectionRegistry(self.store, settings.allow_http, self.redactor)
        self.connections.short_secrets_allowed = settings.record_mode is RecordMode.NONE
        self.library = CassetteLibrary(
            settings.cassettes_dir,
            self.store,
            MatchRules.from_settings(self.config.settings),
            settings.record_mode,
            replay_latency=settings.replay_latency is ReplayLatency.RECORDED,
            replay_speed=settings.replay_speed,
            max_age_s=settings.cassette_max_age.total_seconds() if settings.cassette_max_age else None,
            on_expired=settings.on_expired,
            cache=ParseCache.in_data_dir(settings.data_dir),
        )
        live: httpx.AsyncBaseTransport = PacedTransport(DemoHostTransport(transport or AiohttpTransport()))
        if self.config.unset_credentials:
            live = UnsetCredentialGuard(live, set(self.config.unset_credentials.values()))
        # Faults act above the cassette: what they inject is never recorded, and acts alike in replay.
        self.faults = FaultTransport(RecordReplayTransport(live, self.library, self.redactor), settings.fault_seed)
        self.engine = Engine(
            self.faults,
            send_traceparent=settings.traceparent,
            redactor=self.redactor,
            flow_body_max_bytes=settings.flow_body_max_bytes,
        )
        self.flows = FlowLog(self.store, self.redactor, settings.flow_log_size, settings.max_flow_viewers)
        self.engine.observer = self.flows.observe
        self.versions = VersionRegistry(self.store, self.connections)
        self.sessions = SessionService(self.store, self.versions, self.engine, self.library)
        self.connectors = ConnectorRegistry(self.store, self.engine, self.library, settings.allow_http, self.redactor)
        self.upstreams: dict[str, ForwardUpstream] = {}  # forward-only, by name (see add_upstream)
        self.client_secrets = ClientSecrets(self.redactor)

    def add_upstream(self, name: str, url: str) -> ForwardUpstream:
        """A forward-only upstream `name` at base URL `url`, before the server starts (the pytest plugin's
        `--proxy-upstream`). A config connection of the same name would be shadowed: refused."""
        if any(str(data.get("name")) == name for data in self.config.connections):
            raise InvalidField(f"upstream {name}", "a connection of the config file has this name already")
        upstream = self.upstreams[name] = forward_upstream(name, url, self.settings.allow_http)
        return upstream

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
        self._check_unset_credentials()
        try:
            for index, data in enumerate(self.config.versions):
                check_keys(data, VERSION_CONFIG_FIELDS, f"versions[{index}]", camel_case=True)
            for index, data in enumerate(self.config.connectors):
                check_model_keys(data, ConnectorIn, f"connectors[{index}]")
        except UnknownField as exc:
            raise ConfigError(f"config {exc.message}") from None

    def _check_unset_credentials(self) -> None:
        """A credential whose environment variable is not set is fine for a replay (record mode none), with a
        warning per variable; a server that may record refuses it, as before."""
        warned = set()
        for where, variable in self.config.unset_credentials.items():
            owner = UNSET_OWNER.match(where)
            name = self.config.connections[int(owner.group(1))].get("name") if owner else None
            if self.library.mode_for(str(name) if name else None) is not RecordMode.NONE:
                raise ConfigError(
                    f"config {where}: environment variable {variable} is not set (only a replay with record mode "
                    "none runs without it)"
                )
            if variable not in warned:
                warned.add(variable)
                log.warning(
                    "config %s: environment variable %s is not set: replaying without it (a call that would go "
                    "live fails)",
                    where,
                    variable,
                )

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

    async def close(self) -> None:
        await self.library.close()
        await self.engine.aclose()
        await self.flows.close()
        await self.sessions.close()
        self.store.close()


def redact_values(config: Config) -> list[str]:
    """`settings.redact_values`: more values to mask (account numbers, say), each long enough to mask."""
    values = [str(v) for v in config.settings.get("redact_values") or ()]
    for index, value in enumerate(values):
        if len(value) < MIN_SECRET_LEN:
            raise ConfigError(
                f"settings.redact_values[{index}]: is {len(value)} characters long; a value to mask needs at "
                f"least {MIN_SECRET_LEN}"
            )
    return values


def known_secrets(settings: Settings, config: Config) -> Redactor:
    """A redactor that knows what a server with these settings would, without starting one
    (`proxy cassettes verify`): the config file's secrets and those stored in the data dir,
    decrypted with its key. A data dir without a database is left alone."""
    redactor = Redactor()
    redactor.register("config", redact_values(config))
    for index, data in enumerate(config.connections):
        try:
            redactor.register(("config connection", index), connection_secrets(parse_spec(data)))
        except ProxyError as exc:
            raise ConfigError(f"config connections[{index}] ({data.get('name', '?')}): {exc.message}") from None
    for index, data in enumerate(config.connectors):
        redactor.register(("config connector", index), config_connector_secrets(data))
    data_dir = settings.data_dir
    if not (data_dir / DB_FILE_NAME).exists():
        return redactor
    store = _existing_store(data_dir)
    try:
        for kind in (CONNECTIONS, CONNECTORS):
            for owner, secrets in stored_secrets(store, kind):
                redactor.register(owner, secrets)
    finally:
        store.close()
    return redactor


def known_connection_urls(settings: Settings, config: Config) -> dict[str, str]:
    """Each connection's URL template by name, as a server with these settings would hold them, without starting
    one (`proxy cassettes import`): the data dir's stored connections, and the config file's over them (start-up
    writes those by name). A data dir without a database is left alone."""
    urls: dict[str, str] = {}
    data_dir = settings.data_dir
    if (data_dir / DB_FILE_NAME).exists():
        store = _existing_store(data_dir)
        try:
            rows, _ = store.call(read_live, store, CONNECTIONS)
        finally:
            store.close()
        urls.update((str(row["name"]), str(json.loads(row["data"]).get("url") or "")) for row in rows)
    urls.update((str(data.get("name")), str(data.get("url") or "")) for data in config.connections)
    return urls


def _existing_store(data_dir: Path) -> Store:
    """The store of a data dir that holds a database, refused when its key is neither there nor in the
    environment: a new key would open none of its secrets."""
    if not has_key(data_dir):
        raise ConfigError(f"{data_dir} holds a database but no {KEY_FILE_NAME}: set {SECRET_KEY_ENV} to read it")
    return Store(data_dir, load_vault(data_dir))
