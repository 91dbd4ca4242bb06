"""kill -9 a recording server: every acknowledged exchange survives in the cassettes, which all parse."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from vcr.serialize import deserialize
from vcr.serializers import yamlserializer

from proxy.cassettes.files import TEMP_MARKER
from tests.servers import ServedProcess, proxy_serving

pytestmark = pytest.mark.e2e


def write_config(path: Path, upstream_url: str) -> None:
    path.write_text(
        "settings: {allow_http: true}\n"
        "connections:\n"
        f"  - {{name: chat, product_id: p, type: CONVERSATION, url: '{upstream_url}/chat', auth_type: NONE,\n"
        '      input_template: \'{"message": "{{ input.user_message }}"}\', output_mapping: {output: $.reply}}\n'
        "versions:\n  - {name: v1, product_id: p, conversation: chat}\n"
    )


def server(tmp_path: Path, cassettes: str = "cassettes") -> AbstractContextManager[ServedProcess]:
    dirs = ["--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / cassettes)]
    return proxy_serving("--config", str(tmp_path / "proxy.yaml"), *dirs)


def cassette_bodies(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in sorted((root / "sessions").glob("*.yaml")):
        requests, _responses = deserialize(path.read_text(), yamlserializer)  # vcrpy's own loader: it parses
        found[path.stem] = [r.body.decode() for r in requests]
    return found


def test_kill_minus_nine_loses_no_acknowledged_exchange(tmp_path: Path, upstream_url: str) -> None:
    write_config(tmp_path / "proxy.yaml", upstream_url)
    acknowledged: dict[str, list[str]] = {}
    for round_number in range(3):
        with server(tmp_path) as served:
            process, base = served.process, served.url
            version = httpx.get(f"{base}/versions").json()[0]["id"]
            for case in range(2):
                key = f"r{round_number}-c{case}"
                session = httpx.post(f"{base}/sessions", json={"versionId": version, "testCaseId": key}).json()
                for turn in range(3):
                    message = f"{key}-t{turn}"
                    answer = httpx.post(
                        f"{base}/sessions/{session['id']}/turns", json={"input": {"user_message": message}}
                    )
                    assert answer.status_code == 201 and answer.json()["exchange"]["cassette"] == "recorded"
                    acknowledged.setdefault(key, []).append(f'{{"message": "{message}"}}')
            os.kill(process.pid, signal.SIGKILL)  # no shutdown, no flush: only the journal has them
            process.wait(timeout=10)
            if round_number == 0:
                assert not list((tmp_path / "cassettes").rglob("r0-*.yaml"))  # so recovery is what brings them back
    with server(tmp_path):
        pass  # start-up folds the journal into the cassettes
    assert cassette_bodies(tmp_path / "cassettes") == acknowledged
    assert not list((tmp_path / "cassettes").rglob(f"*{TEMP_MARKER}*"))


def test_kill_minus_nine_during_fifty_concurrent_recording_sessions_repeatedly(
    tmp_path: Path, upstream_url: str
) -> None:
    import asyncio

    write_config(tmp_path / "proxy.yaml", upstream_url)
    acknowledged: dict[str, list[str]] = {}

    async def converse(client: httpx.AsyncClient, version: str, key: str) -> None:
        session = (await client.post("/sessions", json={"versionId": version, "testCaseId": key})).json()
        for turn in range(1000):
            message = f"{key}-t{turn}"
            answer = await client.post(f"/sessions/{session['id']}/turns", json={"input": {"user_message": message}})
            if answer.status_code == 201:
                acknowledged.setdefault(key, []).append(f'{{"message": "{message}"}}')

    async def traffic_until_killed(process: subprocess.Popen[str], base: str, round_number: int) -> None:
        version = httpx.get(f"{base}/versions").json()[0]["id"]
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            tasks = [asyncio.create_task(converse(client, version, f"k{round_number}-{n}")) for n in range(50)]
            await asyncio.sleep(1.5)
            os.kill(process.pid, signal.SIGKILL)  # mid-traffic: requests are in flight
            await asyncio.gather(*tasks, return_exceptions=True)

    for round_number in range(3):
        with server(tmp_path) as served:
            asyncio.run(traffic_until_killed(served.process, served.url, round_number))
            served.process.wait(timeout=10)
    with server(tmp_path):
        pass
    found = cassette_bodies(tmp_path / "cassettes")
    assert sum(len(v) for v in acknowledged.values()) >= 100  # the kills really hit a busy server
    for key, bodies in acknowledged.items():
        recorded = found[key]
        # Every acknowledged exchange is there, in order; at most the one in flight at the kill follows it.
        assert recorded[: len(bodies)] == bodies and len(recorded) - len(bodies) <= 1, key
    assert not list((tmp_path / "cassettes").rglob(f"*{TEMP_MARKER}*"))


def test_an_unsaved_recording_is_recovered_into_its_own_cassettes_folder_only(
    tmp_path: Path, upstream_url: str
) -> None:
    """Two cassettes folders, one data dir: what A recorded before a kill -9 goes to A, never to B."""
    write_config(tmp_path / "proxy.yaml", upstream_url)
    with server(tmp_path, cassettes="A") as served:
        process, base = served.process, served.url
        version = httpx.get(f"{base}/versions").json()[0]["id"]
        session = httpx.post(f"{base}/sessions", json={"versionId": version, "testCaseId": "tc-a"}).json()
        answer = httpx.post(f"{base}/sessions/{session['id']}/turns", json={"input": {"user_message": "only A"}})
        assert answer.status_code == 201 and answer.json()["exchange"]["cassette"] == "recorded"
        os.kill(process.pid, signal.SIGKILL)  # before any flush: only the journal has it
        process.wait(timeout=10)
    assert not (tmp_path / "A" / "sessions" / "tc-a.yaml").exists()
    with server(tmp_path, cassettes="B"):
        pass
    assert not list((tmp_path / "B").rglob("*.yaml"))  # B gets nothing
    with server(tmp_path, cassettes="A"):
        pass
    assert cassette_bodies(tmp_path / "A") == {"tc-a": ['{"message": "only A"}']}
