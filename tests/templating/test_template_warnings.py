"""A misspelt template variable still renders empty (the seeds' rule), but the diagnostic views say so: the
testConnection answer's `warnings`, `proxy check` and the inspector's preview name the variable and the keys
that do exist."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import yaml

from tests.conftest import RunningProxy, csrf_token
from tests.helpers import chat_config_data, proxy_cli
from tests.upstream import Upstream

MISSPELT = '{"message": "{{ input.user_mesage }}", "who": "{{ usr }}"}'
WARNINGS = [
    "{{ input.user_mesage }} is undefined and renders empty; input has: user_message",
    "{{ usr }} is undefined and renders empty; defined: context, dataset_id, galtea_session_id, "
    "inference_result_id, input, past_turns, session_id, test_case_id, test_id, trace_id",
]


def test_test_connection_warns_of_a_misspelt_variable_and_still_sends_it_empty(
    api: httpx.Client, upstream: Upstream, upstream_url: str
) -> None:
    """A typo in the template (`user_mesage`) went upstream as an empty string without a word."""
    body = {
        "name": "typo",
        "productId": "p",
        "type": "CONVERSATION",
        "url": f"{upstream_url}/chat",
        "authType": "NONE",
        "inputTemplate": MISSPELT,
        "outputMapping": {"output": "$.reply"},
    }
    tested = api.post("/endpointConnections/testConnection", json=body).json()
    assert tested["warnings"] == WARNINGS
    [sent] = upstream.requests_to("/chat")
    assert sent.json == {"message": "", "who": ""}  # the rule stays: undefined renders empty
    spelt = api.post("/endpointConnections/testConnection", json={**body, "inputTemplate": '{"m": "{{ input }}"}'})
    assert spelt.json()["warnings"] == []


def test_proxy_check_prints_the_warning(tmp_path: Path, upstream_url: str) -> None:
    config = tmp_path / "proxy.yaml"
    chat = chat_config_data(upstream_url, input_template=MISSPELT)
    config.write_text(yaml.safe_dump({"settings": {"allow_http": True}, **chat}))
    dirs = ["--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes")]
    checked = proxy_cli("check", "chat", "--config", str(config), "--dry-run", *dirs)
    assert checked.returncode == 0, checked.stderr
    assert [line.removeprefix("Warning: ") for line in checked.stdout.splitlines() if "Warning" in line] == WARNINGS


def test_the_inspector_preview_warns_of_a_misspelt_variable(api: httpx.Client, proxy_server: RunningProxy) -> None:
    created = api.post(
        "/endpointConnections",
        json={
            "name": "typo",
            "productId": "p",
            "type": "CONVERSATION",
            "url": "http://127.0.0.1:9/chat",
            "authType": "NONE",
            "inputTemplate": '{"m": "{{ input.user_message }}"}',
            "outputMapping": {"output": "$.reply"},
        },
    ).json()
    page = api.get(f"/inspector/connections/{created['id']}")
    form = {
        "csrf_token": csrf_token(page.text),
        "input_template": '{"m": "{{ input.user_mesage }}"}',
        "output_mapping": json.dumps({"output": "$.reply"}),
    }
    preview = api.post(f"/inspector/connections/{created['id']}/preview", data=form)
    assert preview.status_code == 200
    warning = "Warning: {{ input.user_mesage }} is undefined and renders empty; input has: user_message"
    assert warning in preview.text.replace("&#39;", "'"), preview.text
