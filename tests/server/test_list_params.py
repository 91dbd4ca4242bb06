"""List parameters from a hostile or careless client: the answer is the right rows or a 4xx naming the field,
never a 500, whatever the page bounds, ids or sort say."""

from __future__ import annotations

import httpx
import pytest
from galtea import Galtea

from tests.conftest import chat_connection
from tests.helpers import post
from tests.upstream import Upstream

LISTS = ("/sessions", "/inferenceResults")


@pytest.fixture
def made(api: httpx.Client, upstream: Upstream, upstream_url: str) -> dict[str, str]:
    """A version, a session of it with one turn: their ids."""
    conn = post(api, "/endpointConnections", chat_connection(upstream_url))
    version = post(api, "/versions", {"productId": "prod-1", "conversationEndpointConnectionId": conn["id"]})["id"]
    session = post(api, "/sessions", {"versionId": version, "testCaseId": "tc"})["id"]
    turn = post(api, f"/sessions/{session}/turns", {"input": {"user_message": "hi"}})["id"]
    return {"version": version, "session": session, "turn": turn}


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("name", ["offset", "limit"])
@pytest.mark.parametrize("value", [2**63, 10**30])
def test_a_page_bound_past_what_sql_takes_is_refused_naming_it(
    api: httpx.Client, made: dict[str, str], path: str, name: str, value: int
) -> None:
    answer = api.get(path, params={name: str(value)})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == name


@pytest.mark.parametrize("path", LISTS)
def test_the_largest_page_bounds_sql_takes_answer(api: httpx.Client, made: dict[str, str], path: str) -> None:
    assert len(api.get(path, params={"limit": str(2**63 - 1)}).json()) == 1
    assert api.get(path, params={"offset": str(2**63 - 1)}).json() == []


def test_the_sdk_pages_with_a_huge_offset_without_a_server_error(galtea: Galtea, made: dict[str, str]) -> None:
    assert galtea.sessions.list(version_id=made["version"], offset=2**63 - 1) == []
    assert [s.id for s in galtea.sessions.list(version_id=made["version"], limit=2**40)] == [made["session"]]


def test_injection_and_odd_values_are_values(api: httpx.Client, made: dict[str, str]) -> None:
    rows = api.get("/sessions", params={"sort[]": ["createdAt; DROP TABLE sessions", "asc"]})
    assert [s["id"] for s in rows.json()] == [made["session"]]
    assert api.get("/sessions", params={"customIds[]": "' OR 1=1 --"}).json() == []
    assert api.get("/sessions", params={"versionIds[]": f"{made['version']}\x00"}).json() == []
    nul = api.get("/sessions", params={"ids[]": "a\x00b"})
    assert nul.status_code == 404 and "a\x00b" in nul.json()["message"]
    assert api.get("/inferenceResults", params={"sessionIds[]": "x' OR '1'='1"}).json() == []
    bad_sort = api.get("/inferenceResults", params={"sort[]": ["createdAt", "asc; --"]})
    assert bad_sort.status_code == 422 and bad_sort.json()["errors"][0]["field"] == "sort"


def test_more_ids_than_old_sqlite_took_variables_for(api: httpx.Client, made: dict[str, str]) -> None:
    sessions = api.get("/sessions", params={"ids[]": [made["session"]] * 1100, "versionIds[]": ["v"] * 1100})
    assert sessions.json() == []  # the right rows: the session is of none of those versions
    turns = api.get("/inferenceResults", params={"ids[]": [made["turn"]] * 1100, "sessionIds[]": [made["session"]]})
    assert [t["id"] for t in turns.json()] == [made["turn"]]
