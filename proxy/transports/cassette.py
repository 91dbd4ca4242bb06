"""A cassette: vcrpy's YAML format on disk, a list of interactions plus a hash index in memory.

Read and written with vcrpy's own pieces (its `Request` and its libyaml-backed serializer), so a
plain `vcr.use_cassette(path, record_mode="none")` test loads what we write. Lookup is a dict keyed
by the match key, so its cost does not grow with the cassette. Each interaction carries a `proxy`
section vcrpy ignores: id, recorded time, latency, session key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from vcr.request import Request as VcrRequest
from vcr.serialize import CASSETTE_FORMAT_VERSION
from vcr.serializers import compat, yamlserializer

from proxy.transports.matching import MatchRules, RecordedRequest

TEMP_MARKER = ".tmp-"
CACHE_DIR_NAME = "cassette-cache"  # under the data dir: a JSON copy of each cassette, named by the YAML's SHA-256
# Hop-by-hop and encoding headers describe the wire, not the content we store (bodies are stored decoded).
WIRE_HEADERS = frozenset({"content-encoding", "transfer-encoding", "content-length", "connection", "keep-alive"})


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

    def add(self, interaction: Interaction) -> int:
        position = len(self.interactions)
        self.interactions.append(interaction)
        self.index.setdefault(self.rules.key(interaction.recorded_request()), []).append(position)
        self.dirty = True
        return position

    def clear(self) -> None:
        self.interactions.clear()
        self.index.clear()
        self.dirty = True

    def serialize(self, interactions: list[Interaction] | None = None) -> str:
        items = self.interactions if interactions is None else interactions
        data = {"version": CASSETTE_FORMAT_VERSION, "interactions": [i.to_yaml_dict() for i in items]}
        return str(yamlserializer.serialize(data))


@dataclass(frozen=True)
class ParseCache:
    """Parsed cassettes as JSON, one file per cassette content: `<folder>/<SHA-256 of the YAML>.json`. It lives
    in the data dir, never beside the cassettes, so a cassette folder is only ever read when it is loaded. Any
    entry may go (a lost one costs one slower load); a cassette rewritten through it drops its old entry."""

    folder: Path

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> ParseCache:
        return cls(data_dir / CACHE_DIR_NAME)

    def entry(self, digest: str) -> Path:
        return self.folder / f"{digest}.json"

    def read(self, digest: str) -> list[Interaction] | None:
        try:
            data = json.loads(self.entry(digest).read_text(encoding="utf-8"))
            if data.get("sha256") != digest:
                return None
            return [_from_jsonable(item) for item in data["interactions"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            return None

    def write(self, digest: str, interactions: list[Interaction]) -> None:
        data = {"sha256": digest, "interactions": [_jsonable(i) for i in interactions]}
        try:
            atomic_write(self.entry(digest), json.dumps(data, ensure_ascii=False))
        except OSError:
            pass  # a cache that cannot be written: loads stay correct, only slower

    def forget(self, digest: str) -> None:
        try:
            self.entry(digest).unlink(missing_ok=True)
        except OSError:
            pass


def interactions_from_cache(text: str) -> list[Interaction]:
    """The interactions of one parse-cache entry, whatever cassette it was made from (`proxy cassettes verify`).
    Raises ValueError, KeyError, TypeError or AttributeError when it is not one."""
    return [_from_jsonable(item) for item in json.loads(text)["interactions"]]


def load_interactions(path: Path, cache: ParseCache | None = None) -> list[Interaction]:
    """A cassette's interactions: from `cache` when it holds the file's SHA-256, else by parsing the YAML
    (libyaml when present), which then fills the cache. YAML parsing costs ~0.7 ms an interaction even with
    libyaml; JSON ~0.01 ms. Raises ValueError naming the file when it cannot read it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cassette {path} cannot be read: {exc}") from None
    digest = sha256_of(raw)
    if cache is not None:
        cached = cache.read(digest)
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


def sha256_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def write_cassette(path: Path, text: str, interactions: list[Interaction], cache: ParseCache | None = None) -> None:
    """The YAML atomically; then `cache` holds the new content and drops the old (a lost entry only costs one
    slow load). Nothing but the YAML is written into the cassette folder."""
    if cache is None:
        atomic_write(path, text)
        return
    try:
        previous: str | None = sha256_of(path.read_bytes())
    except OSError:
        previous = None
    atomic_write(path, text)
    digest = sha256_of(text.encode("utf-8"))
    cache.write(digest, interactions)
    if previous is not None and previous != digest:
        cache.forget(previous)


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
            response["status"]["code"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: interaction {number} is malformed ({exc})") from None
        interactions.append(Interaction(request, response, dict(item.get("proxy") or {})))
    return interactions


def atomic_write(path: Path, text: str) -> None:
    """Temporary file, fsync, rename: a reader (or a crash) never sees half a cassette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")
    with open(temp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_temp_files(root: Path) -> int:
    removed = 0
    if root.exists():
        for temp in root.rglob(f".*{TEMP_MARKER}*"):
            temp.unlink(missing_ok=True)
            removed += 1
    return removed


_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_HASH_SUFFIX = re.compile(r"-[0-9a-f]{8}\Z")  # the shape of the suffix below
MAX_PLAIN_NAME = 100
HASHED_STEM = 80


def file_name(key: str) -> str:
    """The file name of a session key's cassette, unique per key even on a case-insensitive file system.

    A key that is lower-case and safe (`a-z 0-9 . _ -`, neither starting nor ending with `.` or `_`), at most
    100 characters long and not ending in `-` and 8 hex digits is its own name. Any other key is written in that
    alphabet, lower-cased, cut to 80 characters, and given `-` and the first 8 hex digits of the SHA-256 of
    the key as it was. So a plain name never has the shape of a hashed one, and two keys share a name only
    if they share the hash as well; every name is lower-case, so case never tells two files apart."""
    plain = 0 < len(key) <= MAX_PLAIN_NAME and key.strip("._") == key
    if plain and _UNSAFE.search(key) is None and _HASH_SUFFIX.search(key) is None:
        return key
    safe = _UNSAFE.sub("_", key.lower()).strip("._") or "cassette"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()  # any str, one-to-one
    return f"{safe[:HASHED_STEM]}-{digest[:8]}"
