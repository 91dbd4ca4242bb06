"""GET/PUT/DELETE /_proxy/faults/{connection}: fault rules set at run time, and the test id calls carry.

`{connection}` is a connection's name or id, or `connector:<id>`. Rules set with an `X-Proxy-Test-Id`
header apply only to calls made while serving a request with the same header; without one, to every call
of the connection. Either replaces the connection's own `faults` until DELETE (with the same header).
GET tells which rules act on those calls, and how often each has acted."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.config.known_keys import check_model_keys
from proxy.connections.fault_rules import TEST_ID_HEADER, FaultRule, scoped_to_test
from proxy.connections.spec import raise_first
from proxy.server.api.common import json_response, read_json_object, runtime
from proxy.server.api.openapi import ApiRoute
from proxy.server.api.schemas_faults import FaultsActive, FaultsCleared, FaultsSet, FaultsSetAnswer
from proxy.server.runtime import Runtime

CONNECTOR_PREFIX = "connector:"
_HEADER = TEST_ID_HEADER.lower().encode()


class FaultScopeMiddleware:
    """Every call made while serving a request carries the request's X-Proxy-Test-Id (never sent upstream)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        test_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == _HEADER), None)
        with scoped_to_test(test_id):
            await self.app(scope, receive, send)


def _connection_id(rt: Runtime, ref: str) -> str:
    if ref.startswith(CONNECTOR_PREFIX):
        return f"{CONNECTOR_PREFIX}{rt.connectors.get(ref.removeprefix(CONNECTOR_PREFIX)).id}"
    return rt.connections.resolve(ref).id


def _own_rules(rt: Runtime, connection_id: str) -> list[FaultRule]:
    """The connection's (or connector's) own `faults`, as its calls pass them to the fault layer."""
    if connection_id.startswith(CONNECTOR_PREFIX):
        connector = rt.connectors.get(connection_id.removeprefix(CONNECTOR_PREFIX))
        return [FaultRule.model_validate(rule) for rule in connector.faults]
    return rt.connections.resolve(connection_id).target.faults


def _test_id(request: Request) -> str | None:
    return request.headers.get(TEST_ID_HEADER) or None


async def set_faults(request: Request) -> JSONResponse:
    """Set a connection's fault rules at run time."""
    rt = runtime(request)
    connection_id = _connection_id(rt, request.path_params["connection"])
    data = await read_json_object(request)
    check_model_keys(data, FaultsSet)
    try:
        given = FaultsSet.model_validate(data)
    except ValidationError as exc:
        raise_first(exc)
    test_id = _test_id(request)
    rt.faults.set_rules(connection_id, given.faults, test_id)
    answer = {"connection": connection_id, "testId": test_id, "faults": [r.model_dump() for r in given.faults]}
    return json_response(answer)


async def list_faults(request: Request) -> JSONResponse:
    """The rules acting on a connection's calls (for the X-Proxy-Test-Id given), with what each has done."""
    rt = runtime(request)
    connection_id = _connection_id(rt, request.path_params["connection"])
    test_id = _test_id(request)
    source, plan = rt.faults.active(connection_id, _own_rules(rt, connection_id), test_id)
    done = [] if plan is None else list(zip(plan.rules, plan.fired, strict=True))
    rules = [{**rule.model_dump(), "used": used} for rule, used in done]
    answer = {
        "connection": connection_id,
        "testId": test_id,
        "source": source,
        "faults": rules,
        "testIds": rt.faults.test_ids(connection_id) if test_id is None else None,
    }
    return json_response(answer)


async def clear_faults(request: Request) -> JSONResponse:
    """Clear the fault rules set at run time: the connection's own apply again."""
    rt = runtime(request)
    connection_id = _connection_id(rt, request.path_params["connection"])
    test_id = _test_id(request)
    cleared = rt.faults.clear_rules(connection_id, test_id)
    return json_response({"connection": connection_id, "testId": test_id, "cleared": cleared})


ROUTES = [
    ApiRoute("/_proxy/faults/{connection}", list_faults, methods=["GET"], response=FaultsActive),
    ApiRoute("/_proxy/faults/{connection}", set_faults, methods=["PUT"], body=FaultsSet, response=FaultsSetAnswer),
    ApiRoute("/_proxy/faults/{connection}", clear_faults, methods=["DELETE"], response=FaultsCleared),
]
