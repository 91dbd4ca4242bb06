"""The cassette library: journal recovery, resets, atomic files, the vcrpy format."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.cassettes.cassette import Cassette, load_interactions, make_interaction
from proxy.cassettes.files import TEMP_MARKER, write_cassette
from proxy.cassettes.journal import Journal
from proxy.cassettes.library import CassetteLibrary
from proxy.cassettes.matching import MatchRules
from proxy.cassettes.names import file_name
from proxy.cassettes.parse_cache import ParseCache
from proxy.config.record_mode import RecordMode
from proxy.security.vault import Vault, load_fernet
from proxy.storage.store import Store


def interaction(n: int):  # type: ignore[no-untyped-def]
    return make_interaction(
        "POST",
        "https://up.test/chat",
        f'{{"n": {n}}}'.encode(),
        {"content-type": "application/json"},
        200,
        "OK",
        [("content-type", "application/json"), ("content-encoding", "gzip")],
        f'{{"r": {n}}}'.encode(),
        {"latency_ms": 1.0},
    )


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "data", Vault(load_fernet(tmp_path / "data")))
    yield store
    store.close()


async def record(library: CassetteLibrary, key: str, numbers: range, mode: RecordMode = RecordMode.ONCE) -> None:
    handle = library.open("sessions", key, mode)
    cassette = await library.cassette(handle.name)
    for n in numbers:
        await library.record(handle, cassette, interaction(n))


def bodies(path: Path) -> list[bytes]:
    return [i.request["body"] for i in load_interactions(path)]


async def test_recovery_folds_the_journal_in_without_duplicates(tmp_path: Path, store: Store) -> None:
    library = CassetteLibrary(tmp_path / "c", store)
    await record(library, "tc", range(2))
    await library.flush()
    await record(library, "tc", range(2, 4), RecordMode.NEW_EPISODES)
    # Crash: 2 and 3 are only in the journal, and 1 is in both (the crash hit between writing the
    # file and forgetting the journal rows).
    path = tmp_path / "c" / "sessions" / "tc.yaml"
    assert bodies(path) == [b'{"n": 0}', b'{"n": 1}']
    flushed = await library.cassette("sessions/tc")
    text = flushed.serialize([flushed.interactions[1]])
    store.call(library.journal.append, "sessions/tc", "interaction", text, library.journal_path("sessions/tc"))
    recovered = CassetteLibrary(tmp_path / "c", store).recover()
    assert recovered == {"sessions/tc": 2}
    assert bodies(path) == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert store.call(Journal(store).rows) == {}
    assert CassetteLibrary(tmp_path / "c", store).recover() == {}  # idempotent


async def test_all_mode_reset_is_journaled_too(tmp_path: Path, store: Store) -> None:
    library = CassetteLibrary(tmp_path / "c", store)
    await record(library, "tc", range(3))
    await library.flush()
    fresh = CassetteLibrary(tmp_path / "c", store)
    await record(fresh, "tc", range(7, 8), RecordMode.ALL)  # crash before any flush
    CassetteLibrary(tmp_path / "c", store).recover()
    assert bodies(tmp_path / "c" / "sessions" / "tc.yaml") == [b'{"n": 7}']


async def test_all_mode_keeps_the_old_recordings_until_it_records_a_new_one(tmp_path: Path, store: Store) -> None:
    library = CassetteLibrary(tmp_path / "c", store)
    await record(library, "tc", range(3))
    await library.flush()
    path = tmp_path / "c" / "sessions" / "tc.yaml"
    interrupted = CassetteLibrary(tmp_path / "c", store)
    await record(interrupted, "tc", range(0), RecordMode.ALL)  # opened, then stopped before its first answer
    await interrupted.close()
    CassetteLibrary(tmp_path / "c", store).recover()
    assert bodies(path) == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    rerecorded = CassetteLibrary(tmp_path / "c", store)
    await record(rerecorded, "tc", range(5, 7), RecordMode.ALL)
    await rerecorded.close()
    assert bodies(path) == [b'{"n": 5}', b'{"n": 6}']


async def test_all_mode_keeps_a_recording_whose_caller_is_cancelled_while_it_is_journaled(
    tmp_path: Path, store: Store
) -> None:
    library = CassetteLibrary(tmp_path / "c", store)
    await record(library, "tc", range(2))
    await library.flush()
    rerecording = CassetteLibrary(tmp_path / "c", store)
    handle = rerecording.open("sessions", "tc", RecordMode.ALL)
    cassette = await rerecording.cassette(handle.name)
    # A stream's end records from a task the client's hang-up cancels: here at its first await.
    task = asyncio.ensure_future(rerecording.record(handle, cassette, interaction(9)))
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await rerecording.close()
    assert bodies(tmp_path / "c" / "sessions" / "tc.yaml") == [b'{"n": 9}']


def test_temp_files_from_an_interrupted_write_are_removed(tmp_path: Path, store: Store) -> None:
    leftover = tmp_path / "c" / "sessions" / f".tc.yaml{TEMP_MARKER}123"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("interactions: [half")
    CassetteLibrary(tmp_path / "c", store).recover()
    assert not leftover.exists()


def test_wire_headers_are_not_recorded_and_length_matches_the_stored_body() -> None:
    recorded = interaction(5)
    assert "content-encoding" not in recorded.response["headers"]
    assert recorded.response["headers"]["content-length"] == [str(len(b'{"r": 5}'))]


def test_a_lower_case_safe_key_is_its_own_file_name_any_other_gets_a_hash_of_the_key() -> None:
    assert [file_name(k) for k in ("tc-1", "case", "demo-greeting", "demo-followup", "demo-quotes")] == [
        "tc-1",
        "case",
        "demo-greeting",
        "demo-followup",
        "demo-quotes",
    ]
    assert file_name("Case") == f"case-{key_hash('Case')}"
    assert file_name("tc 1") == f"tc_1-{key_hash('tc 1')}" == "tc_1-8985c2fa"
    assert file_name("tc_1-8985c2fa") == f"tc_1-8985c2fa-{key_hash('tc_1-8985c2fa')}"  # shaped like a hashed name
    assert file_name("../etc/passwd") == f"etc_passwd-{key_hash('../etc/passwd')}"
    assert file_name("") == f"cassette-{key_hash('')}" and file_name("\ud800").startswith("cassette-")
    assert len(file_name("a" * 101)) == 89


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


# Keys from an alphabet rich in the characters that matter (case, unsafe, hex, separators), and the file
# names of such keys used as keys in turn: the likeliest way to meet a hashed name.
_keys = st.text(alphabet="aAbBcCfF019 -_./\\:é\u212a", max_size=24) | st.text(max_size=12)
KEYS = _keys | _keys.map(file_name) | st.builds(lambda k: "x" * 95 + k, _keys)


@given(KEYS, KEYS)
def test_distinct_keys_never_share_a_case_folded_file_name(first: str, second: str) -> None:
    if first != second:
        assert file_name(first).casefold() != file_name(second).casefold()


@given(_keys)
def test_the_file_name_of_a_renamed_key_used_as_a_key_is_another_file_name(key: str) -> None:
    name = file_name(key)
    if name != key:
        assert file_name(name).casefold() != name.casefold()


@given(KEYS)
def test_file_names_are_lower_case_safe_and_never_hidden(key: str) -> None:
    name = file_name(key)
    assert re.fullmatch(r"[a-z0-9._-]{1,100}", name) and not name.startswith(".")


def test_unparseable_cassette_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("interactions: [")
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        load_interactions(bad)
    bad.write_text("just: text")
    with pytest.raises(ValueError, match="no 'interactions' list"):
        load_interactions(bad)


def refuse_yaml(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make parsing any cassette's YAML fail; returns the sources it was asked for."""
    from proxy.cassettes import cassette as module

    asked: list[str] = []

    def parse(text: str, source: str) -> list[object]:
        asked.append(source)
        raise AssertionError(f"{source} parsed from YAML")

    monkeypatch.setattr(module, "parse_interactions", parse)
    return asked


def written_cassette(path: Path, cache: ParseCache | None) -> Cassette:
    """A cassette of one interaction, written to `path` (its parse cached in `cache`, if given)."""
    cassette = Cassette("tc", path, MatchRules())
    cassette.add(interaction(1))
    write_cassette(path, cassette.serialize(), cassette.interactions, cache)
    return cassette


def test_the_parse_cache_lives_in_the_data_dir_and_spares_the_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, cache = tmp_path / "cassettes", ParseCache.in_data_dir(tmp_path / "data")
    path = folder / "tc.yaml"
    cassette = written_cassette(path, cache)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in folder.iterdir()] == ["tc.yaml"]  # nothing beside the cassette
    assert [p.name for p in cache.folder.iterdir()] == [f"{digest}.json"]
    with monkeypatch.context() as patched:
        asked = refuse_yaml(patched)
        assert [i.request["body"] for i in load_interactions(path, cache)] == [b'{"n": 1}']  # from the cache
        assert asked == []
    path.write_text(path.read_text().replace('{"n": 1}', '{"n": 2}'))  # edited by hand: another hash
    assert [i.request["body"] for i in load_interactions(path, cache)] == [b'{"n": 2}']  # the YAML wins
    edited = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (cache.folder / f"{edited}.json").exists()
    cassette.add(interaction(3))
    write_cassette(path, cassette.serialize(), cassette.interactions, cache)  # a rewrite drops the old entry
    assert not (cache.folder / f"{edited}.json").exists() and len(list(cache.folder.iterdir())) == 2
    assert [p.name for p in folder.iterdir()] == ["tc.yaml"]


async def test_a_library_loads_through_the_cache_and_writes_only_cassettes(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, cache = tmp_path / "c", ParseCache.in_data_dir(tmp_path / "data")
    library = CassetteLibrary(folder, store, cache=cache)
    await record(library, "tc", range(2))
    await library.close()
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == ["sessions", "sessions/tc.yaml"]
    asked = refuse_yaml(monkeypatch)
    again = CassetteLibrary(folder, store, cache=cache)
    loaded = await again.cassette("sessions/tc")
    assert [i.request["body"] for i in loaded.interactions] == [b'{"n": 0}', b'{"n": 1}'] and asked == []
    await again.close()


async def test_journal_rows_belong_to_one_cassettes_folder(tmp_path: Path, store: Store) -> None:
    """Two folders share one data dir: each start-up folds in its own folder's rows, and no other."""
    in_a, in_b = CassetteLibrary(tmp_path / "a", store), CassetteLibrary(tmp_path / "b", store)
    await record(in_a, "tc", range(2))  # not flushed: only the journal has them
    await record(in_b, "tc", range(5, 6))  # the same cassette name, in the other folder
    await in_b.flush()  # forgets b's rows, and only b's
    assert CassetteLibrary(tmp_path / "b", store).recover() == {}
    assert bodies(tmp_path / "b" / "sessions" / "tc.yaml") == [b'{"n": 5}']
    assert not (tmp_path / "a" / "sessions" / "tc.yaml").exists()
    assert CassetteLibrary(tmp_path / "a", store).recover() == {"sessions/tc": 2}
    assert bodies(tmp_path / "a" / "sessions" / "tc.yaml") == [b'{"n": 0}', b'{"n": 1}']
    assert store.call(Journal(store).rows) == {}


async def test_rows_of_a_folder_that_is_gone_are_kept_and_logged(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    gone = tmp_path / "gone"
    await record(CassetteLibrary(gone, store), "tc", range(3))
    assert not gone.exists()
    CassetteLibrary(tmp_path / "other", store).recover()
    assert f"the journal keeps 3 unsaved interactions of cassettes in {gone} (the folder is gone)" in caplog.text
    assert list(store.call(Journal(store).rows)) == [str(gone / "sessions" / "tc.yaml")]
    assert not (tmp_path / "other" / "sessions").exists()


def test_a_journal_from_before_paths_migrates_to_the_folder_in_use(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "proxy.db") as old:  # the journal as an older version left it after a crash
        old.execute(
            "CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, cassette TEXT NOT NULL,"
            " kind TEXT NOT NULL, data TEXT NOT NULL)"
        )
        text = Cassette("sessions/tc", tmp_path / "x.yaml", MatchRules()).serialize([interaction(9)])
        old.execute("INSERT INTO journal (cassette, kind, data) VALUES ('sessions/tc', 'interaction', ?)", (text,))
    old.close()
    store = Store(data, Vault(load_fernet(data)))
    try:
        assert CassetteLibrary(tmp_path / "now", store).recover() == {"sessions/tc": 1}
        assert bodies(tmp_path / "now" / "sessions" / "tc.yaml") == [b'{"n": 9}']
        assert store.call(Journal(store).rows) == {}
    finally:
        store.close()


@pytest.mark.parametrize("planted_as", ["unsigned, as older versions wrote", "signed with another user's key"])
def test_a_parse_cache_entry_planted_in_a_data_dir_is_never_replayed(tmp_path: Path, planted_as: str) -> None:
    """The attack: a data dir that came with a repository holds a cache entry, named by the SHA-256 of a committed
    cassette, whose answer says something the cassette does not. It used to be replayed (and verify said 0
    problems). Entries are signed with this user's key, kept outside every data dir: the YAML wins, and its own
    entry replaces the planted one."""
    import json

    from proxy.cassettes.parse_cache import _mac

    cache = ParseCache.in_data_dir(tmp_path / "data")
    path = tmp_path / "cassettes" / "tc.yaml"
    written_cassette(path, None)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_interactions(path, None)
    planted = [
        {
            "request": {**loaded[0].request, "body": '{"n": 1}'},
            "response": {**loaded[0].response, "body": {"string": "PWNED from the cache, not in the YAML"}},
            "proxy": {},
        }
    ]
    cache.folder.mkdir(parents=True)
    body = json.dumps(planted).encode()
    if planted_as.startswith("unsigned"):
        text = json.dumps({"sha256": digest, "interactions": planted})
    else:
        text = json.dumps({"sha256": digest, "mac": _mac(b"k" * 32, digest, body)}) + "\n" + body.decode()
    (cache.folder / f"{digest}.json").write_text(text)
    replayed = load_interactions(path, cache)
    assert [i.response["body"]["string"] for i in replayed] == [b'{"r": 1}']
    assert b"PWNED" not in (cache.folder / f"{digest}.json").read_bytes()  # the YAML's own entry replaced it
    assert load_interactions(path, cache)[0].response["body"]["string"] == b'{"r": 1}'
