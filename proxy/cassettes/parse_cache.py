"""The parse cache: each cassette parsed once, kept as signed JSON in the data dir, named by the YAML's SHA-256."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

from proxy.cassettes.cassette import Interaction, _from_jsonable, _jsonable
from proxy.cassettes.files import atomic_write
from proxy.security.data_dir import PRIVATE_DIR_MODE, create_once, make_private_dir, tighten

CACHE_DIR_NAME = "cassette-cache"  # under the data dir: a JSON copy of each cassette, named by the YAML's SHA-256
# A cache entry's JSON is at most ~2x its YAML (escaped quotes and backslashes). One far larger was expanded from
# aliases by a version that still read them: it is dropped, never loaded.
CACHE_MAX_GROWTH = 4
CACHE_SLACK_BYTES = 1024 * 1024


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
