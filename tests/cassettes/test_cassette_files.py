"""Cassette files are untrusted input: a YAML alias bomb, a file over the size cap and one over the interaction cap
are refused with one line naming the file, before anything is built from them or written to the parse cache."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import vcr

from proxy.cassettes import cassette as cassette_module
from proxy.cassettes.cassette import Cassette, load_interactions, make_interaction
from proxy.cassettes.matching import MatchRules
from proxy.cassettes.parse_cache import ParseCache
from proxy.config import settings
from tests.helpers import invoke
from tests.servers import proxy_serving
from tests.upstream import Upstream

LEAF = "x" * 32
MB = 1024 * 1024


def alias_bomb(uri: str, levels: int = 7, width: int = 10) -> str:
    """A cassette of about 800 bytes whose `proxy` section expands to width**levels (10**7) leaves of 32 characters:
    each level is a list of `width` aliases of the level before."""
    lines = [
        "version: 1",
        "interactions:",
        f"- request: {{method: GET, uri: '{uri}', body: '', headers: {{}}}}",
        "  response: {status: {code: 200, message: OK}, headers: {}, body: {string: ''}}",
        "  proxy:",
        f"    l0: &l0 [{','.join([LEAF] * width)}]",
    ]
    lines += [f"    l{n}: &l{n} [{','.join([f'*l{n - 1}'] * width)}]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def interaction(n: int) -> cassette_module.Interaction:
    return make_interaction(
        "POST", "https://up.test/chat", f'{{"n": {n}}}'.encode(), {}, 200, "OK", [], b"{}", {"id": str(n)}
    )


def written(path: Path, count: int) -> str:
    """A cassette of `count` interactions as this tool writes it, at `path`; returns its text."""
    cassette = Cassette("c", path, MatchRules())
    for n in range(count):
        cassette.add(interaction(n))
    text = cassette.serialize()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (its peak so far) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


# -- the alias bomb --------------------------------------------------------------------------------


def test_the_alias_bomb_is_800_bytes_of_ten_million_leaves() -> None:
    text = alias_bomb("http://127.0.0.1:1/chat")
    assert 700 < len(text.encode()) < 900
    assert text.count("*l") == 60 and 10**7 * len(LEAF) > 300 * MB  # 6 levels of 10 aliases over 10 leaves


@pytest.mark.e2e
def test_an_alias_bomb_cassette_fails_its_calls_without_memory_a_stall_or_a_cache_file(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """Attack: an 800-byte cassette of nested YAML aliases (10**7 leaves once expanded) in the cassette folder of a
    real `proxy serve`, replayed by the forward route, testConnection and a session turn. Each call fails at once
    with an error naming the file; the server's peak RSS grows by under 50 MB, /healthz stays quick, no parse-cache
    file is written and nothing reaches the upstream."""
    cassettes, data = tmp_path / "cassettes", tmp_path / "data"
    for name in ("connections/chat", "sessions/tc-1"):
        (cassettes / f"{name}.yaml").parent.mkdir(parents=True, exist_ok=True)
        (cassettes / f"{name}.yaml").write_text(alias_bomb(f"{upstream_url}/chat"))
    (tmp_path / "proxy.yaml").write_text(
        "settings: {allow_http: true}\n"
        "connections:\n"
        f"  - {{name: chat, product_id: p, type: CONVERSATION, url: '{upstream_url}/chat', auth_type: NONE,\n"
        '      input_template: \'{"message": "{{ input.user_message }}"}\', output_mapping: {output: $.reply}}\n'
        "versions:\n  - {name: v1, product_id: p, conversation: chat}\n"
    )
    args = ["--config", str(tmp_path / "proxy.yaml"), "--data-dir", str(data), "--cassettes", str(cassettes)]
    with proxy_serving(*args) as served, httpx.Client(base_url=served.url, timeout=60) as client:
        process, base = served.process, served.url
        before = memory_kb(process.pid)
        answers: dict[str, httpx.Response] = {}

        def calls() -> None:
            answers["forward"] = client.get("/forward/chat/chat")
            connection = client.get("/endpointConnections").json()[0]["id"]
            answers["test"] = client.post("/endpointConnections/testConnection", json={"id": connection})
            version = client.get("/versions").json()[0]["id"]
            session = client.post("/sessions", json={"versionId": version, "testCaseId": "tc-1"}).json()
            answers["turn"] = client.post(f"/sessions/{session['id']}/turns", json={"input": {"user_message": "x"}})

        caller = threading.Thread(target=calls)
        started = time.perf_counter()
        caller.start()
        polls = []
        with httpx.Client(base_url=base, timeout=60) as poller:
            while caller.is_alive() or not polls:  # bounded: the calls end (60 s client timeout at most)
                asked = time.perf_counter()
                assert poller.get("/healthz").status_code == 200
                polls.append(time.perf_counter() - asked)
        caller.join()
        took = time.perf_counter() - started
        after = memory_kb(process.pid)

    chat, session = cassettes / "connections" / "chat.yaml", cassettes / "sessions" / "tc-1.yaml"
    refused = "is refused: it uses a YAML alias"
    forward = answers["forward"]
    assert forward.status_code == 502 and forward.headers["x-proxy-cassette"] == "error"  # nothing replayed, nor live
    assert f"cassette {chat} {refused}" in forward.json()["message"]
    test = answers["test"].json()
    assert answers["test"].status_code == 200 and not test["success"]
    assert f"cassette {chat} {refused}" in test["error"]
    turn = answers["turn"].json()
    assert turn["status"] == "FAILED" and f"cassette {session} {refused}" in turn["error"]
    assert upstream.received == []
    grown_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
    assert grown_mb < 50, f"the server's peak RSS grew {grown_mb:.0f} MB"
    assert max(polls) < 0.5 and took < 2, f"slowest /healthz {max(polls):.2f}s; the calls took {took:.1f}s"
    cache = data / "cassette-cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_an_alias_bomb_is_refused_by_verify_list_and_show_in_one_line(tmp_path: Path) -> None:
    """Attack: the alias bomb among good cassettes. `verify` reports it as a problem (exit 1) in one line naming the
    file, `list` shows it unreadable with that line, `show` exits 1 with it; nothing expands it."""
    cassettes = tmp_path / "cassettes"
    written(cassettes / "sessions" / "good.yaml", 2)
    bomb = cassettes / "sessions" / "bomb.yaml"
    bomb.write_text(alias_bomb("http://127.0.0.1:1/chat"))
    line = f"cassette {bomb} is refused: it uses a YAML alias (*l0 at line 7)"
    code, output = invoke("cassettes", "verify", "--cassettes", str(cassettes), "--data-dir", str(tmp_path / "d"))
    problems = [p for p in output.splitlines() if p.startswith("PROBLEM")]
    assert code == 1 and len(problems) == 1 and problems[0].startswith(f"PROBLEM  sessions/bomb: {line}")
    assert output.strip().endswith("2 cassettes, 2 interactions, 1 problem")
    code, output = invoke("cassettes", "list", "--cassettes", str(cassettes))
    assert code == 0 and len(output.splitlines()) == 2
    assert f"UNREADABLE  sessions/bomb  ({line}" in output and "     2 interactions  sessions/good" in output
    code, output = invoke("cassettes", "show", "sessions/bomb", "--cassettes", str(cassettes))
    assert code == 1 and output.startswith(f"Error: {line}") and len(output.splitlines()) == 1


def test_drift_stops_at_an_alias_bomb_with_the_line_naming_it(tmp_path: Path) -> None:
    """Attack: the alias bomb in the folder `proxy cassettes drift` re-sends. It exits 1 with the one line naming the
    file (no traceback), having sent nothing and cached nothing."""
    cassettes, data = tmp_path / "cassettes", tmp_path / "data"
    bomb = cassettes / "sessions" / "bomb.yaml"
    bomb.parent.mkdir(parents=True)
    bomb.write_text(alias_bomb("http://127.0.0.1:1/chat"))
    code, output = invoke("cassettes", "drift", "--cassettes", str(cassettes), "--data-dir", str(data))
    assert code == 1 and output.startswith(f"Error: cassette {bomb} is refused: it uses a YAML alias (*l0 at line 7)")
    assert len(output.splitlines()) == 1 and list((data / "cassette-cache").glob("*")) == []


def test_any_alias_is_refused_even_a_single_harmless_one(tmp_path: Path) -> None:
    """Attack: the smallest use of an alias (one response header list shared by two interactions, as a vcrpy hook
    that sets one headers object on every response would write). No cassette written by this tool or by plain
    vcrpy has an alias, so any alias is refused rather than budgeted; the line it is on is named."""
    path = tmp_path / "one.yaml"
    interaction = (
        "- request: {method: GET, uri: 'http://127.0.0.1:1/chat', body: '', headers: {}}\n"
        "  response: {status: {code: 200, message: OK}, body: {string: ''}, headers: %s}\n"
    )
    path.write_text("version: 1\ninteractions:\n" + interaction % "&h {x: [a]}" + interaction % "*h")
    with pytest.raises(ValueError, match=rf"^cassette {path} is refused: it uses a YAML alias \(\*h at line 6\)"):
        load_interactions(path)
    path.write_text(path.read_text().replace("*h", "{x: [a]}"))  # the same cassette written out in full
    assert [i.response["headers"] for i in load_interactions(path)] == [{"x": ["a"]}] * 2


def test_a_parse_cache_entry_an_older_version_wrote_for_a_bomb_is_dropped_not_loaded(tmp_path: Path) -> None:
    """Attack: the data dir of a server that met the alias bomb before this fix holds its expanded parse-cache entry
    (hundreds of MB; 2 MB here). An entry out of all proportion to its YAML is not loaded: it is deleted and the
    cassette is refused."""
    path, cache = tmp_path / "c" / "bomb.yaml", ParseCache.in_data_dir(tmp_path / "data")
    path.parent.mkdir()
    path.write_text(alias_bomb("http://127.0.0.1:1/chat"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expanded = {"l0": [LEAF] * 60_000}
    item = {"request": {"method": "GET", "uri": "u", "body": "", "headers": {}}, "response": {}, "proxy": expanded}
    item["response"] = {"status": {"code": 200, "message": "OK"}, "headers": {}, "body": {"string": ""}}
    cache.folder.mkdir(parents=True)
    cache.entry(digest).write_text(json.dumps({"sha256": digest, "interactions": [item]}))
    assert cache.entry(digest).stat().st_size > 2 * MB
    with pytest.raises(ValueError, match="is refused: it uses a YAML alias"):
        load_interactions(path, cache)
    assert list(cache.folder.iterdir()) == []


# -- the size and interaction caps -----------------------------------------------------------------


def test_a_cassette_over_the_size_cap_is_refused_without_being_read(tmp_path: Path) -> None:
    """Attack: a cassette file one byte over CASSETTE_MAX_BYTES (a sparse file: it takes no disk). It is refused by
    its size, with a line naming the file and the cap, before it is read or parsed; nothing is cached."""
    path, cache = tmp_path / "c" / "huge.yaml", ParseCache.in_data_dir(tmp_path / "data")
    path.parent.mkdir()
    with open(path, "wb") as f:
        f.truncate(settings.CASSETTE_MAX_BYTES + 1)
    started = time.perf_counter()
    with pytest.raises(ValueError) as refused:
        load_interactions(path, cache)
    assert str(refused.value) == (
        f"cassette {path} is refused: it is larger than the {settings.CASSETTE_MAX_BYTES} byte cap "
        f"(CASSETTE_MAX_BYTES, {settings.CASSETTE_MAX_BYTES // MB} MiB); split it or record it again"
    )
    assert time.perf_counter() - started < 0.5 and not cache.folder.exists()


def test_a_cassette_at_the_size_cap_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    size = len(written(path, 3).encode())
    monkeypatch.setattr(cassette_module, "CASSETTE_MAX_BYTES", size)
    assert len(load_interactions(path)) == 3
    monkeypatch.setattr(cassette_module, "CASSETTE_MAX_BYTES", size - 1)
    with pytest.raises(ValueError, match=f"larger than the {size - 1} byte cap"):
        load_interactions(path)


def test_a_cassette_over_the_interaction_cap_is_refused_before_it_is_built_or_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a cassette with one interaction more than CASSETTE_MAX_INTERACTIONS (the cap lowered to 3 here, so
    the file stays small). It is refused while its YAML is read, before any interaction is built (the fifth
    interaction is not even valid YAML, and is never reached) and before anything is cached."""
    monkeypatch.setattr(cassette_module, "CASSETTE_MAX_INTERACTIONS", 3)
    path, cache = tmp_path / "c" / "many.yaml", ParseCache.in_data_dir(tmp_path / "data")
    written(path, 3)
    assert len(load_interactions(path, cache)) == 3  # at the cap: loaded (and cached)
    entries = set(cache.folder.iterdir())
    text = written(path, 4)
    path.write_text(text.replace("version: 1\n", "- {unclosed: [\n"))  # a fifth interaction, broken
    with pytest.raises(ValueError) as refused:
        load_interactions(path, cache)
    assert str(refused.value) == (
        f"cassette {path} is refused: it holds more than 3 interactions (CASSETTE_MAX_INTERACTIONS); "
        "split it or record it again"
    )
    assert set(cache.folder.iterdir()) == entries


# -- what writes cassettes never writes an alias -----------------------------------------------------


def test_the_writer_never_emits_an_alias_even_for_shared_objects(tmp_path: Path) -> None:
    """Interactions that share objects in memory (one headers dict, one interaction added twice) are written out in
    full: a cassette this tool writes never holds an alias, so it never writes one it would then refuse."""
    path = tmp_path / "shared.yaml"
    first, second = interaction(1), interaction(2)
    second.request["headers"] = first.request["headers"] = {"x-shared": ["1"]}
    cassette = Cassette("c", path, MatchRules())
    for item in (first, second, first):
        cassette.add(item)
    text = cassette.serialize()
    assert "&id" not in text and "*id" not in text
    path.write_text(text)
    assert [i.request["headers"] for i in load_interactions(path)] == [{"x-shared": ["1"]}] * 3


def test_a_cassette_plain_vcrpy_records_has_no_alias_and_loads(tmp_path: Path, upstream_url: str) -> None:
    """vcrpy (its httpx stub, same request twice) writes every request and response out in full: refusing every
    alias refuses no cassette plain vcrpy writes."""
    path = tmp_path / "vcr.yaml"
    with vcr.use_cassette(str(path)):
        for _ in range(2):
            httpx.get(f"{upstream_url}/chat")
            httpx.post(f"{upstream_url}/chat", json={"a": 1})
    loaded = load_interactions(path)
    assert [i.request["method"] for i in loaded] == ["GET", "POST", "GET", "POST"]
    assert "&id" not in path.read_text()
