"""A data dir written by the server before entities had tables of their own (one JSON document a row) is
migrated at start-up and goes on working. The data dir under tests/data/data-dir-before-tables was made by that
server (`proxy serve` at commit 1428041, driven through its HTTP API): an API-made connection with a bearer token
and a secret header to the in-process demo upstream, a version, four sessions with two turns each (one finished,
one deleted, one production session with a plain-text context), a logged inference result, and two connectors
(a service token; an OAuth client id and secret). `ids.json` holds the ids it gave them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
from galtea import Galtea

from proxy.config.file import Config
from proxy.config.settings import Settings
from proxy.server.runtime import known_secrets
from tests.conftest import running_proxy
from tests.helpers import ROOT

FIXTURE = ROOT / "tests" / "data" / "data-dir-before-tables"
SECRETS = (
    "oldToken-Bearer-Secret-4711",
    "oldHeader-Secret-Value-4712",
    "oldConnector-Token-4713",
    "oldClient-Secret-4715",
)


def database_bytes(data_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(data_dir.glob("proxy.db*")))


def test_a_data_dir_written_by_the_earlier_server_migrates_and_its_sessions_go_on(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(FIXTURE / "data", data_dir)
    ids: dict[str, Any] = json.loads((FIXTURE / "ids.json").read_text())
    sessions = ids["sessions"]
    for start in range(2):  # the second start finds the new layout and leaves it as it is
        with running_proxy(tmp_path, data_dir=data_dir) as server:
            galtea = Galtea(api_key="galtea-key", base_url=server.url, suppress_updatable_version_message=True)
            try:
                listed = {s.id for s in galtea.sessions.list(version_id=ids["version"])}
                assert listed == {sessions["tc"], sessions["custom"], sessions["prod"]}  # the deleted one stays gone
                assert galtea.sessions.get(sessions["prod"]).context_data == {"value": "plain old context"}
                assert galtea.sessions.get(sessions["custom"]).custom_id == "old-custom"
                assert [s.id for s in galtea.sessions.list(version_id=ids["version"], test_case_id="old-tc-1")] == [
                    sessions["tc"]
                ]
                assert galtea.endpoint_connections.get(ids["connection"]).name == "old-chat"
            finally:
                galtea.shutdown()
            with httpx.Client(base_url=server.url) as api:
                turns = api.get("/inferenceResults", params={"sessionIds[]": sessions["custom"]}).json()
                assert [(t["index"], t["input"], t["actualOutput"]) for t in turns] == [
                    (0, {"user_message": "custom hello"}, "You said: custom hello"),
                    (1, {"user_message": "custom again"}, "You said: custom again"),
                ]
                assert api.get(f"/inferenceResults/{ids['logged']}").json()["actualOutput"] == "kept"
                assert api.get(f"/sessions/{sessions['gone']}").status_code == 404
                connectors = api.get("/v1/connectors").json()["connectors"]
                assert sorted(c["id"] for c in connectors) == sorted(ids["connectors"])
                oauth = next(c for c in connectors if c["id"] == "old-oauth")
                assert oauth["oauth"]["client_id"] == "oldClient-Id-4714"
                if start == 1:
                    # The stored bearer token still opens the demo upstream (it answers 401 without one), the
                    # turn gets the next index and sees the past turns; a finished session still refuses turns.
                    turn = api.post(f"/sessions/{sessions['custom']}/turns", json={"input": {"user_message": "more"}})
                    assert turn.status_code == 201, turn.text
                    assert (turn.json()["index"], turn.json()["actualOutput"]) == (2, "You said: more")
                    assert api.post(f"/sessions/{sessions['tc']}/turns", json={"input": "x"}).status_code == 409
    stored = database_bytes(data_dir)
    assert not [secret for secret in SECRETS if secret.encode() in stored]
    redactor = known_secrets(Settings(data_dir=data_dir, cassettes_dir=tmp_path / "cassettes"), Config())
    assert all(redactor.contains_secret(secret) for secret in SECRETS)
