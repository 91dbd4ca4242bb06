"""The flow log: every upstream call listed, filtered, shown, exported (HAR, curl), live in a real Chromium."""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.config.settings import MASK
from proxy.flows.export import curl_command, curl_variables
from tests.conftest import TEST_PASSWORD, TEST_TOKEN, RunningProxy, chat_connection, csrf_token, running_proxy
from tests.helpers import launch, post, submit_form, wait_flows
from tests.upstream import Reply, Upstream

pytestmark = pytest.mark.e2e
HAR_ENTRY_FIELDS = {"startedDateTime", "time", "request", "response", "cache", "timings"}
HAR_REQUEST_FIELDS = {"method", "url", "httpVersion", "cookies", "headers", "queryString", "headersSize", "bodySize"}
HAR_RESPONSE_FIELDS = {
    "status",
    "statusText",
    "httpVersion",
    "cookies",
    "headers",
    "content",
    "redirectURL",
    "headersSize",
    "bodySize",
}


@pytest.fixture
def served(tmp_path: Path, upstream: Upstream, upstream_url: str) -> Iterator[tuple[RunningProxy, dict[str, str]]]:
    """A server with two connections (`chat`, BEARER; `other`) and a version over `chat`."""
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        chat = post(client, "/endpointConnections", chat_connection(upstream_url))
        other = post(client, "/endpointConnections", chat_connection(upstream_url, name="other", authType="NONE"))
        version = post(
            client, "/versions", {"productId": "prod-1", "name": "v1", "conversationEndpointConnectionId": chat["id"]}
        )
        yield proxy, {"chat": chat["id"], "other": other["id"], "version": version["id"]}


def run_session(client: httpx.Client, version: str, test_case: str, *inputs: str) -> str:
    session = post(client, "/sessions", {"versionId": version, "testCaseId": test_case})
    for text in inputs:
        client.post(f"/sessions/{session['id']}/turns", json={"input": {"user_message": text}})
    return str(session["id"])


def test_every_kind_of_call_is_a_flow_and_filters_select_them(
    served: tuple[RunningProxy, dict[str, str]], upstream: Upstream
) -> None:
    proxy, ids = served
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        assert client.post("/forward/other/chat", json={"message": "raw"}).status_code == 200
        client.post("/endpointConnections/testConnection", json={"id": ids["chat"]})
        session = run_session(client, ids["version"], "tc-a", "hello")
        entries = wait_flows(client, 3)
        kinds = {e["comment"].split(":")[1].split(" of ")[0].strip() for e in entries}
        assert kinds == {"forward", "testConnection", "turn"}
        chat_only = wait_flows(client, 2, connection="chat")
        assert {e["request"]["url"] for e in chat_only} == {f"{upstream_url_of(upstream, entries)}/chat"}
        assert len(chat_only) == 2 and all("other" not in e["comment"] for e in chat_only)
        assert [e["_cassette"] for e in wait_flows(client, 1, connection="other")] == ["recorded"]
        assert wait_flows(client, 0, status="5xx") == []
        assert len(wait_flows(client, 1, session=session)) == 1
        assert len(wait_flows(client, 1, q="raw")) == 1  # free text reaches the request body
        listed = client.get("/flows", params={"connection": "other"})
        assert listed.status_code == 200 and "/forward" not in listed.text
        assert listed.text.count('class="flow"') == 1 and ">forward<" in listed.text
        bad = client.get("/flows", params={"outcome": "maybe"})
        assert bad.status_code == 400 and "outcome" in bad.json()["message"]
        assert TEST_TOKEN not in client.get("/flows.har").text
        for missing in ("/flows/nope", "/flows/999999", "/flows/999999.har"):
            gone = client.get(missing)
            assert gone.status_code == 404 and "not found" in gone.json()["message"], missing


def upstream_url_of(upstream: Upstream, entries: list[dict[str, Any]]) -> str:
    url = next(e["request"]["url"] for e in entries if e["request"]["url"].endswith("/chat"))
    return str(url).removesuffix("/chat")


def test_the_log_keeps_the_newest_flows_only(tmp_path: Path, upstream: Upstream, upstream_url: str) -> None:
    with running_proxy(tmp_path, flow_log_size=3) as proxy, httpx.Client(base_url=proxy.url) as client:
        post(client, "/endpointConnections", chat_connection(upstream_url, name="other", authType="NONE"))
        for n in range(5):
            client.post("/forward/other/chat", json={"n": n})
        time.sleep(0.3)
        entries = wait_flows(client, 3)
        assert [e["request"]["postData"]["text"] for e in entries] == ['{"n":4}', '{"n":3}', '{"n":2}']
        (count,) = proxy.runtime.store.call(
            lambda: proxy.runtime.store.db.conn.execute("SELECT count(*) FROM flows").fetchone()
        )
        assert count == 3


def stored_flows(proxy: RunningProxy) -> int:
    """Flows committed to the database (not those still queued)."""
    store = proxy.runtime.store
    (count,) = store.call(lambda: store.db.conn.execute("SELECT count(*) FROM flows").fetchone())
    return int(count)


def test_a_flow_is_listed_as_soon_as_its_call_answers(tmp_path: Path, upstream_url: str) -> None:
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        proxy.runtime.flows.batch_delay_s = 60  # only a read can write the queue during this test
        post(client, "/endpointConnections", chat_connection(upstream_url, name="other", authType="NONE"))
        assert client.post("/forward/other/chat", json={"n": 1}).status_code == 200
        assert stored_flows(proxy) == 0  # the call answered without waiting on a commit of its flow
        page = client.get("/flows")
        assert page.status_code == 200 and "/chat" in page.text
        (entry,) = client.get("/flows.har").json()["log"]["entries"]
        assert entry["request"]["postData"]["text"] == '{"n":1}'
        assert client.get(f"/flows/{entry['_flowId']}").status_code == 200


def test_queued_flows_are_written_in_batches_and_on_a_clean_shutdown(tmp_path: Path, upstream_url: str) -> None:
    with running_proxy(tmp_path, flow_log_size=4) as proxy, httpx.Client(base_url=proxy.url) as client:
        flows = proxy.runtime.flows
        flows.batch_rows, flows.batch_delay_s = 3, 60
        post(client, "/endpointConnections", chat_connection(upstream_url, name="other", authType="NONE"))
        for n in range(5):
            client.post("/forward/other/chat", json={"n": n})
        deadline = time.monotonic() + 10
        while stored_flows(proxy) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stored_flows(proxy) == 3  # a full batch went at once; the other two wait for theirs
    with running_proxy(tmp_path, flow_log_size=4) as proxy, httpx.Client(base_url=proxy.url) as client:
        entries = client.get("/flows.har").json()["log"]["entries"]
        assert [e["request"]["postData"]["text"] for e in entries] == ['{"n":4}', '{"n":3}', '{"n":2}', '{"n":1}']
        for entry in entries:  # each row of a batch got its own id
            (one,) = client.get(f"/flows/{entry['_flowId']}.har").json()["log"]["entries"]
            assert one["request"]["postData"] == entry["request"]["postData"]


def test_har_export_is_har_1_2_and_holds_no_secret(served: tuple[RunningProxy, dict[str, str]]) -> None:
    proxy, ids = served
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        run_session(client, ids["version"], "tc-har", "hello")
        client.post("/forward/chat/chat", json={"message": "x"})
        wait_flows(client, 2)
        answer = client.get("/flows.har")
        one = client.get(f"/flows/{answer.json()['log']['entries'][0]['_flowId']}.har")
    assert answer.headers["content-disposition"] == 'attachment; filename="flows.har"'
    log = answer.json()["log"]
    assert log["version"] == "1.2" and log["creator"]["name"] == "proxy"
    for entry in log["entries"] + one.json()["log"]["entries"]:
        assert HAR_ENTRY_FIELDS <= set(entry)
        assert HAR_REQUEST_FIELDS <= set(entry["request"]) and HAR_RESPONSE_FIELDS <= set(entry["response"])
        assert {"size", "mimeType"} <= set(entry["response"]["content"])
        assert {"send", "wait", "receive"} <= set(entry["timings"])
        assert all({"name", "value"} == set(h) for h in entry["request"]["headers"] + entry["response"]["headers"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["startedDateTime"])
        auth = [h["value"] for h in entry["request"]["headers"] if h["name"].lower() == "authorization"]
        assert auth == ["••••••••"]
    assert TEST_TOKEN not in answer.text and TEST_TOKEN not in one.text


def curl_of(client: httpx.Client, flow_id: str, query: str = "") -> str:
    """The curl command a flow's page shows (`query`: the page's)."""
    page = client.get(f"/flows/{flow_id}{query}").text
    found = re.search(r'<pre id="curl-command">(.*?)</pre>', page, re.S)
    assert found and TEST_TOKEN not in page
    return html.unescape(found.group(1))


def run_bash(command: str, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", **variables}
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30, check=False)


def test_curl_export_reproduces_the_call(served: tuple[RunningProxy, dict[str, str]], upstream: Upstream) -> None:
    proxy, ids = served
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        run_session(client, ids["version"], "tc-curl", 'say "hi" & $HOME')
        (entry,) = wait_flows(client, 1, connection="chat")
        command = curl_of(client, entry["_flowId"])
    assert '"${CHAT_AUTH_TOKEN:?set CHAT_AUTH_TOKEN}"' in command.replace("Authorization: Bearer ", "")
    assert "••••••••" not in command
    sent = upstream.received[-1]
    upstream.received.clear()
    run = run_bash(command, CHAT_AUTH_TOKEN=TEST_TOKEN)
    assert run.returncode == 0, run.stderr
    (again,) = upstream.received
    assert (again.method, again.path, again.body) == (sent.method, sent.path, sent.body)
    assert again.json == {"message": 'say "hi" & $HOME'}
    assert again.headers["authorization"] == f"Bearer {TEST_TOKEN}"
    assert '"reply"' in run.stdout


def test_curl_export_stops_on_an_unset_credential_and_leaves_out_the_runs_ids(
    served: tuple[RunningProxy, dict[str, str]], upstream: Upstream
) -> None:
    """Attack on the copy: run with `$CHAT_AUTH_TOKEN` unset, the command sent `Authorization: Bearer ` with no
    token, and it sent the original call's `traceparent` and `X-Galtea-Inference-Id`, filing the copy under that
    run. Unset (or empty), the shell must stop it with a message naming the variable and nothing reach the upstream;
    the run's ids go only with `?per_run=1`; a bad `per_run` is a 4xx naming it."""
    proxy, ids = served
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        run_session(client, ids["version"], "tc-curl-ids", "hello")
        (entry,) = wait_flows(client, 1, connection="chat")
        command = curl_of(client, entry["_flowId"])
        with_ids = curl_of(client, entry["_flowId"], "?per_run=1")
        page = client.get(f"/flows/{entry['_flowId']}").text
        bad = client.get(f"/flows/{entry['_flowId']}", params={"per_run": "2"})
    sent = upstream.received[-1]
    upstream.received.clear()
    assert {"traceparent", "x-galtea-inference-id"} <= set(sent.headers)

    for unset in ({}, {"CHAT_AUTH_TOKEN": ""}):
        run = run_bash(command, **unset)
        assert run.returncode != 0 and "CHAT_AUTH_TOKEN: set CHAT_AUTH_TOKEN" in run.stderr, run
    assert upstream.received == []

    assert run_bash(command, CHAT_AUTH_TOKEN=TEST_TOKEN).returncode == 0
    (again,) = upstream.received
    assert again.headers["authorization"] == f"Bearer {TEST_TOKEN}"
    assert "traceparent" not in again.headers and "x-galtea-inference-id" not in again.headers
    upstream.received.clear()

    assert run_bash(with_ids, CHAT_AUTH_TOKEN=TEST_TOKEN).returncode == 0
    (again,) = upstream.received
    assert again.headers["traceparent"] == sent.headers["traceparent"]
    assert again.headers["x-galtea-inference-id"] == sent.headers["x-galtea-inference-id"]
    assert 400 <= bad.status_code < 500 and "per_run" in bad.text
    assert 'href="?per_run=1#curl"' in page


def test_curl_export_of_a_basic_credential_stops_before_encoding_an_unset_one(
    upstream: Upstream, upstream_url: str
) -> None:
    """Attack: with `$CHAT_PASSWORD` unset, `base64` in a subshell encoded `user:` and the command sent it. The
    command must stop, naming the variable, before anything is sent; set, the upstream gets the credential."""
    request = {"method": "POST", "url": f"{upstream_url}/chat", "headers": {"Authorization": f"Basic {MASK}"}}
    command = curl_command({"connection": "chat", "data": {"authType": "BASIC", "exchange": {"request": request}}})
    assert curl_variables(command) == ["CHAT_USERNAME", "CHAT_PASSWORD"]
    run = run_bash(command, CHAT_USERNAME="ann")
    assert run.returncode != 0 and "CHAT_PASSWORD: set CHAT_PASSWORD" in run.stderr
    assert upstream.received == []
    password = TEST_PASSWORD * 8  # longer than base64's 76-character lines
    assert run_bash(command, CHAT_USERNAME="ann", CHAT_PASSWORD=password).returncode == 0
    (sent,) = upstream.received
    assert sent.headers["authorization"] == "Basic " + base64.b64encode(f"ann:{password}".encode()).decode()


def test_a_forward_flow_says_what_the_forward_route_did_never_mapping_words(
    served: tuple[RunningProxy, dict[str, str]],
) -> None:
    """Wrong words: every forward flow's page said "Output mapping … not run: the reply ended the conversation",
    where the forward route maps nothing and nothing ended. Its page must name the recording it matched, the
    headers it added and those it masked, and carry no mapping section."""
    proxy, _ = served
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        for _ in range(2):  # recorded, then replayed
            mode = {"X-Proxy-Record-Mode": "new_episodes"}
            assert client.post("/forward/chat/chat", json={"message": "fwd"}, headers=mode).status_code == 200
        entries = wait_flows(client, 2, connection="chat")
        pages = {entry["_cassette"]: client.get(f"/flows/{entry['_flowId']}").text for entry in entries}
    assert set(pages) == {"recorded", "hit"}
    # A replayed answer (not a stream) shows the latency its recording measured, and says so.
    (hit,) = [entry for entry in entries if entry["_cassette"] == "hit"]
    said = f"recorded: {hit['_recordedTimeMs']:.1f} ms (replayed at once)"
    assert hit["time"] == hit["_recordedTimeMs"] and f'id="latency">{said}<' in pages["hit"]
    assert "recorded:" not in pages["recorded"]
    for outcome, page in pages.items():
        assert "Output mapping" not in page and 'id="mapping"' not in page, outcome
        assert "not run" not in page and "ended the conversation" not in page, outcome
        found = re.search(r'<table id="forwarded">(.*?)</table>', page, re.S)
        assert found, outcome
        rows = dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", html.unescape(found.group(1))))
        assert rows["Recording"].startswith({"recorded": "sent upstream and recorded", "hit": "replayed"}[outcome])
        assert "Authorization" in rows["Headers added"] and "X-Galtea-Inference-Id" in rows["Headers added"]
        assert rows["Masked in the log"].startswith("request: Authorization"), rows


def test_session_page_names_each_jsonpath_and_shows_an_error_once(
    served: tuple[RunningProxy, dict[str, str]], upstream: Upstream
) -> None:
    proxy, ids = served
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        good = run_session(client, ids["version"], "tc-good", "hello")
        upstream.script("/chat", Reply(status=500, text="upstream exploded"))
        bad = run_session(client, ids["version"], "tc-bad", "hello")
        good_page = client.get(f"/inspector/sessions/{good}").text
        bad_page = client.get(f"/inspector/sessions/{bad}").text
    assert re.search(r"<td>output</td><td><code>\$\.reply</code></td>", good_page)
    assert bad_page.count("External API responded with HTTP 500") == 1  # not in the session, turn and call
    assert 'failed at <a href="#turn-0">turn 0</a>' in bad_page


def test_flow_routes_refuse_other_sites(served: tuple[RunningProxy, dict[str, str]]) -> None:
    proxy, ids = served
    cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        page = client.get(f"/inspector/connections/{ids['chat']}").text
        token = csrf_token(page)
        for path in ("/flows", "/flows.har", "/flows/events", "/flows/1", "/flows/1.har"):
            assert client.get(path, headers=cross).status_code == 403, path
            assert client.get(path, headers={"Origin": "https://evil.example"}).status_code == 403, path
        # A link from another site to the list is a top-level navigation: the page opens.
        navigate = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
        assert client.get("/flows", headers=navigate).status_code == 200
        form = {"input_template": '{"message": "{{ input.user_message }}!"}', "output_mapping": '{"output": "$.x"}'}
        for name in ("preview", "save"):
            path = f"/inspector/connections/{ids['chat']}/{name}"
            assert client.post(path, data=form).status_code == 403
            assert client.post(path, data={**form, "csrf_token": token}, headers=cross).status_code == 403
            assert client.post(path, content='{"a": 1}', headers={"Content-Type": "text/plain"}).status_code == 415
        stored = client.get(f"/endpointConnections/{ids['chat']}").json()
        assert stored["outputMapping"] == {"output": "$.reply"}
        saved = client.post(f"/inspector/connections/{ids['chat']}/save", data={**form, "csrf_token": token})
        assert saved.status_code == 200 and 'id="saved"' in saved.text
        assert client.get(f"/endpointConnections/{ids['chat']}").json()["outputMapping"] == {"output": "$.x"}
        refused = client.post(
            f"/inspector/connections/{ids['chat']}/save",
            data={"input_template": "{{ nope", "output_mapping": "{}", "csrf_token": token},
        )
        assert refused.status_code == 422 and 'id="edit-problem"' in refused.text


def shot(page: Any, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("PROXY_SCREENSHOT_DIR", str(tmp_path)))
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flows_in_a_real_browser(
    served: tuple[RunningProxy, dict[str, str]], upstream: Upstream, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    proxy, ids = served
    assert shutil.which("curl")
    with sync_playwright() as p, httpx.Client(base_url=proxy.url, timeout=30) as client:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{proxy.url}/flows")
        page.wait_for_selector("text=· live")
        page.evaluate("window.notReloaded = true")

        # Live: a forward call and a session, run while the page is open, appear without a reload.
        def calls() -> None:
            client.post("/forward/other/chat", json={"message": "streamed?"})
            run_session(client, ids["version"], "tc-live", "hello")

        worker = threading.Thread(target=calls)
        worker.start()
        page.wait_for_selector("tr.flow:has-text('forward')")
        page.wait_for_selector("tr.flow:has-text('turn')")
        worker.join()
        assert page.evaluate("window.notReloaded") is True
        assert page.locator("tr.flow").count() == 2
        shot(page, tmp_path, "flows")

        # A miss: a new session of the same test case, with another input, replays the cassette and misses.
        run_session(client, ids["version"], "tc-live", "bonjour")
        wait_flows(client, 3)

        # Filtering is a form of query parameters: by connection, then by outcome.
        page.goto(f"{proxy.url}/flows")
        page.select_option("select[name=connection]", "chat")
        page.click("button:has-text('Filter')")
        page.wait_for_url("**/flows?connection=chat**")
        assert page.locator("tr.flow").count() == 2
        assert page.locator("tr.flow:has-text('forward')").count() == 0
        page.select_option("select[name=outcome]", "miss")
        page.click("button:has-text('Filter')")
        page.wait_for_url("**outcome=miss**")
        assert page.locator("tr.flow").count() == 1
        shot(page, tmp_path, "flows-filtered")

        # The miss's page names the differing JSONPath beside the nearest recording.
        page.click("tr.flow a")
        page.wait_for_selector("#near-miss")
        assert page.inner_text("#differing-path") == "$.message"
        assert '"hello" recorded, "bonjour" now' in page.inner_text("#difference")
        assert TEST_TOKEN not in page.content()
        shot(page, tmp_path, "flow-miss")

        page.goto(f"{proxy.url}/flows?outcome=recorded&connection=chat")
        page.click("tr.flow a")
        page.wait_for_selector("#curl-command")
        assert "${CHAT_AUTH_TOKEN:?set CHAT_AUTH_TOKEN}" in page.inner_text("#curl-command")
        assert page.inner_text("#mapping").count("$.reply") == 1
        shot(page, tmp_path, "flow")

        # The mapping editor maps the last reply again with a changed JSONPath, sending nothing upstream.
        before = len(upstream.received)
        page.goto(f"{proxy.url}/inspector/connections/{ids['chat']}")
        mapping = '{"output": "$.path", "echoed": "$.reply"}'
        preview = submit_form(
            page, "textarea[name=output_mapping]", mapping, "button:has-text('Preview')", "#preview-mapping"
        )
        assert "$.path" in preview and "/chat" in preview and "echo" in preview
        assert "Hello! This is a test message." in page.inner_text("#preview")
        assert len(upstream.received) == before
        shot(page, tmp_path, "connection")

        page.goto(f"{proxy.url}/inspector/sessions/{wait_session(client)}")
        page.wait_for_selector("#turn-0")
        shot(page, tmp_path, "session")
        browser.close()
    deadline = time.monotonic() + 10
    while proxy.runtime.flows.viewers and time.monotonic() < deadline:  # a closed page ends its event stream
        time.sleep(0.05)
    assert proxy.runtime.flows.viewers == 0


def wait_session(client: httpx.Client) -> str:
    sessions = client.get("/sessions").json()
    return str(sessions[0]["id"] if isinstance(sessions, list) else sessions["data"][0]["id"])
