"""A cassette: vcrpy's YAML format on disk, a list of interactions plus a hash index in memory.

Read and written with vcrpy's own pieces (its `Request` and its libyaml-backed serializer), so a
plain `vcr.use_cassette(path, record_mode="none")` test loads what we write. Lookup is a dict keyed
by the match key, so its cost does not grow with the cassette. Each interaction carries a `proxy`
section vcrpy ignores: id, recorded time, latency, session key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml
from vcr.request import Request as VcrRequest
from vcr.serialize import CASSETTE_FORMAT_VERSION
from vcr.serializers import compat, yamlserializer

from proxy.cassettes.matching import MatchRules, RecordedRequest
from proxy.config.settings import CASSETTE_MAX_BYTES, CASSETTE_MAX_INTERACTIONS
from proxy.engine.transports import WIRE_HEADERS

if TYPE_CHECKING:  # for annotations only: the parse cache builds on this module
    from proxy.cassettes.parse_cache import ParseCache

# The parser vcrpy loads cassettes with (its major version is pinned in pyproject.toml): what the checks before a
# load see is what the load will read.
_Loader = yamlserializer._CassetteLoader


# A recorded answer ready to replay: status, headers, body bytes, the response extensions (see record_replay).
PreparedReply = tuple[int, httpx.Headers, bytes, dict[str, Any]]


@dataclass
class Interaction:
    request: dict[str, Any]  # vcrpy's Request._to_dict(): method, uri, body, headers {name: [values]}
    response: dict[str, Any]  # {status: {code, message}, headers: {name: [values]}, body: {string}}
    proxy: dict[str, Any]  # id, recorded_at, latency_ms, session_key
    prepared: PreparedReply | None = field(default=None, compare=False, repr=False)  # made at its first replay

    def recorded_request(self) -> RecordedRequest:
        body = self.request.get("body") or b""
        if isinstance(body, str):
            body = body.encode()
        headers = {
            k.lower(): (v[0] if isinstance(v, list) and v else str(v)) for k, v in self.request["headers"].items()
        }
        return RecordedRequest(self.request["method"], self.request["uri"], body, headers)

    def to_yaml_dict(self) -> dict[str, Any]:
        return {
            "request": compat.convert_to_unicode(dict(self.request)),
            "response": compat.convert_to_unicode(_copy_response(self.response)),
            "proxy": self.proxy,
        }


def _copy_response(response: dict[str, Any]) -> dict[str, Any]:
    return {**response, "body": dict(response["body"])}


def make_interaction(
    method: str,
    uri: str,
    body: bytes,
    request_headers: dict[str, str],
    status: int,
    reason: str,
    response_headers: list[tuple[str, str]],
    content: bytes,
    proxy: dict[str, Any],
) -> Interaction:
    request = VcrRequest(method, uri, body, dict(request_headers))._to_dict()
    headers: dict[str, list[str]] = {}
    for name, value in response_headers:
        if name.lower() not in WIRE_HEADERS:
            headers.setdefault(name, []).append(value)
    headers["content-length"] = [str(len(content))]
    response = {"status": {"code": status, "message": reason}, "headers": headers, "body": {"string": content}}
    return Interaction(request, response, proxy)


@dataclass
class Cassette:
    name: str  # the layout-relative name, e.g. "sessions/tc-1"
    path: Path
    rules: MatchRules
    interactions: list[Interaction] = field(default_factory=list)
    index: dict[tuple[str, str, str, str], list[int]] = field(default_factory=dict)
    existed: bool = False  # a file was there when we first opened it
    dirty: bool = False
    journal_seq: int = 0  # the newest journal row this cassette's memory holds
    dropped: list[Interaction] = field(default_factory=list)  # read, then cleared on purpose (record mode all)
    played: set[int] = field(default_factory=set)  # positions replayed or recorded in this run

    def add(self, interaction: Interaction) -> int:
        position = len(self.interactions)
        self.interactions.append(interaction)
        self.index.setdefault(self.rules.key(interaction.recorded_request()), []).append(position)
        self.dirty = True
        return position

    def clear(self) -> None:
        self.played.clear()
        self.dropped.extend(self.interactions)
        self.interactions.clear()
        self.index.clear()
        self.dirty = True

    def serialize(self, interactions: list[Interaction] | None = None) -> str:
        return serialize(self.interactions if interactions is None else interactions)

    def merged_with(self, on_disk: list[Interaction], snapshot: list[Interaction]) -> list[Interaction]:
        """What to write: `snapshot` of this cassette, then what another process appended to the file since we
        read it. An interaction on disk that we read (kept or cleared on purpose) is ours to decide on; one we
        never read is kept."""
        seen = identities(snapshot) | identities(self.dropped)
        return snapshot + [item for item in on_disk if identity(item) not in seen]


def serialize(interactions: list[Interaction]) -> str:
    data = {"version": CASSETTE_FORMAT_VERSION, "interactions": [i.to_yaml_dict() for i in interactions]}
    return str(yaml.dump(data, Dumper=_UnaliasedDumper))


def identity(interaction: Interaction) -> str:
    """The id this tool gives every recording; for one without (a cassette written by plain vcrpy), its content."""
    recorded_id = interaction.proxy.get("id")
    if recorded_id:
        return str(recorded_id)
    return "sha256:" + sha256_of(json.dumps(_jsonable(interaction), sort_keys=True, default=str).encode("utf-8"))


def identities(interactions: Iterable[Interaction]) -> set[str]:
    return {identity(item) for item in interactions}


class _UnaliasedDumper(yamlserializer._CassetteDumper):
    """vcrpy's dumper, except that an object met twice is written out twice, never as an anchor and an alias:
    loading refuses aliases, so what we write must never hold one."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def load_interactions(path: Path, cache: ParseCache | None = None) -> list[Interaction]:
    """A cassette's interactions: from `cache` when it holds the file's SHA-256, else by parsing the YAML
    (libyaml when present), which then fills the cache. YAML parsing costs ~0.7 ms an interaction even with
    libyaml; JSON ~0.01 ms. Raises ValueError naming the file when it cannot read it or refuses it (over
    CASSETTE_MAX_BYTES, over CASSETTE_MAX_INTERACTIONS, a YAML alias): a refused file is never cached."""
    raw = _read_capped(path, f"cassette {path}")
    digest = sha256_of(raw)
    if cache is not None:
        cached = cache.read(digest, len(raw))
        if cached is not None:
            return cached
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"cassette {path} is not UTF-8 text: {exc}") from None
    interactions = parse_interactions(text, f"cassette {path}")
    if cache is not None:
        cache.write(digest, interactions)
    return interactions


def _read_capped(path: Path, source: str) -> bytes:
    """The file's bytes, refused by its size before it is read (and at most one byte past the cap is ever read)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            too_large = size > CASSETTE_MAX_BYTES
            # Asked for its size (plus a byte, should it grow meanwhile), never the cap: read(n) allocates n first.
            raw = b"" if too_large else f.read(min(size, CASSETTE_MAX_BYTES) + 1)
    except OSError as exc:
        raise ValueError(f"{source} cannot be read: {exc}") from None
    if too_large or len(raw) > CASSETTE_MAX_BYTES:
        raise ValueError(
            f"{source} is refused: it is larger than the {CASSETTE_MAX_BYTES} byte cap (CASSETTE_MAX_BYTES, "
            f"{CASSETTE_MAX_BYTES // (1024 * 1024)} MiB); split it or record it again"
        )
    return raw


def sha256_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _body_to_json(body: Any) -> Any:
    if isinstance(body, bytes):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(body).decode()}
    return body


def _body_from_json(body: Any) -> Any:
    if isinstance(body, dict) and "base64" in body:
        return base64.b64decode(body["base64"])
    return body.encode("utf-8") if isinstance(body, str) else body


def _jsonable(interaction: Interaction) -> dict[str, Any]:
    request = {**interaction.request, "body": _body_to_json(interaction.request.get("body"))}
    response = {**interaction.response, "body": {"string": _body_to_json(interaction.response["body"]["string"])}}
    return {"request": request, "response": response, "proxy": interaction.proxy}


def _from_jsonable(item: dict[str, Any]) -> Interaction:
    request = {**item["request"], "body": _body_from_json(item["request"].get("body"))}
    response = {**item["response"], "body": {"string": _body_from_json(item["response"]["body"]["string"])}}
    return Interaction(request, response, item["proxy"])


def parse_interactions(text: str, source: str) -> list[Interaction]:
    path = source
    try:
        _refuse_expansion(text, source)
        data = yamlserializer.deserialize(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("interactions"), list):
        raise ValueError(f"{path} is not in vcrpy's format (no 'interactions' list)")
    interactions = []
    for number, item in enumerate(data["interactions"]):
        try:
            request = VcrRequest._from_dict(item["request"])._to_dict()
            response = compat.convert_to_bytes(item["response"])
            problem = _response_problem(response)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: interaction {number} is malformed ({exc})") from None
        if problem is not None:  # found now, not as a crash of the replay that would use it
            raise ValueError(f"{path}: interaction {number} is malformed ({problem})")
        interactions.append(Interaction(request, response, dict(item.get("proxy") or {})))
    return interactions


def _response_problem(response: dict[str, Any]) -> str | None:
    """What a replay of this recorded answer could not use: a status that is no HTTP status, headers that are
    not a map of lists, a body that is not text."""
    code = response["status"]["code"]
    if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 599:
        return f"status code {code!r} is not an HTTP status (100-599)"
    headers = response["headers"]
    if not isinstance(headers, dict) or not all(isinstance(values, list) for values in headers.values()):
        return "headers are not a map of lists"
    if not isinstance(response["body"]["string"], str | bytes | None):
        return "body string is not text"
    return None


def _refuse_expansion(text: str, source: str) -> None:
    """One pass over the YAML's events, before any node or object is built from them. Refuses any alias (`*name`
    repeats a whole subtree, so nested ones make a few hundred bytes expand to gigabytes; no cassette written by
    this tool or by plain vcrpy has one) and more than CASSETTE_MAX_INTERACTIONS items in the root's `interactions`.
    Raises ValueError naming `source`; a YAML syntax error is left to the loader."""
    depth = 0  # collections open around the next event
    root_is_mapping = at_key = is_interactions = counting = False
    count = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            continue
        if not isinstance(event, yaml.NodeEvent):
            continue  # the stream's and documents' starts and ends
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1 if event.start_mark else "?"
            raise ValueError(
                f"{source} is refused: it uses a YAML alias (*{event.anchor} at line {line}), which no cassette "
                "written by proxy or vcrpy has; record it again (or write the repeated part out in full)"
            )
        if depth == 0:
            root_is_mapping, at_key = isinstance(event, yaml.MappingStartEvent), True
        elif depth == 1 and root_is_mapping:  # a key, then its value, of the root mapping
            if at_key:
                is_interactions = isinstance(event, yaml.ScalarEvent) and event.value == "interactions"
            counting = not at_key and is_interactions and isinstance(event, yaml.SequenceStartEvent)
            at_key = not at_key
        elif depth == 2 and counting:
            count += 1
            if count > CASSETTE_MAX_INTERACTIONS:
                raise ValueError(
                    f"{source} is refused: it holds more than {CASSETTE_MAX_INTERACTIONS} interactions "
                    "(CASSETTE_MAX_INTERACTIONS); split it or record it again"
                )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
