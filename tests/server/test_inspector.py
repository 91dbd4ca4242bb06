"""The inspector: server-rendered pages, checked as HTML and in a real headless Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_TOKEN, RunningProxy, chat_connection, csrf_token, running_proxy
from tests.helpers import launch, post, submit_form, thread_version
from tests.upstream import Threads, Upstream

pytestmark = pytest.mark.e2e


@pytest.fixture
def recorded(tmp_path: Path, upstream: Upstream, upstream_url: str) -> Iterator[tuple[RunningProxy, dict[str, str]]]:
    """A server holding one finished thread-style session of two turns."""
    Threads(upstream)
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        version_id = thread_version(client, upstream_url)
        conv = client.get("/endpointConnections", params={"names[]": "conv"}).json()[0]
        client.patch(f"/endpointConnections/{conv['id']}", json={"authType": "BEARER", "authToken": TEST_TOKEN})
        session = post(client, "/sessions", {"versionId": version_id, "testCaseId": "tc-inspect"})
        for text in ("Where is my parcel?", "Thanks!"):
            post(client, f"/sessions/{session['id']}/turns", {"input": {"user_message": text}})
        client.patch(f"/sessions/{session['id']}/finish", json={})
        yield proxy, {"session": session["id"], "conv": conv["id"]}


def test_overview_and_session_pages_show_what_happened(recorded: tuple[RunningProxy, dict[str, str]]) -> None:
    proxy, ids = recorded
    with httpx.Client(base_url=proxy.url) as client:
        overview = client.get("/")
        session = client.get(f"/inspector/sessions/{ids['session']}")
    assert overview.status_code == 200 and overview.headers["content-type"].startswith("text/html")
    for text in (
        "init",
        "conv",
        "fin",
        "v-threads",
        f'href="/inspector/sessions/{ids["session"]}"',
        "tc-inspect",
        "COMPLETED",
    ):
        assert text in overview.text
    page = session.text
    for text in (
        "Turn 0",
        "Turn 1",
        "INITIALIZATION",
        "FINALIZATION",
        "[th_1#1] Where is my parcel?",
        "Authorization: ••••••••",
        "/threads/th_1/messages",
        "recorded",
        "sessions/tc-inspect",
        "retrieval_context",
        "doc-th_1",
    ):
        assert text in page, text
    assert TEST_TOKEN not in page and TEST_TOKEN not in overview.text


def test_connection_form_shows_the_check_explanation(recorded: tuple[RunningProxy, dict[str, str]]) -> None:
    proxy, ids = recorded
    with httpx.Client(base_url=proxy.url) as client:
        form = client.get(f"/inspector/connections/{ids['conv']}")
        assert form.status_code == 200 and "<form" in form.text and "hasAuthToken" in form.text
        token = csrf_token(form.text)
        dry = client.post(
            f"/inspector/connections/{ids['conv']}/test",
            data={"input": '{"user_message": "<b>hi</b>"}', "context": "", "dry_run": "1", "csrf_token": token},
        )
        bad = client.post(
            f"/inspector/connections/{ids['conv']}/test", data={"input": "{nope", "context": "", "csrf_token": token}
        )
    assert "Dry run: nothing was sent." in dry.text
    assert "&lt;b&gt;hi&lt;/b&gt;" in dry.text and "<b>hi</b>" not in dry.text  # escaped, never injected
    assert bad.status_code == 400 and "not valid JSON" in bad.text
    with httpx.Client(base_url=proxy.url) as client:
        assert client.get("/inspector/sessions/nope").status_code == 404


def test_inspector_in_a_real_browser(recorded: tuple[RunningProxy, dict[str, str]], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    proxy, ids = recorded
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{proxy.url}/")
        page.click(f"text={ids['session']}")
        page.wait_for_selector("#turn-1")
        assert page.locator("#turn-0").inner_text().count("Where is my parcel?") >= 1
        assert page.is_visible("text=[th_1#2] Thanks!")
        shot = Path(os.environ.get("PROXY_SCREENSHOT_DIR", str(tmp_path))) / "session.png"
        page.screenshot(path=str(shot), full_page=True)
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a real rendering, not a blank page
        height = int.from_bytes(png[20:24], "big")
        assert height > 900  # the whole session, below the fold included

        page.goto(f"{proxy.url}/inspector/connections/{ids['conv']}")
        explanation = submit_form(
            page, "textarea[name=input]", '{"user_message": "from the browser"}', "button[type=submit]", "#explanation"
        )
        assert "Request  POST" in explanation and "from the browser" in explanation and "Result:" in explanation
        browser.close()


def test_connection_page_shows_booleans_as_json_in_a_real_browser(
    proxy_server: RunningProxy, upstream_url: str
) -> None:
    """A connection's booleans read on its page as the API sends them (`true`/`false`), not as Python's
    `True`/`False`, which match nothing a user can paste back into the API."""
    from playwright.sync_api import sync_playwright

    with httpx.Client(base_url=proxy_server.url) as client:
        conn = post(client, "/endpointConnections", chat_connection(upstream_url, retryEnabled=True, traceparent=False))
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        page.goto(f"{proxy_server.url}/inspector/connections/{conn['id']}")
        cells = {
            row.locator(":scope > th").inner_text(): row.locator(":scope > td").inner_text()
            for row in page.locator("#fields > tbody > tr").all()
        }
        browser.close()
    shown = {k: cells[k] for k in ("retryEnabled", "traceparent", "acknowledgedInsecureHttp", "hasAuthToken")}
    assert shown == {
        "retryEnabled": "true",
        "traceparent": "false",
        "acknowledgedInsecureHttp": "true",
        "hasAuthToken": "true",
    }
    assert not {"True", "False"} & set(cells.values()), cells


def test_login_in_a_real_browser(tmp_path: Path, upstream: Upstream, upstream_url: str) -> None:
    """With --api-key: the login form, its cookie (out of the page's reach), then the test form works."""
    from playwright.sync_api import sync_playwright

    key = "key-Br0wser-0123456789"
    with running_proxy(tmp_path, api_key=key) as proxy, sync_playwright() as p:
        created = httpx.post(
            f"{proxy.url}/endpointConnections",
            json=chat_connection(upstream_url),
            headers={"Authorization": f"Bearer {key}"},
        )
        conn_id = created.json()["id"]
        browser = launch(p)
        page = browser.new_page()
        page.goto(f"{proxy.url}/inspector/connections/{conn_id}")
        page.fill("input[name=api_key]", "not-the-key")
        page.click("button[type=submit]")
        assert page.inner_text("#login-error") == "Wrong API key."
        page.fill("input[name=api_key]", key)
        page.click("button[type=submit]")
        page.wait_for_selector("textarea[name=input]")  # back on the page first asked for
        assert page.url == f"{proxy.url}/inspector/connections/{conn_id}"
        (cookie,) = page.context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and key not in cookie["value"]
        assert page.evaluate("document.cookie") == ""
        submitted = '{"user_message": "logged in"}'
        button = "form:not(.logout) button[type=submit]"
        assert "logged in" in submit_form(page, "textarea[name=input]", submitted, button, "#explanation")
        assert [r.json for r in upstream.requests_to("/chat")] == [{"message": "logged in"}]
        page.click("text=Log out")
        page.wait_for_selector("input[name=api_key]")
        assert page.context.cookies() == []
        browser.close()
