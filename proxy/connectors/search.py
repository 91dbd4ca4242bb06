"""Calls to a connector: its registration test query and its searches, through the same engine (and
cassettes) as any call. A registration is cancelled — with a 400 saying why, never a 409 or 5xx, which the
cohere SDK retries — when the connector cannot be reached, answers non-2xx, or has no `results` list. A
search answers each result whole and names the connector's `excludes` as `excluded_fields`: as in Cohere,
excluded fields remain in the document and are only kept out of the prompt.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from proxy.cassettes.library import CassetteLibrary
from proxy.connections.fault_rules import FaultRule
from proxy.connections.spec import AuthType, ConnectionType
from proxy.connections.targets import CallSubject, ForwardTarget
from proxy.connectors.connector import Connector
from proxy.engine.call import Engine
from proxy.engine.results import CallLabel, CallResult
from proxy.errors import BadRequest, CallFailure, InvalidField
from proxy.security.redaction import Redactor
from proxy.security.url_secrets import secret_values, whole_credentials

REGISTRATION_QUERY = "proxy connector registration test"


def auth_header(auth_type: str | None, token: str | None) -> dict[str, str]:
    if not auth_type or not token:
        return {}
    value = {"bearer": f"Bearer {token}", "basic": f"Basic {token}", "noscheme": token}[auth_type]
    return {"Authorization": value}


class StoredConnectors(Protocol):
    """Where the calls find a connector and its stored secrets (`proxy.connectors.registry.ConnectorRegistry`)."""

    def get(self, connector_id_: str) -> Connector: ...

    def secrets_of(self, connector: Connector) -> dict[str, str]: ...


class ConnectorCalls:
    """A connector's calls: its registration test query and its searches, sent by `engine`."""

    def __init__(
        self, connectors: StoredConnectors, engine: Engine, library: CassetteLibrary, redactor: Redactor
    ) -> None:
        self.connectors = connectors
        self.engine = engine
        self.library = library
        self.redactor = redactor

    def _target(self, connector: Connector, token: str | None) -> ForwardTarget:
        """Where the engine sends the connector's calls: POST to its URL with its service auth."""
        target_id = f"connector:{connector.id}"
        subject = CallSubject(target_id, connector.name, AuthType.NONE.value, ConnectionType.CONVERSATION.value)
        faults = [FaultRule.model_validate(rule) for rule in connector.faults]
        return ForwardTarget(
            target_id,
            subject,
            headers=auth_header(connector.service_auth_type, token),
            faults=faults,
            query_credentials=whole_credentials(connector.url),
        )

    def target_of(self, connector: Connector) -> ForwardTarget:
        """Where the connector's calls go, with its stored credential (a drift check re-sends through it)."""
        return self._target(connector, self.connectors.secrets_of(connector).get("token"))

    async def call(
        self, connector: Connector, body: dict[str, Any], token: str | None = None, kind: str = "connector search"
    ) -> CallResult:
        token = token if token is not None else self.connectors.secrets_of(connector).get("token")
        target = self._target(connector, token)
        handle = self.library.server_handle("connectors", connector.name, "search", self.library.default_mode)
        payload = json.dumps(body, ensure_ascii=False).encode()
        return await self.engine.forward(
            target, "POST", connector.url, {"Content-Type": "application/json"}, payload, handle, CallLabel(kind)
        )

    async def register(self, connector: Connector, secrets: dict[str, str]) -> None:
        """Send the registration test query with `secrets`; raises BadRequest saying why when it fails."""
        # Until the test query passes the secrets are not the connector's: known for this call only.
        with self.redactor.scoped([*secrets.values(), *secret_values(connector.url)]):
            result = await self.call(
                connector, {"query": REGISTRATION_QUERY}, secrets.get("token"), "connector registration"
            )
        problem = search_problem(result)
        if problem:
            raise BadRequest(f"connector registration cancelled: the test query to {connector.shown_url} {problem}")

    async def search(self, connector_id_: str, body: dict[str, Any]) -> tuple[dict[str, Any], CallResult]:
        connector = self.connectors.get(connector_id_)
        if not connector.active:
            raise BadRequest(f"connector {connector.id} is inactive: activate it (active: true) to search")
        query = body.get("query")
        if not isinstance(query, str) or not query:
            raise InvalidField("query", "is required (a non-empty string)")
        result = await self.call(connector, body)
        problem = search_problem(result)
        if problem:
            if connector.continue_on_failure:
                warning = f"connector {connector.id} failed: it {problem}"
                return {"results": [], "excluded_fields": list(connector.excludes), "warning": warning}, result
            raise SearchFailed(f"connector {connector.id} failed: it {problem}", result)
        assert result.reply is not None
        # As in Cohere, excluded fields stay in each document: they are named for the client to keep them out
        # of its prompt.
        return {**result.reply.json, "excluded_fields": list(connector.excludes)}, result


class SearchFailed(CallFailure):
    """A connector call whose answer is no search answer; the route answers 502 naming why (404 on a cassette miss)."""

    def __init__(self, message: str, result: CallResult) -> None:
        super().__init__(message)
        self.message = message
        self.result = result


def search_problem(result: CallResult) -> str | None:
    """Why a connector call does not count as a search answer, or None when it does."""
    reply = result.reply
    if reply is None:
        return f"could not be completed: {result.error}"
    if not 200 <= reply.status < 300:
        return f"answered HTTP {reply.status}: {reply.text[:300]}"
    if not reply.is_json or not isinstance(reply.json, dict) or not isinstance(reply.json.get("results"), list):
        return f"answered without a 'results' list: {reply.text[:300]}"
    return None
