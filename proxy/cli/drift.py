"""Drift: re-send recorded requests live and compare each answer with its recording, in status and JSON
shape (a key added or missing, a value's type changed), JSONPath by JSONPath (see json_shapes); a stream of
server-sent events is read to its end, within the owner's timeout, and compared event by event (see
stream_shapes). Values that differ but keep their type are not drift: a live model never answers the same words
twice.

A recorded request is sent again as it was recorded, with the credentials its owner holds now in place of the
masked ones. A cassette is a file anyone can commit, so nothing in it chooses a credential: the owner of a
`connections/<name>` or `connectors/<name>` cassette is the connection or connector the server names that file
after, or the forward-only upstream of that name given to the command (`--upstream NAME=URL`, as the pytest
plugin's); of a `sessions/` cassette, the connection(s) whose URL has the recorded request's origin. A request is
re-sent only to its owner's origin (scheme, host, port, compared as the credential-origin rule compares them);
any other is reported not checked and never sent. A credential the owner's URL holds in its query string
(`?key=…`) is put back where the recording masked it; any other secret masked inside a recorded URL or body
cannot be. A forward-only upstream holds no credential (the client sent its own, masked in the recording): the
request goes without the headers the recording masked, and the report says so.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import httpx

from proxy.cassettes.cassette import Interaction, identity, load_interactions
from proxy.cassettes.files import update_cassette
from proxy.cassettes.inventory import name_of
from proxy.cassettes.json_shapes import Difference, body_differences
from proxy.cassettes.names import file_name
from proxy.cassettes.record_replay import redacted_interaction
from proxy.cassettes.stream_shapes import stream_differences
from proxy.cli.mcp_drift import check_mcp_cassette, is_mcp_cassette
from proxy.config.settings import MASK, MAX_UPSTREAM_BODY_BYTES
from proxy.connections.headers import build_headers, new_w3c_trace_id
from proxy.connections.targets import ForwardTarget
from proxy.engine.request import build_request, parsed_url
from proxy.engine.results import CallContext
from proxy.engine.streaming import read_timed
from proxy.engine.transports import RATE_LIMIT_EXTENSION, BodyTooLarge
from proxy.engine.transports.streams import StreamTiming, is_event_stream, is_streamed
from proxy.security.origins import Origin, describe, fixed_origin, url_origin
from proxy.security.url_secrets import unmasked
from proxy.server.runtime import Runtime

# Set by the client library for each request, never worth re-sending as recorded.
RESENT_WITHOUT = frozenset({"host", "content-length", "transfer-encoding", "connection", "traceparent"})
# What an upstream answers a request without its credential: not drift, so never re-recorded.
REFUSED = frozenset({401, 403})
PER_RUN_TOKEN = re.compile("<({})>".format("|".join(CallContext().per_run_values())))


@dataclass
class Checked:
    """One recorded interaction, sent again."""

    cassette: str
    index: int
    method: str
    uri: str
    differences: list[Difference] = field(default_factory=list)
    error: str | None = None
    live: Interaction | None = None  # the live answer, recorded as the cassette would hold it
    updated: bool = False
    note: str | None = None  # how it was sent, when not as recorded

    @property
    def outcome(self) -> str:
        return "error" if self.error else "drifted" if self.differences else "unchanged"

    def to_json(self) -> dict[str, Any]:
        return {
            "cassette": self.cassette,
            "index": self.index,
            "method": self.method,
            "uri": self.uri,
            "outcome": self.outcome,
            "differences": [d.to_json() for d in self.differences],
            "error": self.error,
            "note": self.note,
            "updated": self.updated,
        }


# -- shapes ----------------------------------------------------------------------------------------


def _header(headers: dict[str, Any], name: str) -> str:
    """A header of a recorded message ({name: [values]}, as written), "" when it has none."""
    for key, values in headers.items():
        if key.lower() == name:
            return str(values[0] if isinstance(values, list) and values else values)
    return ""


def answer_differences(recorded: Interaction, status: int, content_type: str, body: bytes) -> list[Difference]:
    found = []
    recorded_status = int(recorded.response["status"]["code"])
    if recorded_status != status:
        found.append(Difference("status", str(recorded_status), str(status)))
    recorded_body = recorded.response["body"]["string"] or b""
    if isinstance(recorded_body, str):
        recorded_body = recorded_body.encode()
    was_stream = is_event_stream({"content-type": _header(recorded.response["headers"], "content-type")})
    is_stream = is_event_stream({"content-type": content_type})
    if was_stream and is_stream:
        return found + stream_differences(recorded_body, body)
    if was_stream != is_stream:
        shown = ("an event stream", "not an event stream")
        return [*found, Difference("$", shown[not was_stream], shown[not is_stream])]
    return found + body_differences(recorded_body, body)


# -- re-sending ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """A stored connection or connector whose credentials a recorded request may be re-sent with."""

    kind: str  # "connection", "connector" or "upstream"
    name: str
    url: str  # as stored: a connection's is a template
    origin: Origin | None  # None: its template decides it, so no recording is known to be on it
    target: ForwardTarget

    @property
    def calls_go(self) -> str:
        return f"{self.kind} {self.name!r} sends its calls to {describe(self.url)}"


def connection_owners(runtime: Runtime, cassette_stem: str | None = None) -> list[Owner]:
    """The stored connections, or those whose `connections/` cassette file is `cassette_stem`."""
    return [
        Owner("connection", conn.name, conn.shown_url, conn.origin, conn.target)
        for conn in runtime.connections.all()
        if cassette_stem is None or file_name(conn.name) == cassette_stem
    ]


def connector_owners(runtime: Runtime, cassette_stem: str) -> list[Owner]:
    connectors = runtime.connectors
    return [
        Owner("connector", c.name, c.shown_url, fixed_origin(c.url), connectors.calls.target_of(c))
        for c in connectors.table.all()
        if file_name(c.name) == cassette_stem
    ]


def upstream_owners(runtime: Runtime, cassette_stem: str) -> list[Owner]:
    """The forward-only upstreams given to the command whose `connections/` cassette file is `cassette_stem`."""
    return [
        Owner("upstream", up.name, up.url, up.origin, up.target)
        for up in runtime.upstreams.values()
        if file_name(up.name) == cassette_stem
    ]


def owner_for(runtime: Runtime, cassette: str, uri: str) -> Owner | str:
    """Whose credentials the request to `uri` of `cassette` (its name in the folder) is re-sent with, or why it is
    not re-sent. Only where the file is chooses, never what it holds (such as its session key)."""
    parts = PurePath(cassette).parts  # [<a test's folder>/…]<kind>/<stem>
    folder, stem = parts[-2:] if len(parts) >= 2 else ("", "")
    if folder == "connections":
        candidates = connection_owners(runtime, stem) + upstream_owners(runtime, stem)
    elif folder == "connectors":
        candidates = connector_owners(runtime, stem)
    elif folder == "sessions":
        candidates = connection_owners(runtime)
    else:
        return "not checked: only cassettes in a connections/, connectors/ or sessions/ folder are re-sent"
    if not candidates:
        nor = ", nor an --upstream NAME=URL" if folder == "connections" else ""
        return f"not checked: no stored {folder.removesuffix('s')} owns this cassette (none is named after it{nor})"
    try:
        origin = url_origin(parsed_url(uri))  # parsed as the request will be: its origin is where it goes
    except (httpx.InvalidURL, ValueError):
        origin = None
    there = [owner for owner in candidates if owner.origin is not None and owner.origin == origin]
    if not there:
        shown = origin.base_url() if origin else repr(uri)
        owners = "no stored connection sends its calls there" if folder == "sessions" else None
        owners = owners or "; ".join(owner.calls_go for owner in candidates)
        return f"not checked: the recording points at another origin ({shown}; {owners})"
    first = there[0].target
    if any((o.target.credentials, dict(o.target.headers)) != (first.credentials, dict(first.headers)) for o in there):
        assert origin is not None
        names = " and ".join([", ".join(repr(o.name) for o in there[:-1]), repr(there[-1].name)])
        kinds = " and ".join(sorted({f"{owner.kind}s" for owner in there}))
        return (
            f"not checked: {kinds} {names} send their calls to {origin.base_url()} with different "
            "credentials, and nothing but the cassette says whose recording it is"
        )
    # The same credentials whichever: the one whose URL the request is under gives its timeout and rate limit.
    return max(there, key=lambda owner: len(_static(owner.url)) if uri.startswith(_static(owner.url)) else -1)


def _static(url: str) -> str:
    """The part of a URL template before any placeholder."""
    return url.split("{", 1)[0]


def fresh_ids(text: str) -> str:
    """A new per-run id wherever the recording holds a per-run token (`<galtea_session_id>`, ...)."""
    return PER_RUN_TOKEN.sub(lambda _: uuid.uuid4().hex, text)


def recorded_headers(interaction: Interaction) -> dict[str, str]:
    """The recorded request's headers, each with its (first) value."""
    return {
        name: str(values[0] if isinstance(values, list) and values else values)
        for name, values in interaction.request["headers"].items()
    }


def masked_header_names(interaction: Interaction) -> list[str]:
    """The recorded request's headers whose value the recording masked: never re-sent as they are."""
    return [name for name, value in recorded_headers(interaction).items() if MASK in value]


def resend_request(target: ForwardTarget, interaction: Interaction, uri: str) -> httpx.Request:
    recorded = interaction.request
    headers = {
        name: value
        for name, value in recorded_headers(interaction).items()
        if name.lower() not in RESENT_WITHOUT and MASK not in value
    }
    # A forward-only upstream's request goes as recorded: it adds no credential and no per-call header.
    added = (
        build_headers(
            target.credentials,
            target.headers,
            session_id=None,
            inference_id=uuid.uuid4().hex,
            w3c_trace_id=new_w3c_trace_id(),
            send_traceparent=False,
        )
        if target.adds
        else {}
    )
    replaced = {name.lower() for name in added}
    headers = {k: v for k, v in headers.items() if k.lower() not in replaced} | added
    body = recorded.get("body") or b""
    if isinstance(body, str):
        body = body.encode()
    body = fresh_ids(body.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
    uri = unmasked(uri, target.query_credentials)  # the owner's own `?key=…`, masked in the recording
    limit = (target.id, target.rate_limit) if target.rate_limit else None
    return build_request(
        str(recorded["method"]), uri, headers, body or None, target.timeout_s, {RATE_LIMIT_EXTENSION: limit}
    )


async def check_interaction(runtime: Runtime, name: str, index: int, interaction: Interaction) -> Checked:
    checked = Checked(name, index, str(interaction.request["method"]), str(interaction.request["uri"]))
    uri = fresh_ids(checked.uri)
    owner = owner_for(runtime, name, uri)
    if isinstance(owner, str):
        checked.error = owner
        return checked
    target = owner.target
    left_out = masked_header_names(interaction) if owner.kind == "upstream" else []
    if left_out:
        checked.note = (
            f"sent without {', '.join(left_out)}: the recording masked the client's credential, and a forward-only "
            "upstream holds none"
        )
    redact = runtime.redactor.redact
    timing = StreamTiming()  # a stream is read to its end, each chunk timed, so that --update keeps its timing
    try:
        request = resend_request(target, interaction, uri)
        async with asyncio.timeout(target.timeout_s):
            response = await runtime.engine.transport.handle_async_request(request)
            timing.head()
            try:
                content, _ = await read_timed(response, MAX_UPSTREAM_BODY_BYTES, timing)
            finally:
                await response.aclose()
    except TimeoutError:
        checked.error = f"timed out after {target.timeout_s:g}s"
        if timing.chunks:
            read = sum(int(size) for _, size in timing.chunks)
            checked.error += f": the stream had not ended ({read} bytes in {len(timing.chunks)} chunks read)"
        return checked
    except BodyTooLarge:
        checked.error = f"the live body is larger than the {MAX_UPSTREAM_BODY_BYTES} byte cap"
        return checked
    except (httpx.HTTPError, ValueError) as exc:
        checked.error = redact(f"could not be sent: {type(exc).__name__}: {exc}")
        return checked
    if left_out and response.status_code in REFUSED:  # the missing credential's doing, not drift: kept as recorded
        checked.error = (
            f"the upstream refused it (HTTP {response.status_code}) without the credential the recording masked; "
            "a stored connection of this name, holding one, can check it"
        )
        return checked
    masked = runtime.redactor.redact_bytes(content)
    content_type = response.headers.get("content-type", "")
    checked.differences = answer_differences(interaction, response.status_code, content_type, masked)
    latency_ms = timing.latency_ms or 0.0
    live = redacted_interaction(interaction.recorded_request(), response, content, latency_ms, runtime.redactor)
    # The request stays as recorded (it is what replays match); the answer and its time are the live ones.
    proxy = {key: value for key, value in interaction.proxy.items() if key != "stream"} | live.proxy
    if is_streamed(response):
        proxy["stream"] = timing.to_cassette()
    checked.live = Interaction(interaction.request, live.response, proxy)
    return checked


async def check_cassette(runtime: Runtime, root: Path, path: Path) -> tuple[list[Checked], list[Interaction]]:
    name = name_of(root, path)
    interactions = await asyncio.to_thread(load_interactions, path, runtime.library.cache)
    if is_mcp_cassette(interactions):  # re-sent within live MCP sessions, with fresh ids
        return await check_mcp_cassette(runtime, name, interactions), interactions
    checked = [await check_interaction(runtime, name, i, item) for i, item in enumerate(interactions)]
    return checked, interactions


def rerecord(runtime: Runtime, path: Path, name: str, interactions: list[Interaction], checked: list[Checked]) -> int:
    """Write the live answers of what drifted into the cassette, atomically; returns how many."""
    live: dict[str, Interaction] = {}
    for item in checked:
        if item.outcome == "drifted" and item.live is not None:
            live[identity(interactions[item.index])] = item.live
            item.updated = True
    if live:
        # Under the cassette's lock, on the file as it is now: what another process appended since is kept.
        update_cassette(path, lambda on_disk: [live.get(identity(i), i) for i in on_disk], runtime.library.cache)
    return len(live)


async def drift(runtime: Runtime, paths: list[Path], update: bool) -> list[Checked]:
    """Check every interaction of the cassettes at `paths` (the server's own folder), in order; with
    `update`, re-record what drifted."""
    root = runtime.settings.cassettes_dir
    found: list[Checked] = []
    for path in paths:
        checked, interactions = await check_cassette(runtime, root, path)
        if update:
            await asyncio.to_thread(rerecord, runtime, path, name_of(root, path), interactions, checked)
        found += checked
    return found


def summary(checked: list[Checked]) -> dict[str, int]:
    outcomes = [c.outcome for c in checked]
    return {
        "cassettes": len({c.cassette for c in checked}),
        "interactions": len(checked),
        "drifted": outcomes.count("drifted"),
        "unchanged": outcomes.count("unchanged"),
        "errors": outcomes.count("error"),
        "updated": sum(c.updated for c in checked),
    }


def report_lines(checked: list[Checked]) -> list[str]:
    lines = []
    for item in checked:
        head = f"{item.cassette} #{item.index} {item.method} {item.uri}"
        labels = {"unchanged": "ok", "error": "ERROR", "drifted": "UPDATED" if item.updated else "DRIFT"}
        label = labels[item.outcome]
        lines.append(f"{label:<8} {head}")
        lines += [f"         {d.text()}" for d in item.differences]
        if item.error:
            lines.append(f"         {item.error}")
        if item.note:
            lines.append(f"         {item.note}")
    counts = summary(checked)
    tail = f", {counts['updated']} re-recorded" if counts["updated"] else ""
    lines.append(
        f"{counts['cassettes']} cassettes, {counts['interactions']} interactions: {counts['drifted']} drifted, "
        f"{counts['unchanged']} unchanged, {counts['errors']} not checked{tail}"
    )
    return lines
