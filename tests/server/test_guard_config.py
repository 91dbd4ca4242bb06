"""The guard's allowed Host names and CORS origins given in the config file, against a real `proxy serve`: the
file's lists count as their flags do, and a flag given replaces the file's list."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.servers import proxy_serving

pytestmark = pytest.mark.e2e
PAGE = "http://localhost:5173"  # the web app the config file lists
OTHER = "http://localhost:3000"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(f"settings:\n  cors_origins: ['{PAGE}']\n  allowed_hosts: [proxy.internal]\n")
    return path


def test_the_files_origins_and_hosts_are_let_through(tmp_path: Path) -> None:
    args = ("--config", str(config_file(tmp_path)), "--data-dir", str(tmp_path / "data"))
    with proxy_serving(*args) as served, httpx.Client(base_url=served.url) as client:
        preflight = client.options("/endpointConnections", headers={"Origin": PAGE, **PREFLIGHT})
        assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == PAGE
        listed = client.get("/endpointConnections", headers={"Origin": PAGE, "Sec-Fetch-Site": "same-site"})
        assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == PAGE
        other = client.get("/endpointConnections", headers={"Origin": OTHER})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
        assert f"--cors-origin {OTHER}" in other.json()["message"]
        named = client.get("/endpointConnections", headers={"Host": f"proxy.internal:{served.port}"})
        assert named.status_code == 200
        unnamed = client.get("/endpointConnections", headers={"Host": f"other.internal:{served.port}"})
        assert unnamed.status_code == 403


def test_a_flag_replaces_the_files_list(tmp_path: Path) -> None:
    args = ("--config", str(config_file(tmp_path)), "--data-dir", str(tmp_path / "data"), "--cors-origin", OTHER)
    with proxy_serving(*args) as served, httpx.Client(base_url=served.url) as client:
        flagged = client.options("/endpointConnections", headers={"Origin": OTHER, **PREFLIGHT})
        assert flagged.status_code == 204 and flagged.headers["access-control-allow-origin"] == OTHER
        from_file = client.options("/endpointConnections", headers={"Origin": PAGE, **PREFLIGHT})
        assert from_file.status_code == 403 and "access-control-allow-origin" not in from_file.headers
        # The file's other list still counts: only the flag given replaces its own setting.
        named = client.get("/endpointConnections", headers={"Host": f"proxy.internal:{served.port}"})
        assert named.status_code == 200
