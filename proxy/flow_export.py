"""A flow as a shell `curl` command and flows as HAR 1.2, both from the masked exchange the log keeps.

Neither can hold a secret: the log never had one. Where a masked credential was sent, the curl
command names a shell variable instead (`$CHAT_AUTH_TOKEN`, from the connection name), for the user
to set before running it.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from proxy import __version__
from proxy.settings import MASK

# Per-hop headers curl sets itself; Accept-Encoding would make curl print a compressed body.
CURL_SKIPPED = frozenset({"host", "content-length", "connection", "accept-encoding", "transfer-encoding"})
HAR_SCHEMA = {
    "type": "object",
    "required": ["log"],
    "description": "HAR 1.2 (`log.entries`: one entry per flow, newest first)",
}


def variable_prefix(connection: str | None) -> str:
    """`chat-bot` → `CHAT_BOT`: the start of the shell variables a curl command for it uses."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", connection or "").strip("_").upper()
    return name if name and not name[0].isdigit() else f"C_{name}"


def _double_quoted(text: str) -> str:
    """`text` inside double quotes, where `$NAME` stays a variable and nothing else expands."""
    parts = re.split(r"(\$[A-Z][A-Z0-9_]*)", text)
    escaped = "".join(p if p.startswith("$") else re.sub(r'(["\\$`])', r"\\\1", p) for p in parts)
    return f'"{escaped}"'


def _header_arg(name: str, value: str, prefix: str, auth_type: str) -> str:
    lower = name.lower()
    if MASK not in value:
        return shlex.quote(f"{name}: {value}")
    if lower == "authorization" and auth_type == "BEARER":
        value = f"Bearer ${prefix}_AUTH_TOKEN"
    elif lower == "x-api-key" and auth_type == "API_KEY":
        value = f"${prefix}_AUTH_TOKEN"
    elif lower == "authorization" and auth_type == "BASIC":
        value = f"Basic ${prefix}_BASIC"
    else:
        value = value.replace(MASK, "$" + prefix + "_" + re.sub(r"[^A-Za-z0-9]+", "_", name).upper())
    return _double_quoted(f"{name}: {value}")


def curl_variables(flow: dict[str, Any]) -> list[str]:
    """The shell variables the flow's curl command needs, in order."""
    return list(dict.fromkeys(re.findall(r"\$([A-Z][A-Z0-9_]*)", curl_command(flow))))


def curl_command(flow: dict[str, Any]) -> str:
    """The request as sent, as a `curl` command line; credentials are `$VARIABLES`."""
    request = flow["data"]["exchange"].get("request")
    if not request:
        return ""
    prefix = variable_prefix(flow.get("connection"))
    auth_type = str(flow["data"].get("authType") or "")
    lines = [f"curl -sS -X {shlex.quote(request['method'])} {shlex.quote(request['url'])}"]
    for name, value in (request.get("headers") or {}).items():
        if name.lower() not in CURL_SKIPPED:
            lines.append(f"-H {_header_arg(name, str(value), prefix, auth_type)}")
    if request.get("body") is not None:
        lines.append(f"--data-raw {shlex.quote(request['body'])}")
    text = " \\\n  ".join(lines)
    if auth_type == "BASIC" and "$" + prefix + "_BASIC" in text:
        text = f'{prefix}_BASIC=$(printf %s "${prefix}_USERNAME:${prefix}_PASSWORD" | base64)\n{text}'
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
    if response is not None:
        body = response.get("body")
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        har_response: dict[str, Any] = {
            "status": response.get("status") or 0,
            "statusText": "",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": _pairs(response.get("headers")),
            "content": {
                "size": flow.get("size") or len(text.encode()),
                "mimeType": _mime(response.get("headers"), "application/json"),
                "text": text,
            },
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
            "content": {"size": 0, "mimeType": "x-unknown"},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
            "_error": flow.get("error"),
        }
    latency = float(flow.get("latency_ms") or 0.0)
    ttfb = flow.get("ttfb_ms")
    wait = float(ttfb) if ttfb is not None else latency
    return {
        "startedDateTime": flow["at"],
        "time": latency,
        "request": har_request,
        "response": har_response,
        "cache": {},
        "timings": {"send": 0, "wait": round(wait, 3), "receive": round(max(latency - wait, 0.0), 3)},
        "comment": f"flow {flow['id']}: {flow.get('kind')} of {flow.get('connection')}, cassette {flow.get('outcome')}",
        "_flowId": flow["id"],
        "_cassette": flow.get("outcome"),
    }


def har(flows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "proxy", "version": __version__},
            "pages": [],
            "entries": [har_entry(flow) for flow in flows],
        }
    }
