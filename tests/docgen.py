"""Writes the reference parts of docs/ from the code, so they cannot drift from it.

- docs/cli.md: every command's `--help`, each between `<!-- generated: proxy X --help -->` and
  `<!-- end generated: proxy X --help -->`; a command with no block yet gets a new section at the end.
- docs/configuration.md: the tables of settings, connection, end-rule and connector fields (from the
  `Settings` dataclass and the pydantic models) and of defaults and limits (from proxy/config/settings.py).

Run `make docs` (that is, `python -m tests.docgen`) after changing a command, an option, a field or a
limit, and commit the result: tests/docs/test_docs.py fails while a committed file differs from what this writes.
The prose around the blocks is written by hand; so are the short descriptions below, keyed by field name
(a field without one is listed with an empty description, and named on stderr).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import io
import json
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import annotated_types
import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from proxy.cli.main import main
from proxy.config import settings as limits
from proxy.config.settings import Settings
from proxy.connections.fault_rules import FaultMatch, FaultRule
from proxy.connections.spec import BodyMatch, ConnectionSpec, EndRule
from proxy.connectors.connector import Connector
from proxy.connectors.input import ConnectorIn, OAuthIn, ServiceAuthIn

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HELP_COLUMNS = "200"  # wider than click's 80-column cap, so the output does not depend on the terminal that runs this
REGENERATE = "make docs"
BLOCK = re.compile(r"<!-- generated: (?P<key>[^>]+?) -->\n(?P<body>.*?)<!-- end generated: (?P=key) -->\n", re.DOTALL)
undescribed: list[str] = []


# -- blocks ----------------------------------------------------------------------------------------


def fill(text: str, blocks: dict[str, tuple[str, str]], source: str) -> str:
    """`text` with every generated block replaced by its new content; blocks it lacks are appended as new
    sections. `blocks` maps a key to (section title, content)."""
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        key = match.group("key")
        if key not in blocks:
            raise SystemExit(f"{source}: the block '{key}' matches nothing the generator knows: remove its section")
        seen.add(key)
        return marked(key, blocks[key][1])

    text = BLOCK.sub(replace, text)
    for key, (title, content) in blocks.items():
        if key not in seen:
            text = text.rstrip("\n") + f"\n\n## {title}\n\n{marked(key, content)}"
    return text


def marked(key: str, content: str) -> str:
    return f"<!-- generated: {key} -->\n{content.rstrip()}\n<!-- end generated: {key} -->\n"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# -- the CLI reference -----------------------------------------------------------------------------


def commands(group: click.Group = main, path: tuple[str, ...] = ("proxy",)) -> Iterator[tuple[str, ...]]:
    yield path
    ctx = click.Context(group, info_name=path[-1])
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        elif command is not None and not command.hidden:
            yield (*path, name)


def help_text(path: tuple[str, ...]) -> str:
    """What `proxy … --help` prints on a terminal wider than click's cap of 80 columns (most terminals): the
    command's own output, through click's entry point, so the group's context settings (`show_default`) count.
    Not click's CliRunner: it forces a width of 80, two columns wider than a terminal gets."""
    printed = io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        with contextlib.redirect_stdout(printed):
            code = main.main([*path[1:], "--help"], prog_name=path[0], standalone_mode=False)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    assert code == 0, printed.getvalue()
    return printed.getvalue()


def cli_blocks() -> dict[str, tuple[str, str]]:
    return {f"{' '.join(path)} --help": (" ".join(path), f"```text\n{help_text(path)}```\n") for path in commands()}


# -- the configuration tables ----------------------------------------------------------------------

SETTINGS = {
    "host": "Address to bind. Loopback by default: anything else exposes the server to the network.",
    "port": "Port to listen on.",
    "data_dir": "Folder for the SQLite database (`proxy.db`: the entities and the recording journal) and the "
    "secret key (`secret.key`), and the cassettes' parse cache (`cassette-cache/`).",
    "cassettes_dir": "Cassette folder (also read as `cassettes`); its layout is in [cassettes.md](cassettes.md).",
    "record_mode": "Record mode for every cassette: `none`, `once`, `new_episodes`, `all` or `off` "
    '([cassettes.md](cassettes.md#record-modes)). Quote `"off"`: YAML reads a bare off as false.',
    "allow_http": "Accept `http://` connection and connector URLs without `acknowledgedInsecureHttp`.",
    "traceparent": "Send a W3C `traceparent` header on every upstream call (one trace id per session).",
    "api_key": "Require `Authorization: Bearer <key>` on every route but `/healthz`; `PROXY_API_KEY` sets it too.",
    "replay_latency": "`none`: replayed answers come at once; `recorded`: each replay sleeps its recorded latency.",
    "replay_speed": "With `replay_latency: recorded`, divide the recorded waits by this factor.",
    "allowed_hosts": "Extra `Host` names the server answers (DNS rebinding protection refuses the others): names "
    "alone, without scheme or port (`[proxy.internal]`). `--allowed-host` given replaces this list.",
    "cors_origins": "Web origins allowed to call the API from a browser (CORS); others are refused. Each is "
    '`http(s)://host[:port]` alone (`["http://localhost:5173"]`): `*`, `null` or a path is refused, naming the '
    "item. `--cors-origin` given replaces this list.",
    "fault_seed": "Seed for the generators of [fault rules](#fault-rules) with a `probability`, so a run repeats "
    "(a rule's own `seed` wins); unset, each server run draws differently. Config file only.",
    "cassette_max_age": "A cassette whose newest recording is older than this (`30d`, `12h`, `90m`) is expired "
    "when opened; `on_expired` says what then ([cassettes.md](cassettes.md#age-and-unused-cassettes)).",
    "on_expired": "`warn` logs a line and replays, `fail` fails every call that would replay from it, naming the "
    "cassette and its age, `rerecord` treats it as mode `all` for the server run.",
    "flow_log_size": "How many upstream calls the flow log keeps (the newest; see [inspector.md](inspector.md)).",
    "max_flow_viewers": "Live `GET /flows/events` streams served at once; a newer one ends the oldest's stream.",
    "flow_body_max_bytes": "Of a relayed stream, the bytes its flow keeps (as relayed, masked); the stream itself is "
    "relayed whole, its flow is marked truncated ([inspector.md](inspector.md)). Config file only.",
    "max_header_bytes": "Largest request line and headers, together; a request over it is answered 431 before any "
    "route (authentication included) runs. Config file only, as are the limits below.",
    "max_headers": "Most headers in one request; more are answered 431 before any route runs.",
    "header_timeout": "Seconds a connection has to send a request's line and headers (from its opening, or a "
    "request's first byte); then it is answered 408 and closed (closed without answer if it sent nothing).",
    "max_connections": "Connections open at once; one more is answered 503 and closed at once.",
    "send_timeout": "Seconds a client may take none of its answer (a stalled download or live stream); then it "
    "is disconnected.",
}
MATCH_SETTINGS = [
    ["`ignore.query`", "list of strings", "`[]`", "Query parameters left out of matching."],
    ["`ignore.body`", "list of JSONPaths", "`[]`", "Body fields left out of matching (JSON bodies)."],
    ["`ignore.headers`", "list of strings", "`[]`", "Header names taken back out of `match_headers`."],
    ["`match_headers`", "list of strings", "`[]`", "Headers that take part in matching (none do otherwise)."],
    [
        "`redact_values`",
        "list of strings",
        "`[]`",
        "Extra literal values scrubbed from cassettes, logs and responses, beside the credentials the server knows.",
    ],
]

CONNECTION = {
    "name": "The connection's name, unique within its product; cassettes are named after it.",
    "product_id": "The product it belongs to (Galtea's product id; any string here).",
    "url": "The endpoint URL; may hold placeholders (`https://api.example.com/chat/{{ session_id }}`), "
    "percent-escaped when rendered. `https://`, or `http://` with `acknowledged_insecure_http` or `--allow-http`.",
    "type": "`CONVERSATION` (one call per turn), `INITIALIZATION` (once, before the first turn) or "
    "`FINALIZATION` (once, when the session ends). Any case.",
    "http_method": "HTTP method. `GET` sends no body.",
    "auth_type": "`BEARER`: `Authorization: Bearer <authToken>`; `API_KEY`: `X-API-Key: <authToken>`; "
    "`BASIC`: `Authorization: Basic base64(username:password)`; `NONE`. A custom `Authorization` or "
    "`X-API-Key` header replaces the default one.",
    "auth_token": "Required with `BEARER` and `API_KEY`. Encrypted at rest, never returned (`hasAuthToken` "
    "says whether one is stored); empty on PATCH keeps the stored one. Write `${VAR}` in the config file.",
    "username": "Required with `BASIC`.",
    "password": "Required with `BASIC`. Encrypted at rest, never returned (`hasPassword`).",
    "headers": "Custom headers. Values may hold `{{ name }}` or `{ name }` placeholders: `auth_token`, "
    "`api_key`, `bearer_token` (BEARER, API_KEY), `username`, `password` (BASIC), `session_id`, `trace_id`; a "
    "credential placeholder the `authType` cannot fill is refused (422). Values that look like "
    "credentials are encrypted and read back as `••••••••`; sending the mask back keeps the stored value.",
    "input_template": 'Jinja2 body template (sandboxed), e.g. `{"message": "{{ input.user_message }}"}`. '
    "Required for `CONVERSATION`, with an `{{ input… }}` placeholder. Variables are listed below.",
    "output_mapping": "Key → JSONPath applied to the JSON reply. `output` is required for `CONVERSATION`, "
    "`session_id` for `INITIALIZATION`; `retrieval_context` and `traces` are special; any other key becomes "
    "session metadata, usable in later templates.",
    "timeout": "Seconds for a whole attempt, body included. Fractions allowed.",
    "rate_limit": "At most this many calls per minute for this connection; further calls wait (live calls only).",
    "retry_enabled": "Retry failed attempts (retryable statuses, timeouts, connection errors).",
    "retry_max_attempts": "Retries after the first call (so at most 1 + this many calls).",
    "retry_initial_delay_ms": "Wait before the first retry.",
    "retry_backoff_strategy": "`FIXED` (the initial delay each time), `LINEAR` (initial × retry number) or "
    "`EXPONENTIAL` (initial × 2^(retry − 1)). A `Retry-After` on 429/503 wins.",
    "retry_max_delay_ms": "Cap on any wait, `Retry-After` included.",
    "retryable_status_codes": "Statuses that retry. Each 100–599.",
    "acknowledged_insecure_http": "Allow an `http://` URL for this connection.",
    "conversation_end_rules": "`CONVERSATION` only: a reply that matches a rule completes the session "
    "(the turn is stored as `SKIPPED`). Fields below.",
    "traceparent": "Send a W3C `traceparent` header on this connection's calls; off, a `traceparent` custom "
    "header is sent as written.",
    "response_mode": "`json`, or `sse` for a server-sent-events reply whose pieces are joined before mapping.",
    "stream_text_path": "JSONPath applied to each event's JSON `data`; the strings found are joined: with `sse`, "
    "the text mapped; in any mode, the text a stream relayed by the forward route shows in its flow.",
    "protocol": "`mcp`: the forward route speaks MCP's streamable HTTP transport, recorded and replayed with the "
    "client's JSON-RPC ids and session ids ([MCP](mcp.md)); such a connection serves the forward route only.",
    "faults": "[Fault rules](#fault-rules): answers, delays and cut bodies injected on purpose, above the "
    "cassette, so never recorded.",
}
FAULT_RULE = {
    "status": "Answer this status instead of calling (the upstream and the cassette are not reached).",
    "retry_after": "With `status`: the answer's `Retry-After` (seconds, or an HTTP date).",
    "delay_ms": "Wait this long before the call (it counts in the attempt's latency and timeout).",
    "cut_after_bytes": "The body (the injected one, else the real or replayed one) breaks off after this many "
    "bytes: a forward client gets a short body and a closed connection, a turn a failed call.",
    "body": "The answer's body (200 unless `status` is given): a string as it is, anything else as JSON.",
    "times": "Act on the first N matching calls only; the next rule may act on the later ones.",
    "probability": "Act on this share of matching calls, drawn from a seeded generator.",
    "seed": "Seed of this rule's generator; else `settings.fault_seed`.",
    "match": "Act only on calls with this `method` and/or `path` (a glob of the upstream URL's path).",
    "method": "HTTP method, any case.",
    "path": "The upstream URL's path; `*` matches any characters (`/v1/*`).",
}
END_RULE = {
    "status_code": "The reply status that ends the conversation.",
    "body_match": "Optional; required when `status_code` is 2xx: the rule matches only when this also holds.",
    "path": "JSONPath into the JSON reply; its first value is compared as text.",
    "equals": "The text it must equal (numbers and booleans are compared as their JSON text).",
}
CONNECTOR = {
    "name": "The id is derived from it (lower-cased, other characters made `-`); a "
    "rename that changes the id is refused.",
    "url": "Registration and searches `POST` here.",
    "description": "Free text.",
    "excludes": "Result fields to leave out of what a search returns (see `POST /v1/connectors/{id}/search`).",
    "active": "An inactive connector refuses searches (400).",
    "continue_on_failure": 'A failing search answers `{"results": [], "warning": …}` instead of an error.',
    "faults": "[Fault rules](#fault-rules) for searches (and the registration query).",
    "oauth": "OAuth client settings, stored and reported, not performed. Exclusive with `service_auth`.",
    "service_auth": "The credential searches carry. Exclusive with `oauth`.",
    "acknowledged_insecure_http": "Allow an `http://` URL for this connector (`acknowledgedInsecureHttp` is "
    "taken too, as on connections).",
    "client_id": "OAuth client id.",
    "client_secret": "OAuth client secret: encrypted at rest, never returned.",
    "authorize_url": "OAuth authorize URL.",
    "token_url": "OAuth token URL.",
    "scope": "OAuth scope.",
    "type": "`bearer` → `Authorization: Bearer <token>`, `basic` → `Authorization: Basic <token>` (the token "
    "as given), `noscheme` → `Authorization: <token>`.",
    "token": "The service credential: encrypted at rest, never returned.",
}
LIMITS = {
    "DEFAULT_HOST": "address `serve` binds",
    "DEFAULT_PORT": "port `serve` listens on",
    "DEFAULT_DATA_DIR": "data folder",
    "DEFAULT_CASSETTES_DIR": "cassette folder",
    "DEFAULT_TIMEOUT_S": "connection `timeout`, seconds",
    "MAX_TIMEOUT_S": "largest `timeout`, seconds",
    "DEFAULT_RETRY_MAX_ATTEMPTS": "`retry_max_attempts`",
    "MAX_RETRY_MAX_ATTEMPTS": "largest `retry_max_attempts`",
    "DEFAULT_RETRY_INITIAL_DELAY_MS": "`retry_initial_delay_ms`",
    "DEFAULT_RETRY_MAX_DELAY_MS": "`retry_max_delay_ms`",
    "MAX_RETRY_DELAY_MS": "largest `retry_initial_delay_ms` and `retry_max_delay_ms`",
    "DEFAULT_RETRYABLE_STATUS_CODES": "`retryable_status_codes`",
    "MAX_CONVERSATION_END_RULES": "most `conversation_end_rules` on one connection",
    "DEFAULT_STREAM_TEXT_PATH": "`stream_text_path`: where an OpenAI-shaped event holds its piece of the text",
    "RATE_LIMIT_WINDOW_S": "the window `rate_limit` counts calls in, seconds",
    "MAX_FAULT_RULES": "most fault rules on one connection or connector, or in one `PUT /_proxy/faults`",
    "MAX_FAULT_DELAY_MS": "largest `delay_ms` of a fault rule",
    "MAX_API_BODY_BYTES": "largest request body the API takes (413 beyond)",
    "MAX_UPSTREAM_BODY_BYTES": "largest upstream reply body; a larger one fails the call and is never recorded",
    "DEFAULT_IMPORT_MAX_FILE_BYTES": "largest cassette file `proxy cassettes import` reads (refused beyond)",
    "ERROR_BODY_PREVIEW_CHARS": "characters of an upstream body quoted in an error message",
    "MAX_REASON_PHRASE_CHARS": "longest upstream reason phrase kept, in errors and cassettes (printable characters "
    "only, secrets masked before the cut)",
    "DEFAULT_TEST_INPUT": "the input testConnection and `proxy check` render when given none",
    "GC_THRESHOLDS": "garbage-collector thresholds `proxy serve` runs with, its start-up state frozen (a server "
    "started in-process, as the pytest plugin does, leaves its host process's collector alone)",
    "DEFAULT_REPLAY_SPEED": "`--replay-speed`: recorded delays are divided by it",
    "USAGE_REFRESH_S": "a cassette's last-used time (for `proxy cassettes prune`) is written at most this often",
    "CASSETTE_MAX_BYTES": "largest cassette file loaded; a larger one is refused unread (the calls through it fail)",
    "CASSETTE_MAX_INTERACTIONS": "most interactions in one cassette; one with more is refused before any is built",
    "JSON_MAX_DEPTH": "deepest JSON nesting taken in a request (400 beyond) or an upstream reply (the call fails)",
    "JSON_MAX_NUMBER_DIGITS": "most digits in one JSON number, in a request or an upstream reply",
    "OFF_LOOP_REPLY_BYTES": "replies larger than this are parsed and mapped in a worker thread",
    "JSONPATH_BASE_STEPS": "steps (values visited or matched) the JSONPaths reading one reply may take, besides "
    "`JSONPATH_STEPS_PER_CHAR` per character of it (the call fails beyond)",
    "JSONPATH_STEPS_PER_CHAR": "steps the JSONPaths reading one reply may take per character of it",
    "JSONPATH_LOOP_STEPS": "steps a reading of a small reply takes on the event loop before it goes on in a worker "
    "thread",
    "TEMPLATE_MAX_SOURCE_CHARS": "longest template source (422 beyond)",
    "MAX_UNDEFINED_WARNINGS": "most undefined-variable warnings one testConnection, `proxy check` or preview gives",
    "MAX_LISTED_KEYS": "most keys an undefined-variable warning lists as the ones that exist",
    "TEMPLATE_RENDER_TIME_S": "render budget of one template, seconds (the call fails beyond)",
    "TEMPLATE_MAX_CHARS": "largest rendered text, or value built while rendering",
    "TEMPLATE_MAX_BUILT_CHARS": "all the values one render builds, added up as they are built (repeated and joined "
    "strings, a filter's copy of its text); the call fails beyond",
    "TEMPLATE_MAX_ITEMS": "most rows a `batch` or `slice` filter may make",
    "TEMPLATE_MAX_CALL_DEPTH": "deepest nesting of macro and function calls in a template",
    "MIN_SECRET_LEN": "shortest secret taken (422 below): shorter ones would match ordinary text",
    "MASK_NESTED_JSON_DEPTH": "deepest JSON document inside a JSON string (inside another…) in which an echoed secret "
    "is masked",
    "DEFAULT_CONCURRENCY": "`proxy run --concurrency`: sessions run at once",
    "SERVER_START_TIMEOUT_S": "seconds the pytest plugin's server may take to start",
    "SERVER_STOP_TIMEOUT_S": "seconds the pytest plugin waits for its server to stop and write the recordings",
    "DEFAULT_MAX_CONNECTIONS_PER_ORIGIN": "upstream connections open at once to one origin; further calls wait",
    "DEFAULT_KEEPALIVE_TIMEOUT_S": "seconds an idle upstream connection is kept for reuse",
    "MAX_QUEUED": "database writes queued for the next commit before their callers are held back",
    "ROW_BATCH_DELAY_S": "the longest a queued database write waits for the next commit, seconds",
    "DEFAULT_FLUSH_INTERVAL_S": "a server writes what it recorded into the cassette files this often, seconds",
    "CASSETTE_LOCK_TIMEOUT_S": "seconds a writer waits for another process writing the same cassette",
    "DEFAULT_SESSION_CACHE_SIZE": "recent sessions held in memory (the rest are read from the database)",
    "MAX_CLIENT_SECRETS": "distinct client credentials kept masked per forward upstream (the newest)",
    "COHERE_MAX_PAGE": "most connectors one `GET /v1/connectors` page lists (`limit`)",
    "CORS_MAX_AGE_S": "how long a browser may cache a `--cors-origin` preflight answer, seconds",
    "DRIFT_EVENT_COUNT_RATIO": "`cassettes drift` on a stream: share of the recorded event count it may be off by",
    "DRIFT_EVENT_COUNT_SLACK": "`cassettes drift` on a stream: events the live count may be off by, whatever the share",
    "DEFAULT_MAX_HEADER_BYTES": "`max_header_bytes`: largest request line and headers (431 beyond)",
    "DEFAULT_MAX_HEADERS": "`max_headers`: most headers in one request (431 beyond)",
    "DEFAULT_HEADER_TIMEOUT_S": "`header_timeout`: seconds to send a request's headers (408 and closed beyond)",
    "MIN_BODY_BYTES_PER_S": "a request body then keeps coming at least this fast, bytes a second (408 and closed)",
    "DEFAULT_MAX_CONNECTIONS": "`max_connections`: connections open at once (503 and closed beyond)",
    "DEFAULT_SEND_TIMEOUT_S": "`send_timeout`: seconds a client may take none of its answer before it is disconnected",
    "DEFAULT_MAX_FLOW_VIEWERS": "`max_flow_viewers`: live `GET /flows/events` streams at once (a newer one ends the "
    "oldest)",
    "DEFAULT_FLOW_LOG_SIZE": "`flow_log_size`: upstream calls the flow log keeps",
    "FLOWS_PAGE_SIZE": "most flows `GET /flows` lists and `GET /flows.har` exports at once",
    "FLOW_EVENTS_HEARTBEAT_S": "an idle `GET /flows/events` stream sends a heartbeat this often, seconds",
    "FLOW_EVENTS_MAX_S": "a `GET /flows/events` stream ends after this long (the browser reconnects), seconds",
    "FLOW_EVENTS_QUEUE": "flows a slow `GET /flows/events` client may fall behind by before its stream ends",
    "FLOW_BATCH_ROWS": "flows queued that the flow log writes at once, in one commit, without waiting",
    "FLOW_BATCH_DELAY_S": "the longest a flow waits in the flow log's queue before it is written, seconds",
    "DEFAULT_FLOW_BODY_MAX_BYTES": "`flow_body_max_bytes`: of a relayed stream, the body bytes its flow keeps",
    "MAX_MCP_SESSION_ID_CHARS": "an `Mcp-Session-Id` header's length at most (longer: 400), visible ASCII only",
    "MAX_MCP_REPLAY_SESSIONS": "MCP sessions a replay serves at once (each with its play-back positions); the "
    "oldest is forgotten beyond this",
    "PASSPHRASE_SCRYPT_N": "scrypt's cost (N) for a `PROXY_SECRET_KEY` passphrase; with R and P, part of the key",
    "PASSPHRASE_SCRYPT_R": "scrypt's block size (r) for a `PROXY_SECRET_KEY` passphrase",
    "PASSPHRASE_SCRYPT_P": "scrypt's parallelism (p) for a `PROXY_SECRET_KEY` passphrase",
    "PASSPHRASE_SALT_BYTES": "random salt a data dir keeps in `secret.salt` (0600) for a `PROXY_SECRET_KEY` passphrase",
    "MASK": "what a masked secret reads as, in answers, logs and cassettes",
    "LATEST_SDK_VERSION": "`latestSdkVersionPublished` of `GET /minimum-sdk-version`",
    "MINIMUM_SDK_VERSION": "`minimumSdkVersionSupported` of `GET /minimum-sdk-version`",
}
MODEL_NAMES: dict[type, tuple[str, str]] = {  # one, several
    EndRule: ("[end rule](#end-rules)", "[end rules](#end-rules)"),
    BodyMatch: ("[body match](#end-rules)", "[body matches](#end-rules)"),
    OAuthIn: ("[oauth object](#connectors)", "[oauth objects](#connectors)"),
    ServiceAuthIn: ("[service_auth object](#connectors)", "[service_auth objects](#connectors)"),
    FaultRule: ("[fault rule](#fault-rules)", "[fault rules](#fault-rules)"),
    FaultMatch: ("[fault match](#fault-rules)", "[fault matches](#fault-rules)"),
}
WORDS: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Any: "any JSON value",
    datetime.timedelta: "age (`30d`, `12h`, `90m`)",
}
REQUIRED_ON_CREATE = object()


def describe(descriptions: dict[str, str], name: str, where: str) -> str:
    if name not in descriptions:
        undescribed.append(f"{where}.{name}")
    return descriptions.get(name, "")


def type_text(annotation: Any, plural: bool = False) -> str:
    """A field's type in words; `None` in a union is left out (the Default column shows it)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a, plural) for a in typing.get_args(annotation) if a is not type(None))
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{v}`" for v in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list of {type_text(item, plural=True)}"
    if origin is tuple:  # `tuple[str, ...]`: the file writes it as a YAML list
        return f"list of {type_text(typing.get_args(annotation)[0], plural=True)}"
    if origin is dict:
        return f"object of {type_text(typing.get_args(annotation)[1], plural=True)}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
    if annotation in MODEL_NAMES:
        return MODEL_NAMES[annotation][plural]
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    word = WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return word + "s" if plural else word


def value_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def limit_text(field: FieldInfo) -> str:
    low = high = None
    parts = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"≥ {item.ge:g}"
        elif isinstance(item, annotated_types.Gt):
            low = f"> {item.gt:g}"
        elif isinstance(item, annotated_types.Le):
            high = f"≤ {item.le:g}"
        elif isinstance(item, annotated_types.Lt):
            high = f"< {item.lt:g}"
        elif isinstance(item, annotated_types.MinLen) and item.min_length > 0:
            parts.append(f"length ≥ {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            unit = "items" if "list" in str(field.annotation) else "characters"
            parts.append(f"at most {item.max_length} {unit}")
    return ", ".join([p for p in (low, high) if p] + parts)


def model_rows(
    model: type[BaseModel],
    descriptions: dict[str, str],
    defaults: Callable[[str], Any] | None = None,
    prefix: str = "",
) -> list[list[str]]:
    rows = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        label = f"`{prefix}{name}`" if alias == name else f"`{prefix}{name}` / `{prefix}{alias}`"
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            if value is None and defaults is not None:
                value = defaults(name)
            default = "required on create" if value is REQUIRED_ON_CREATE else value_text(value)
        description = describe(descriptions, name, model.__name__)
        rows.append([label, type_text(field.annotation), default, limit_text(field), description])
    return rows


FIELD_HEADER = ["Field", "Type", "Default", "Limits", "What it does"]


def connector_default(name: str) -> Any:
    """A connector's stored default, where the input model leaves a field unset (PATCH semantics)."""
    for field in dataclasses.fields(Connector):
        if field.name == name:
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            return REQUIRED_ON_CREATE if field.default is dataclasses.MISSING else field.default
    return None


def settings_rows() -> list[list[str]]:
    flags = {param.name: opt for command in main.commands.values() for param in command.params for opt in param.opts}
    hints = typing.get_type_hints(Settings)
    rows = []
    for field in dataclasses.fields(Settings):
        flag_name = "cassettes" if field.name == "cassettes_dir" else field.name
        flag = flags.get(flag_name)
        rows.append(
            [
                f"`{field.name}`",
                type_text(hints[field.name]),
                value_text(field.default),
                f"`{flag}`" if flag else "",
                describe(SETTINGS, field.name, "Settings"),
            ]
        )
    return rows


def limit_rows() -> list[list[str]]:
    rows = []
    for name, value in vars(limits).items():
        if not name.isupper() or name.startswith("_"):
            continue
        shown = value_text(value)
        if name.endswith("_BYTES") and isinstance(value, int) and value % (1024 * 1024) == 0:
            shown += f" ({value // (1024 * 1024)} MiB)"
        rows.append([f"`{name}`", shown, describe(LIMITS, name, "proxy/config/settings.py")])
    return rows


def configuration_blocks() -> dict[str, tuple[str, str]]:
    connector = model_rows(ConnectorIn, CONNECTOR, connector_default)
    nested = model_rows(OAuthIn, CONNECTOR, prefix="oauth.")
    nested += model_rows(ServiceAuthIn, CONNECTOR, prefix="service_auth.")
    return {
        "settings": (
            "Settings",
            table(["Key", "Type", "Default", "Flag", "What it does"], settings_rows())
            + "\nMatching (config file only):\n\n"
            + table(["Key", "Type", "Default", "What it does"], MATCH_SETTINGS),
        ),
        "connection fields": ("Connections", table(FIELD_HEADER, model_rows(ConnectionSpec, CONNECTION))),
        "end rule fields": (
            "End rules",
            table(FIELD_HEADER, model_rows(EndRule, END_RULE) + model_rows(BodyMatch, END_RULE, prefix="body_match.")),
        ),
        "fault rule fields": (
            "Fault rules",
            table(
                FIELD_HEADER,
                model_rows(FaultRule, FAULT_RULE) + model_rows(FaultMatch, FAULT_RULE, prefix="match."),
            ),
        ),
        "connector fields": (
            "Connectors",
            table(FIELD_HEADER, connector + nested),
        ),
        "limits": ("Defaults and limits", table(["Constant", "Value", "What it is"], limit_rows())),
    }


# -- writing ---------------------------------------------------------------------------------------


def rendered() -> dict[Path, str]:
    """Each generated file as this code would write it."""
    undescribed.clear()
    return {
        DOCS / "cli.md": fill((DOCS / "cli.md").read_text(encoding="utf-8"), cli_blocks(), "docs/cli.md"),
        DOCS / "configuration.md": fill(
            (DOCS / "configuration.md").read_text(encoding="utf-8"), configuration_blocks(), "docs/configuration.md"
        ),
    }


def main_() -> None:
    for path, text in rendered().items():
        if path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
        else:
            print(f"{path.relative_to(ROOT)} is up to date")
    if undescribed:
        print(f"no description in tests/docgen.py for: {', '.join(undescribed)}", file=sys.stderr)


if __name__ == "__main__":
    main_()
