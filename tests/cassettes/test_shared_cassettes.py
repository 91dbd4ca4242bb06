"""Several processes recording into one cassette file: each write is taken under the cassette's file lock and
merged with what is on disk, so no process overwrites what another recorded."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from vcr.serialize import deserialize
from vcr.serializers import yamlserializer

from proxy.cassettes.cassette import Cassette, Interaction, load_interactions, make_interaction
from proxy.cassettes.files import TEMP_MARKER, remove_temp_files, update_cassette
from proxy.cassettes.matching import MatchRules
from tests.servers import announced_url

pytestmark = pytest.mark.e2e

SERVERS = 4
CALLS_EACH = 50


def write_config(path: Path, upstream_url: str) -> None:
    path.write_text(
        "settings: {allow_http: true, record_mode: new_episodes}\n"
        "connections:\n"
        f"  - {{name: shared, product_id: p, type: CONVERSATION, url: '{upstream_url}/chat', auth_type: NONE,\n"
        '      input_template: \'{"message": "{{ input.user_message }}"}\', output_mapping: {output: $.reply}}\n'
    )


def start_server(tmp_path: Path, number: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--port",
            "0",
            "--config",
            str(tmp_path / "proxy.yaml"),
            "--data-dir",
            str(tmp_path / f"data-{number}"),
            "--cassettes",
            str(tmp_path / "cassettes"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        return process, announced_url(process)
    except RuntimeError:
        process.kill()
        raise


def record_calls(base: str, number: int) -> list[int]:
    with httpx.Client(base_url=base, timeout=30) as client:
        return [
            client.post("/forward/shared/chat", json={"message": f"server {number} call {call}"}).status_code
            for call in range(CALLS_EACH)
        ]


def test_four_servers_recording_into_one_cassette_lose_nothing(tmp_path: Path, upstream_url: str) -> None:
    """The attack on durability: four servers, each with its own data dir, record 50 distinct calls each into
    `connections/shared.yaml` and shut down at the same moment, so their final writes race. Every one of the
    200 interactions is in the file afterwards (the last writer used to win: 50 left), and plain vcrpy loads it."""
    write_config(tmp_path / "proxy.yaml", upstream_url)
    servers: list[tuple[subprocess.Popen[str], str]] = []
    try:
        for number in range(SERVERS):
            servers.append(start_server(tmp_path, number))
        with ThreadPoolExecutor(SERVERS) as pool:
            statuses = list(pool.map(record_calls, [base for _, base in servers], range(SERVERS)))
        assert all(status == 200 for each in statuses for status in each)
        for process, _ in servers:
            process.send_signal(signal.SIGTERM)  # all at once: their shutdown flushes race for the file
        for process, _ in servers:
            assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    finally:
        for process, _ in servers:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    cassette = tmp_path / "cassettes" / "connections" / "shared.yaml"
    requests, responses = deserialize(cassette.read_text(), yamlserializer)
    bodies = sorted(request.body.decode() for request in requests)
    expected = sorted(
        f'{{"message":"server {number} call {call}"}}' for number in range(SERVERS) for call in range(CALLS_EACH)
    )
    assert [body.replace(" ", "") for body in bodies] == [body.replace(" ", "") for body in expected]
    assert len(responses) == SERVERS * CALLS_EACH
    assert not list(cassette.parent.glob(f".*{TEMP_MARKER}*"))


def interaction(message: str) -> Interaction:
    body = f'{{"message": "{message}"}}'.encode()
    reply = b'{"reply": "ok"}'
    return make_interaction("POST", "http://127.0.0.1:9/chat", body, {}, 200, "OK", [], reply, {"id": message})


def test_a_cleared_cassette_drops_what_it_read_and_keeps_what_another_process_added(tmp_path: Path) -> None:
    """Record mode `all` clears a cassette on purpose: the interactions this process read are gone from the file,
    while one another process appended after the read is kept, not deleted on a guess."""
    path = tmp_path / "connections" / "c.yaml"
    update_cassette(path, lambda _: [interaction("old-1"), interaction("old-2")])
    cassette = Cassette("connections/c", path, MatchRules())
    for item in load_interactions(path):
        cassette.add(item)
    update_cassette(path, lambda on_disk: [*on_disk, interaction("another process")])
    cassette.clear()
    cassette.add(interaction("re-recorded"))
    update_cassette(path, lambda on_disk: cassette.merged_with(on_disk, list(cassette.interactions)))
    assert [i.proxy["id"] for i in load_interactions(path)] == ["re-recorded", "another process"]


def test_start_up_leaves_a_running_writer_s_temporary_file_alone(tmp_path: Path) -> None:
    """A server starting on a folder another process is writing into must not delete that writer's temporary
    file (its rename would fail); a crashed writer's file is removed."""
    folder = tmp_path / "connections"
    folder.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        running = folder / f".a.yaml{TEMP_MARKER}{sleeper.pid}"
        running.write_text("in progress")
        crashed = folder / f".b.yaml{TEMP_MARKER}999999999"
        crashed.write_text("left behind")
        assert remove_temp_files(tmp_path) == 1
        assert running.exists() and not crashed.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("planted", ["open to others", "a symlink"])
def test_a_lock_folder_someone_else_planted_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    """The attack: another local user creates `<temp>/proxy-cassette-locks-<uid>` first (open to everyone, or a
    symlink to a folder of theirs), to block every recording or reach the victim's lock files. Such a folder is
    passed over for `~/.cache/proxy/cassette-locks`, and the write goes through."""
    temp, home, theirs = tmp_path / "tmp", tmp_path / "home", tmp_path / "theirs"
    temp.mkdir()
    theirs.mkdir(mode=0o777)
    os.chmod(theirs, 0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("HOME", str(home))
    planted_folder = temp / f"proxy-cassette-locks-{os.getuid()}"
    if planted == "a symlink":
        planted_folder.symlink_to(theirs)
    else:
        planted_folder.mkdir()
        os.chmod(planted_folder, 0o777)
    update_cassette(tmp_path / "cassettes" / "c.yaml", lambda _: [interaction("one")])
    assert [i.proxy["id"] for i in load_interactions(tmp_path / "cassettes" / "c.yaml")] == ["one"]
    assert list(theirs.iterdir()) == [] and list(planted_folder.iterdir()) == []
    fallback = home / ".cache" / "proxy" / "cassette-locks"
    assert len(list(fallback.glob("*.lock"))) == 1 and stat.S_IMODE(fallback.stat().st_mode) == 0o700
