"""Masked heads: an answer recorded with a masked header replays as recorded."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from proxy.settings import MASK
from tests.conftest import chat_connection, running_proxy
from tests.helpers import post
from tests.upstream import Reply, Upstream

pytestmark = pytest.mark.e2e

TOKEN = "Hd-T0ken-AbCdEfGh42"


def test_an_answer_recorded_with_a_masked_header_replays_instead_of_failing(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """Attack: the upstream sets a cookie (masked when recorded); a replay of that answer must hand back the
    masked header, not fail on text httpx reads as ASCII only."""
    upstream.script("/chat", Reply(json={"reply": "hi"}, headers={"Set-Cookie": "sid=abc"}))
    answers = []
    for run in range(2):  # the second run replays what the first recorded
        with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
            if run == 0:
                post(client, "/endpointConnections", chat_connection(upstream_url, name="cookie", authToken=TOKEN))
            (conn,) = client.get("/endpointConnections").json()
            answers.append(client.post("/endpointConnections/testConnection", json={"id": conn["id"]}).json())
    assert [a["exchange"]["cassette"] for a in answers] == ["recorded", "hit"], answers[1]["error"]
    recorded, replayed = (answer["exchange"]["response"]["headers"] for answer in answers)
    assert all(answer["success"] and answer["error"] is None for answer in answers), answers
    assert recorded["set-cookie"] == "sid=abc" and replayed["set-cookie"] == MASK  # the cassette keeps no cookie
    assert len(upstream.received) == 1
