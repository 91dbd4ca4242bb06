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
import hmac
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from filelock import FileLock
from vcr.request import Request as VcrRequest
from vcr.serialize import CASSETTE_FORMAT_VERSION
from vcr.serializers import compat, yamlserializer

from proxy.data_dir import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, create_once, make_private_dir, tighten
from proxy.settings import CASSETTE_MAX_BYTES, CASSETTE_MAX_INTERACTIONS
from proxy.transports.matching import MatchRules, RecordedRequest

TEMP_MARKER = ".tmp-"
# How long a writer waits for another process to finish writing the same cassette (a write takes milliseconds).
CASSETTE_LOCK_TIMEOUT_S = 60.0
CACHE_DIR_NAME = "cassette-cache"  # under the data dir: a JSON copy of each cassette, named by the YAML's SHA-256
# A cache entry's JSON is at most ~2x its YAML (escaped quotes and backslashes). One far larger was expanded from
# aliases by a version that still read them: it is dropped, never loaded.
CACHE_MAX_GROWTH = 4
CACHE_SLACK_BYTES = 1024 * 1024
# The parser vcrpy loads cassettes with (its major version is pinned in pyproject.toml): what the checks before a
# load see is what the load will read.
_Loader = yamlserializer._CassetteLoader
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


@dataclass(frozen=True)
class ParseCache:
    """Parsed cassettes as JSON, one file per cassette content: `<folder>/<SHA-256 of the YAML>.json`. It lives
    in the data dir, never beside the cassettes, so a cassette folder is only ever read when it is loaded. Any
    entry may go (a lost one costs one slower load); a cassette rewritten through it drops its old entry. Like
    everything in the data dir, the folder is 0700 and its files 0600 (an entry holds what upstreams answered)."""

    folder: Path

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> ParseCache:
        folder = data_dir / CACHE_DIR_NAME
        tighten(folder, PRIVATE_DIR_MODE)  # one an earlier version made 0755: its entries are hidden with it
        return cls(folder)

    def entry(self, digest: str) -> Path:
        return self.folder / f"{digest}.json"

    def read(self, digest: str, yaml_bytes: int) -> list[Interaction] | None:
        """The entry of a YAML of `yaml_bytes` bytes, if this user's key signed it and it is in proportion to the
        YAML (else it goes): a data dir can come from elsewhere (a repository, a colleague), and an entry planted
        there would otherwise replay something the cassette does not say."""
        key = _cache_key()
        try:
            if key is None:
                return None
            if self.entry(digest).stat().st_size > CACHE_MAX_GROWTH * yaml_bytes + CACHE_SLACK_BYTES:
                self.forget(digest)
                return None
            head, _, body = self.entry(digest).read_bytes().partition(b"\n")
            signed = json.loads(head)
            if signed.get("sha256") != digest or not hmac.compare_digest(
                str(signed.get("mac")), _mac(key, digest, body)
            ):
                return None
            return [_from_jsonable(item) for item in json.loads(body)]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            return None

    def write(self, digest: str, interactions: list[Interaction]) -> None:
        key = _cache_key()
        if key is None:
            return
        body = json.dumps([_jsonable(i) for i in interactions], ensure_ascii=False).encode("utf-8")
        head = json.dumps({"sha256": digest, "mac": _mac(key, digest, body)})
        try:
            make_private_dir(self.folder)
            atomic_write(self.entry(digest), head + "\n" + body.decode("utf-8"), private=True)
        except OSError:
            pass  # a cache that cannot be written: loads stay correct, only slower

    def forget(self, digest: str) -> None:
        try:
            self.entry(digest).unlink(missing_ok=True)
        except OSError:
            pass


def interactions_from_cache(text: str) -> list[Interaction]:
    """The interactions of one parse-cache entry, whatever cassette it was made from and whoever signed it
    (`proxy cassettes verify`). Raises ValueError, KeyError, TypeError or AttributeError when it is not one."""
    head, newline, body = text.partition("\n")
    items = json.loads(body) if newline else json.loads(head)["interactions"]  # an older entry is one document
    return [_from_jsonable(item) for item in items]


def _mac(key: bytes, digest: str, body: bytes) -> str:
    return hmac.new(key, digest.encode() + b"\n" + body, hashlib.sha256).hexdigest()


_cache_keys: dict[Path, bytes | None] = {}


def _cache_key() -> bytes | None:
    """This user's key for parse-cache entries, `~/.cache/proxy/parse-cache.key` (0600, made once), kept outside
    every data dir so that a data dir from elsewhere brings no entry this user will read. None: no home to keep it."""
    try:
        folder = Path.home() / ".cache" / "proxy"
    except RuntimeError:
        return None
    if folder not in _cache_keys:
        try:
            make_private_dir(folder)
            _cache_keys[folder] = create_once(folder / "parse-cache.key", os.urandom(32))
        except OSError:
            _cache_keys[folder] = None
    return _cache_keys[folder]


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


def lock_of(path: Path) -> FileLock:
    """The lock every process takes to write the cassette at `path` (servers, `proxy run`, drift, xdist workers).
    The lock file lives in a folder of this user's, named by the cassette's real path, so the cassettes folder
    holds nothing but cassettes and a read-only folder still works."""
    key = hashlib.sha256(os.path.realpath(path).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return FileLock(_lock_folder() / f"{key}.lock", timeout=CASSETTE_LOCK_TIMEOUT_S, mode=PRIVATE_FILE_MODE)


def _lock_folder() -> Path:
    """`<temp>/proxy-cassette-locks-<uid>`, unless another user made (or replaced) it first: a folder of another
    owner, open to others, or a symlink could block every recording or reach this user's lock files, so then
    `~/.cache/proxy/cassette-locks` serves instead."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    for folder in (
        Path(tempfile.gettempdir()) / f"proxy-cassette-locks-{uid}",
        Path.home() / ".cache" / "proxy" / "cassette-locks",
    ):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            info = os.lstat(folder)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == uid and not info.st_mode & 0o077:
            return folder
    raise ValueError(
        f"no private folder for cassette lock files: {Path(tempfile.gettempdir()) / f'proxy-cassette-locks-{uid}'} "
        "belongs to another user or is open to others, and ~/.cache/proxy/cassette-locks cannot be made"
    )


def update_cassette(
    path: Path, change: Callable[[list[Interaction]], list[Interaction]], cache: ParseCache | None = None
) -> list[Interaction]:
    """Rewrite the cassette at `path` as `change` makes it from what is on disk now, under the cassette's lock,
    so two processes that write it in turn each build on the other's file and neither loses what the other
    recorded. Returns what was written. A file on disk that cannot be read is left alone (ValueError)."""
    with lock_of(path):
        on_disk = load_interactions(path, cache) if path.exists() else []
        interactions = change(on_disk)
        write_cassette(path, serialize(interactions), interactions, cache)
        return interactions


def write_cassette(path: Path, text: str, interactions: list[Interaction], cache: ParseCache | None = None) -> None:
    """The YAML atomically; then `cache` holds the new content and drops the old (a lost entry only costs one
    slow load). Nothing but the YAML is written into the cassette folder. Writers that another process may race
    go through `update_cassette`."""
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


def atomic_write(path: Path, text: str, private: bool = False) -> None:
    """Temporary file, fsync, rename: a reader (or a crash) never sees half a cassette. A `private` file is 0600
    from its creation (the data dir's); a cassette is made as the umask says, to be committed and shared."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE if private else 0o666)
    if private:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # a temporary file a crash left behind keeps the mode it was made with
    with open(fd, "w", encoding="utf-8") as f:
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
    """Temporary files a crashed writer left behind; one whose writer is still running (another server or
    worker on this folder) is that writer's to finish."""
    removed = 0
    if root.exists():
        for temp in root.rglob(f".*{TEMP_MARKER}*"):
            if _writer_alive(temp.name.rsplit(TEMP_MARKER, 1)[-1]):
                continue
            temp.unlink(missing_ok=True)
            removed += 1
    return removed


def _writer_alive(pid_text: str) -> bool:
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    return True
