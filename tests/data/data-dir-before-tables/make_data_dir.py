"""How data-dir-before-tables was made: the server as it was before entities had tables of their own.

    git worktree add --detach /tmp/before 1428041
    .venv/bin/python tests/data/data-dir-before-tables/make_data_dir.py /tmp/before /tmp/out

runs that commit's `proxy serve` (on port 48711), drives it through its HTTP API, stops it cleanly and keeps
`proxy.db` (checkpointed) and `secret.key` in /tmp/out/data, with the ids it gave in /tmp/out/ids.json.
"""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.upstream import Reply, serve_upstream

BEFORE, OUT = sys.argv[1], Path(sys.argv[2])
shutil.rmtree(OUT, ignore_errors=True)
OUT.mkdir(parents=True)
data, cas = OUT / "data", OUT / "cassettes"
shutil.rmtree(cas, ignore_errors=True)
cfg = OUT / "proxy.yaml"
cfg.write_text("settings: {record_mode: new_episodes, allow_http: true}\n")
port = 48711
env = {**os.environ, "PYTHONPATH": BEFORE}
proc = subprocess.Popen(
    [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(cfg),
        "--data-dir",
        str(data),
        "--cassettes",
        str(cas),
        "--port",
        str(port),
    ],
    env=env,
)
base = f"http://127.0.0.1:{port}"
for _ in range(200):
    try:
        if httpx.get(base + "/healthz").status_code == 200:
            break
    except httpx.HTTPError:
        time.sleep(0.1)
api = httpx.Client(base_url=base, timeout=30)


def post(path, body):
    r = api.post(path, json=body)
    assert r.status_code in (200, 201), (path, r.status_code, r.text)
    return r.json()


conn = post(
    "/endpointConnections",
    {
        "productId": "old-product",
        "name": "old-chat",
        "type": "CONVERSATION",
        "url": "http://demo.local/chat",
        "authType": "BEARER",
        "authToken": "oldToken-Bearer-Secret-4711",
        "headers": {"X-Old-Secret": "oldHeader-Secret-Value-4712"},
        "inputTemplate": '{"message": "{{ input.user_message }}"}',
        "outputMapping": {"output": "$.response", "retrieval_context": "$.sources"},
    },
)
version = post(
    "/versions", {"productId": "old-product", "name": "old-v1", "conversationEndpointConnectionId": conn["id"]}
)
ids = {"connection": conn["id"], "version": version["id"], "sessions": {}}
for name, extra in (
    ("tc", {"testCaseId": "old-tc-1"}),
    ("custom", {"testCaseId": "old-tc-2", "customId": "old-custom"}),
    ("prod", {"isProduction": True, "context": "plain old context"}),
    ("gone", {"testCaseId": "old-tc-3"}),
):
    s = post("/sessions", {"versionId": version["id"], **extra})
    ids["sessions"][name] = s["id"]
    for text in ("hello", "again"):
        post(f"/sessions/{s['id']}/turns", {"input": {"user_message": f"{name} {text}"}})
api.patch(f"/sessions/{ids['sessions']['tc']}/finish", json={}).raise_for_status()
assert api.delete(f"/sessions/{ids['sessions']['gone']}").status_code in (200, 204)
logged = post(
    "/inferenceResults", {"sessionId": ids["sessions"]["prod"], "input": "logged by hand", "actualOutput": "kept"}
)
ids["logged"] = logged["id"]
with serve_upstream() as (upstream, upstream_url):
    upstream.handle("/search", lambda received: Reply(json={"results": [{"id": "d1", "text": "old"}]}))
    served = post(
        "/v1/connectors",
        {
            "name": "old-kb",
            "url": f"{upstream_url}/search",
            "service_auth": {"type": "bearer", "token": "oldConnector-Token-4713"},
        },
    )
    oauth = post(
        "/v1/connectors",
        {
            "name": "old-oauth",
            "url": f"{upstream_url}/search",
            "oauth": {
                "client_id": "oldClient-Id-4714",
                "client_secret": "oldClient-Secret-4715",
                "authorize_url": "https://auth.example/authorize",
                "token_url": "https://auth.example/token",
            },
        },
    )
ids["connectors"] = [c.get("connector", c)["id"] for c in (served, oauth)]
proc.send_signal(signal.SIGINT)
proc.wait(30)
db = sqlite3.connect(data / "proxy.db")
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.execute("VACUUM")
db.close()
for leftover in data.glob("proxy.db-*"):
    leftover.unlink()
keep = {"proxy.db", "secret.key"}
for path in data.iterdir():
    if path.name not in keep:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
(OUT / "ids.json").write_text(json.dumps(ids, indent=2) + "\n")
print(sorted(p.name for p in data.iterdir()), ids)
