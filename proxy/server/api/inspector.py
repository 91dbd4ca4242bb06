"""The inspector at GET /: server-rendered HTML, no front-end build. Connections, versions, sessions, and
for each turn the rendered request (masked), every attempt, the response and what each key extracted;
a form to test a connection that shows the same explanation as `proxy check`."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from proxy.config.settings import DEFAULT_TEST_INPUT
from proxy.connections.compiled import CompiledConnection, public_fields
from proxy.connections.jsonpath_budget import JsonPathStopped, StepBudget
from proxy.connections.spec import ConnectionType
from proxy.engine.results import CallContext, CallLabel
from proxy.errors import ProxyError
from proxy.flows.explain import explain
from proxy.security import jsonbounds
from proxy.server.api.common import runtime
from proxy.server.api.guard import CSRF_FIELD, BrowserKeys
from proxy.server.api.openapi import HTML, ApiRoute

RECENT_SESSIONS = 200
EDITED_FIELDS = ("inputTemplate", "outputMapping")
# No page of the inspector may be framed by another site (a click on a framed form would be the user's).
PAGE_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


def _pretty(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = jsonbounds.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _as_json_scalar(value: Any) -> Any:
    """A boolean printed on a page reads as the API's JSON (`true`), not as Python's `True`."""
    return json.dumps(value) if isinstance(value, bool) else value


templates = Environment(
    loader=PackageLoader("proxy.server.api", "templates"),
    autoescape=select_autoescape(["html"]),
    finalize=_as_json_scalar,
)
templates.globals.update(pretty=_pretty, short=_short)


def browser_keys(request: Request) -> BrowserKeys:
    keys: BrowserKeys = request.app.state.browser_keys
    return keys


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """An inspector page; every form on it carries this server's CSRF token."""
    context.update(
        csrf_field=CSRF_FIELD,
        csrf_token=browser_keys(request).csrf_token,
        login_enabled=runtime(request).settings.api_key is not None,
    )
    html = templates.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


async def read_form(request: Request) -> dict[str, str]:
    """An inspector form's fields (the guard has checked its CSRF token)."""
    return {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}


async def overview(request: Request) -> HTMLResponse:
    """Inspector: connections, versions and recent sessions."""
    rt = runtime(request)
    sessions = await rt.sessions.recent(RECENT_SESSIONS)
    return page(
        request,
        "overview.html",
        connections=rt.connections.all(),
        connection_names={c.id: c.name for c in rt.connections.all()},
        versions=rt.versions.all(),
        sessions=sessions,
        turn_counts=await rt.sessions.turn_counts([s.id for s in sessions]),
        record_mode=rt.settings.record_mode,
        cassettes_dir=rt.settings.cassettes_dir,
    )


async def session_page(request: Request) -> HTMLResponse:
    """Inspector: one session, turn by turn."""
    rt = runtime(request)
    session = await rt.sessions.get(request.path_params["id"])
    version = rt.versions.get(session.version_id)
    turns, calls = await rt.sessions.turns(session.id), await rt.sessions.lifecycle_calls(session.id)
    paths = {}  # phase → key → JSONPath, from the version's connections as they are now
    for kind in ConnectionType:
        conn = rt.versions.connection(version, kind)
        paths[kind.value] = dict(conn.mapping.source) if conn is not None else {}
    # The session's error is the one of the call where it happened: named there, linked from the top.
    error_at = None
    if session.error:
        failed = [(f"turn-{t.index}", f"turn {t.index}") for t in turns if t.error == session.error]
        failed += [(c.phase.lower(), c.phase) for c in calls if (c.exchange or {}).get("error") == session.error]
        error_at = failed[0] if failed else None
    return page(
        request,
        "session.html",
        session=session,
        version_name=version.name,
        cassette=await rt.sessions.cassette_name(session.id),
        turns=turns,
        calls=calls,
        paths=paths,
        error_at=error_at,
    )


def _connection_context(conn: CompiledConnection, **shown: Any) -> dict[str, Any]:
    """What the connection page shows: its fields laid out, the test form, the template and mapping editor."""
    fields = public_fields(conn)
    return {
        "conn": conn,
        "fields": fields,
        "plain_fields": {k: v for k, v in fields.items() if k not in (*EDITED_FIELDS, "headers")},
        "input_text": json.dumps(DEFAULT_TEST_INPUT, ensure_ascii=False),
        "context_text": "",
        "preview_input_text": json.dumps(DEFAULT_TEST_INPUT, ensure_ascii=False),
        "template_text": conn.spec.input_template or "",
        "mapping_text": json.dumps(conn.spec.output_mapping or {}, indent=2, ensure_ascii=False),
        **shown,
    }


async def connection_page(request: Request) -> HTMLResponse:
    """Inspector: one connection, its test form and its template and mapping editor."""
    conn = runtime(request).connections.get(request.path_params["id"])
    return page(request, "connection.html", **_connection_context(conn))


def _edited(form: dict[str, str]) -> dict[str, Any]:
    """The editor's fields as a connection patch; ValueError names what is wrong."""
    try:
        mapping = jsonbounds.loads(form.get("output_mapping") or "{}")
    except ValueError as exc:
        raise ValueError(f"outputMapping: is not valid JSON ({exc})") from None
    if not isinstance(mapping, dict):
        raise ValueError("outputMapping: must be a JSON object of key → JSONPath")
    return {"inputTemplate": form.get("input_template", ""), "outputMapping": mapping}


async def preview_edit(request: Request) -> HTMLResponse:
    """Inspector: render the edited template and map the connection's last reply with the edited mapping.
    Nothing is sent upstream and nothing is saved."""
    rt = runtime(request)
    conn = rt.connections.get(request.path_params["id"])
    form = await read_form(request)
    shown = _connection_context(
        conn,
        template_text=form.get("input_template", ""),
        mapping_text=form.get("output_mapping", ""),
        preview_input_text=form.get("preview_input", "") or json.dumps(DEFAULT_TEST_INPUT, ensure_ascii=False),
    )
    try:
        patch = _edited(form)
        test_input = jsonbounds.loads(shown["preview_input_text"])
        edited = rt.connections.build_patched(conn, patch)
    except ValueError as exc:
        return page(request, "connection.html", 400, edit_problem=str(exc), **shown)
    except ProxyError as exc:
        return page(request, "connection.html", exc.status_code, edit_problem=exc.message, **shown)
    rendered = rt.engine.render(edited, CallContext(input=test_input, warn_undefined=True))
    last = await rt.flows.last_reply(conn.id)
    preview: dict[str, Any] = {
        "request": rendered.request,
        "error": rendered.error,
        "warnings": rendered.warnings,
        "flow": last,
        "rows": [],
    }
    response = (last["data"]["exchange"].get("response") or {}) if last else {}
    body = response.get("body")
    if last is not None and not isinstance(body, dict | list):
        preview["problem"] = f"the last reply (flow {last['id']}) is not JSON: the mapping cannot apply"
    elif last is not None:
        # The same step budget as when the reply came in: its size is what the upstream sent.
        budget = StepBudget.for_size(last.get("size") or 0)
        try:
            mapped = await asyncio.to_thread(edited.mapping.apply, body, budget)
        except JsonPathStopped as exc:
            preview["problem"] = rt.engine.redactor.redact(str(exc))
        else:
            for key, path in edited.mapping.source.items():
                row = {"key": key, "path": path}
                if key in mapped.values:
                    row["value"] = mapped.values[key]
                else:
                    row["why"] = f"matched nothing: {mapped.misses.get(key, '')}"
                preview["rows"].append(row)
    return page(request, "connection.html", preview=preview, **shown)


async def save_edit(request: Request) -> HTMLResponse:
    """Inspector: save the edited input template and output mapping (as PATCH /endpointConnections/{id})."""
    rt = runtime(request)
    conn = rt.connections.get(request.path_params["id"])
    form = await read_form(request)
    shown = {"template_text": form.get("input_template", ""), "mapping_text": form.get("output_mapping", "")}
    try:
        saved = await rt.connections.update(conn.id, _edited(form))
    except ValueError as exc:
        return page(request, "connection.html", 400, edit_problem=str(exc), **_connection_context(conn, **shown))
    except ProxyError as exc:
        context = _connection_context(conn, **shown)
        return page(request, "connection.html", exc.status_code, edit_problem=exc.message, **context)
    return page(request, "connection.html", saved=True, **_connection_context(saved))


async def test_from_form(request: Request) -> HTMLResponse:
    """Inspector: run the test form, show what `proxy check` would print."""
    rt = runtime(request)
    conn = rt.connections.get(request.path_params["id"])
    form = await read_form(request)
    input_text, context_text = form.get("input", ""), form.get("context", "")
    dry_run = bool(form.get("dry_run"))
    shown = _connection_context(conn, input_text=input_text, context_text=context_text, dry_run=dry_run)
    try:
        test_input = jsonbounds.loads(input_text) if input_text.strip() else DEFAULT_TEST_INPUT
        context = jsonbounds.loads(context_text) if context_text.strip() else {}
    except ValueError as exc:
        return page(request, "connection.html", 400, problem=f"Input or context is not valid JSON: {exc}", **shown)
    if not isinstance(context, dict):
        return page(request, "connection.html", 400, problem="Context must be a JSON object.", **shown)
    handle = rt.library.server_handle("connections", conn.name, "test", rt.library.mode_for(conn.name))
    ctx = CallContext(input=test_input, context=context, cassette=handle, label=CallLabel("testConnection"))
    result = rt.engine.render(conn, ctx) if dry_run else await rt.engine.call(conn, ctx)
    explanation = "\n".join(explain(conn, result, sent=not dry_run))
    return page(request, "connection.html", explanation=explanation, **shown)


def text_form(**fields: str) -> dict[str, Any]:
    """The OpenAPI schema of a form of text fields, each with its description."""
    return {"type": "object", "properties": {k: {"type": "string", "description": d} for k, d in fields.items()}}


TEST_FORM = text_form(
    input="JSON; a sample input when empty",
    context="a JSON object",
    dry_run="any value: render only, send nothing",
)
EDIT_FORM = text_form(
    input_template="the input template (Jinja2)",
    output_mapping="a JSON object of key → JSONPath",
    preview_input="JSON input to render the template with (preview only)",
)
FORM = "application/x-www-form-urlencoded"


def form_route(path: str, endpoint: Any, form: dict[str, Any]) -> ApiRoute:
    """A page's form posted to `path`, answered with a page."""
    return ApiRoute(path, endpoint, methods=["POST"], body=form, body_media=FORM, response=HTML, media="text/html")


ROUTES = [
    ApiRoute("/", overview, methods=["GET"], response=HTML, media="text/html"),
    ApiRoute("/inspector/sessions/{id}", session_page, methods=["GET"], response=HTML, media="text/html"),
    ApiRoute("/inspector/connections/{id}", connection_page, methods=["GET"], response=HTML, media="text/html"),
    form_route("/inspector/connections/{id}/test", test_from_form, TEST_FORM),
    form_route("/inspector/connections/{id}/preview", preview_edit, EDIT_FORM),
    form_route("/inspector/connections/{id}/save", save_edit, EDIT_FORM),
]
