"""A flow as a shell `curl` command and flows as HAR 1.2, both from the masked exchange the log keeps.

Neither can hold a secret: the log never had one. Where a masked credential was sent, the curl
command names a shell variable instead (`${CHAT_AUTH_TOKEN:?…}`, from the connection name), for the user
to set before running it: unset, the shell stops the command with a message naming it rather than sending
an empty credential. The ids a call carries for its run alone (`traceparent`, `X-Galtea-Inference-Id`) are
left out unless asked for: sent again, they would file the copy under the original run.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from proxy import __version__
from proxy.config.settings import MASK
from proxy.connections.headers import INFERENCE_ID_HEADER, TRACEPARENT_HEADER
from proxy.flows.timing import flow_latency, recorded_latency_ms

# Per-hop headers curl sets itself; Accept-Encoding would make curl print a compressed body.
CURL_SKIPPED = frozenset({"host", "content-length", "connection", "accept-encoding", "transfer-encoding"})
# Ids of the original call's run (and its trace), left out of a curl command unless asked for.
PER_RUN_HEADERS = frozenset({TRACEPARENT_HEADER.lower(), "tracestate", INFERENCE_ID_HEADER.lower()})
VARIABLE = re.compile(r"\$\{([A-Z][A-Z0-9_]*):\?[^}]*\}")
HAR_SCHEMA = {
    "type": "object",
    "required": ["log"],
    "description": "HAR 1.2 (`log.entries`: one entry per flow, newest first)",
}


def variable_prefix(connection: str | None) -> str:
    """`chat-bot` → `CHAT_BOT`: the start of the shell variables a curl command for it uses."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", connection or "").strip("_").upper()
    return name if name and not name[0].isdigit() else f"C_{name}"


def required(name: str) -> str:
    """`$name` that stops the shell's command, naming the variable, when it is unset or empty."""
    return f"${{{name}:?set {name}}}"


def _double_quoted(text: str) -> str:
    """`text` inside double quotes, where `${NAME:?…}` stays a variable and nothing else expands."""
    parts = VARIABLE.split(text)
    # split() puts each variable's name at the odd indexes
    escaped = "".join(required(p) if i % 2 else re.sub(r'(["\\$`])', r"\\\1", p) for i, p in enumerate(parts))
    return f'"{escaped}"'


def _header_arg(name: str, value: str, prefix: str, auth_type: str) -> str:
    lower = name.lower()
    if MASK not in value:
        return shlex.quote(f"{name}: {value}")
    if lower == "authorization" and auth_type == "BEARER":
        value = f"Bearer {required(prefix + '_AUTH_TOKEN')}"
    elif lower == "x-api-key" and auth_type == "API_KEY":
        value = required(prefix + "_AUTH_TOKEN")
    elif lower == "authorization" and auth_type == "BASIC":
        value = f"Basic {required(prefix + '_BASIC')}"
    else:
        value = value.replace(MASK, required(prefix + "_" + re.sub(r"[^A-Za-z0-9]+", "_", name).upper()))
    return _double_quoted(f"{name}: {value}")


def curl_variables(command: str) -> list[str]:
    """The shell variables a curl command needs the user to set, in order (not those it sets itself)."""
    assigned = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", command, re.M))
    return [name for name in dict.fromkeys(VARIABLE.findall(command)) if name not in assigned]


def per_run_headers(flow: dict[str, Any]) -> list[str]:
    """The names of the per-run headers the flow's request carried."""
    request = flow["data"]["exchange"].get("request") or {}
    return [name for name in request.get("headers") or {} if name.lower() in PER_RUN_HEADERS]


def curl_command(flow: dict[str, Any], per_run: bool = False) -> str:
    """The request as sent, as a `curl` command line; credentials are `${VARIABLES:?…}`, and the per-run headers
    are left out unless `per_run`."""
    request = flow["data"]["exchange"].get("request")
    if not request:
        return ""
    prefix = variable_prefix(flow.get("connection"))
    auth_type = str(flow["data"].get("authType") or "")
    skipped = CURL_SKIPPED if per_run else CURL_SKIPPED | PER_RUN_HEADERS
    lines = [f"curl -sS -X {shlex.quote(request['method'])} {shlex.quote(request['url'])}"]
    for name, value in (request.get("headers") or {}).items():
        if name.lower() not in skipped:
            lines.append(f"-H {_header_arg(name, str(value), prefix, auth_type)}")
    if request.get("body") is not None:
        lines.append(f"--data-raw {shlex.quote(request['body'])}")
    text = " \\\n  ".join(lines)
    if auth_type == "BASIC" and required(prefix + "_BASIC") in text:
        # Checked here, not inside $(…): a subshell's failed expansion would leave the command to run with "".
        # base64 wraps its output at 76 characters: a long credential's would break the header.
        user, password = required(prefix + "_USERNAME"), required(prefix + "_PASSWORD")
        encoded = f'{prefix}_BASIC=$(printf %s "{user}:{password}" | base64 | tr -d "\\n")'
        text = f': "{user}" "{password}"\n{encoded}\n{text}'
    return text


def _pairs(headers: dict[str, Any] | None) -> list[dict[str, str]]:
    return [{"name": str(k), "value": str(v)} for k, v in (headers or {}).items()]


def _mime(headers: dict[str, Any] | None, default: str) -> str:
    for name, value in (headers or {}).items():
        if name.lower() == "content-type":
            return str(value)
    return default


def har_entry(flow: dict[str, Any]) -> dict[str, Any]:
    exchange = flow["data"]["exchange"]
    request = exchange.get("request") or {"method": flow.get("method") or "GET", "url": flow.get("url") or ""}
    response = exchange.get("response")
    url = str(request.get("url") or "")
    har_request: dict[str, Any] = {
        "method": request.get("method") or "GET",
        "url": url,
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": _pairs(request.get("headers")),
        "queryString": [{"name": k, "value": v} for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)],
        "headersSize": -1,
        "bodySize": len((request.get("body") or "").encode()),
    }
    if request.get("body") is not None:
        har_request["postData"] = {
            "mimeType": _mime(request.get("headers"), "application/json"),
            "text": request["body"],
        }
    stream = exchange.get("stream") or {}
    if response is not None:
        body = response.get("body")
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        content: dict[str, Any] = {
            "size": flow.get("size") or len(text.encode()),
            "mimeType": _mime(response.get("headers"), "application/json"),
            "text": text,  # a relayed stream's: its body as relayed (server-sent events as text)
        }
        if stream.get("truncated"):
            content["comment"] = f"truncated: the flow log keeps the first {len(text.encode())} bytes"
        har_response: dict[str, Any] = {
            "status": response.get("status") or 0,
            "statusText": "",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": _pairs(response.get("headers")),
            "content": content,
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": flow.get("size") or len(text.encode()),
        }
    else:
        har_response = {
            "status": 0,
            "statusText": flow.get("error") or "",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [],
            "content": {"size": 0, "mimeType": "x-unknown", "text": ""},  # optional in HAR 1.2, expected by readers
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
            "_error": flow.get("error"),
        }
    latency = float(flow.get("latency_ms") or 0.0)
    ttfb = flow.get("ttfb_ms")
    wait = float(ttfb) if ttfb is not None else latency
    comment = f"flow {flow['id']}: {flow.get('kind')} of {flow.get('connection')}, cassette {flow.get('outcome')}"
    said = flow_latency(flow)
    entry: dict[str, Any] = {
        "startedDateTime": flow["at"],
        "time": latency,
        "request": har_request,
        "response": har_response,
        "cache": {},
        "timings": {"send": 0, "wait": round(wait, 3), "receive": round(max(latency - wait, 0.0), 3)},
        "comment": f"{comment}; time: {said}" if said else comment,
        "_flowId": flow["id"],
        "_cassette": flow.get("outcome"),
    }
    recorded = recorded_latency_ms(flow)
    if recorded is not None:  # `time` may be the replay's own (a relayed stream's): what the recording took
        entry["_recordedTimeMs"] = recorded
    return entry


def har(flows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "proxy", "version": __version__},
            # Optional in HAR 1.2 but read by the common HAR readers: no browser made these calls, the proxy did.
            "browser": {"name": "proxy", "version": __version__},
            "pages": [],
            "entries": [har_entry(flow) for flow in flows],
        }
    }
