"""Cassette age (`cassette_max_age` with `on_expired`) and use (`proxy cassettes prune`), against a real
server, upstream and data dir."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from proxy.cassettes.usage import read_cassette_usage
from proxy.cli.main import main
from proxy.config.file import load_config
from proxy.errors import ConfigError
from tests.conftest import running_proxy
from tests.helpers import chat_config, run_session
from tests.upstream import Upstream

pytestmark = pytest.mark.e2e
RECORDED_AT = re.compile(r"recorded_at: '[^']+'")


def record(tmp_path: Path, upstream_url: str, cassettes: Path, test_case: str = "tc-old") -> list[dict[str, Any]]:
    with running_proxy(tmp_path / "recording", chat_config(upstream_url), cassettes_dir=cassettes) as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            return run_session(client, ["hello"], testCaseId=test_case)


def age(path: Path, days: float) -> None:
    """Make every interaction of a cassette look recorded `days` ago."""
    when = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    text, count = RECORDED_AT.subn(f"recorded_at: '{when}'", path.read_text())
    assert count
    path.write_text(text)


@pytest.fixture
def old_cassettes(tmp_path: Path, upstream: Upstream, upstream_url: str) -> Path:
    cassettes = tmp_path / "cassettes"
    assert record(tmp_path, upstream_url, cassettes)[0]["exchange"]["cassette"] == "recorded"
    age(cassettes / "sessions" / "tc-old.yaml", 45)
    upstream.received.clear()
    return cassettes


def replay(tmp_path: Path, upstream_url: str, cassettes: Path, **settings: Any) -> dict[str, Any]:
    config = chat_config(upstream_url)
    with running_proxy(tmp_path / "replay", config, cassettes_dir=cassettes, record_mode="none", **settings) as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            return run_session(client, ["hello"], testCaseId="tc-old")[0]


def test_warn_logs_the_age_and_replays(
    tmp_path: Path, old_cassettes: Path, upstream: Upstream, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "proxy.cassettes")
    turn = replay(tmp_path, upstream_url, old_cassettes, cassette_max_age=timedelta(days=30), on_expired="warn")
    assert turn["status"] == "GENERATED" and turn["exchange"]["cassette"] == "hit"
    [line] = [r.getMessage() for r in caplog.records if "cassette_max_age" in r.getMessage()]
    assert re.search(
        r"cassette sessions/tc-old is 45\.0d old \(newest recording .+\), over cassette_max_age 30\.0d",
        line,
    )
    assert "replaying it anyway (on_expired: warn)" in line
    assert upstream.received == []


def test_a_cassette_within_the_age_is_not_expired(
    tmp_path: Path, old_cassettes: Path, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    turn = replay(tmp_path, upstream_url, old_cassettes, cassette_max_age=timedelta(days=60), on_expired="fail")
    assert turn["exchange"]["cassette"] == "hit"
    assert not [r for r in caplog.records if "cassette_max_age" in r.getMessage()]


def test_fail_refuses_the_replay_naming_the_cassette_and_its_age(
    tmp_path: Path, old_cassettes: Path, upstream: Upstream, upstream_url: str
) -> None:
    turn = replay(tmp_path, upstream_url, old_cassettes, cassette_max_age=timedelta(hours=720), on_expired="fail")
    assert turn["status"] == "FAILED"
    assert "cassette sessions/tc-old is 45.0d old" in turn["error"]
    assert "over cassette_max_age 30.0d; on_expired: fail refuses to replay it" in turn["error"]
    assert upstream.received == []


def test_rerecord_records_the_cassette_afresh(
    tmp_path: Path, old_cassettes: Path, upstream: Upstream, upstream_url: str
) -> None:
    path = old_cassettes / "sessions" / "tc-old.yaml"
    turn = replay(tmp_path, upstream_url, old_cassettes, cassette_max_age=timedelta(days=30), on_expired="rerecord")
    assert turn["status"] == "GENERATED" and turn["exchange"]["cassette"] == "recorded"
    assert len(upstream.requests_to("/chat")) == 1
    [recorded_at] = RECORDED_AT.findall(path.read_text())  # the old interaction is gone
    assert recorded_at.startswith(f"recorded_at: '{datetime.now(UTC):%Y-%m-%d}")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("cassette_max_age: soon", "settings.cassette_max_age: 'soon' is not an age such as 30d, 12h or 90m"),
        ("cassette_max_age: 0d", "settings.cassette_max_age: '0d' is not an age"),
        ("on_expired: maybe", "settings.on_expired: 'maybe' is not one of warn, fail, rerecord"),
    ],
)
def test_bad_age_settings_are_refused_naming_them(tmp_path: Path, setting: str, message: str) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(f"settings:\n  {setting}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


# -- use and prune --------------------------------------------------------------------------------


def prune(cassettes: Path, data_dir: Path, *args: str) -> list[str]:
    result = CliRunner().invoke(
        main, ["cassettes", "prune", "--cassettes", str(cassettes), "--data-dir", str(data_dir), *args]
    )
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_use_is_kept_in_the_data_dir_and_prune_lists_and_deletes_the_unused(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    cassettes, data_dir = tmp_path / "cassettes", tmp_path / "data"
    with running_proxy(tmp_path, chat_config(upstream_url), data_dir=data_dir, cassettes_dir=cassettes) as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            run_session(client, ["hello"], testCaseId="tc-used")
            assert client.post("/forward/chat/v1/chat", json={"q": 1}).status_code == 200
    # A cassette this data dir's server never opened (recorded elsewhere, say).
    (cassettes / "sessions" / "tc-stale.yaml").write_text((cassettes / "sessions" / "tc-used.yaml").read_text())
    usage = read_cassette_usage(data_dir)
    assert usage[str((cassettes / "sessions" / "tc-used.yaml").resolve())][1] == "session tc-used"
    assert usage[str((cassettes / "connections" / "chat.yaml").resolve())][1] == "connection chat"

    listed = prune(cassettes, data_dir, "--unused-since", "2000-01-01")
    assert listed[:-1] == ["sessions/tc-stale  never used"]
    assert listed[-1].startswith("1 of 3 cassettes under") and "unused: not used since 2000-01-01 00:00" in listed[-1]

    later = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    everything = prune(cassettes, data_dir, "--unused-since", later)
    assert len(everything) == 4
    assert re.fullmatch(r"sessions/tc-used  last used \S+Z by session tc-used", everything[2])
    assert (cassettes / "sessions" / "tc-stale.yaml").exists()  # listing deletes nothing

    deleted = prune(cassettes, data_dir, "--unused-since", "1d", "--delete")
    assert deleted[0] == "sessions/tc-stale  never used" and "deleted" in deleted[-1]
    assert not (cassettes / "sessions" / "tc-stale.yaml").exists()
    assert (cassettes / "sessions" / "tc-used.yaml").exists() and (cassettes / "connections" / "chat.yaml").exists()


@pytest.mark.parametrize("delete", [[], ["--delete"]])
def test_prune_without_a_usage_record_refuses_and_deletes_nothing(tmp_path: Path, delete: list[str]) -> None:
    """A data dir that does not exist (a typo, or the temporary one of a finished test run) used to list every
    cassette as never used, and --delete deleted them all with exit 0."""
    (tmp_path / "cassettes" / "sessions").mkdir(parents=True)
    (tmp_path / "cassettes" / "sessions" / "a.yaml").write_text("interactions: []\nversion: 1\n")
    args = ["--cassettes", str(tmp_path / "cassettes"), "--data-dir", str(tmp_path / "none"), *delete]
    result = CliRunner().invoke(main, ["cassettes", "prune", "--unused-since", "30d", *args])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"proxy: no record of cassette use under {tmp_path / 'cassettes'} in {tmp_path / 'none'}: nothing pruned "
        "(give --data-dir of the server or test run that used them)"
    ]
    assert (tmp_path / "cassettes" / "sessions" / "a.yaml").exists()
    assert not (tmp_path / "none").exists()


def test_prune_refuses_a_usage_record_of_another_cassettes_folder(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """The record is there but knows nothing of this folder: its cassettes are not 'never used', they are unknown."""
    data_dir = tmp_path / "data"
    with running_proxy(tmp_path, chat_config(upstream_url), data_dir=data_dir, cassettes_dir=tmp_path / "elsewhere"):
        pass
    with running_proxy(tmp_path, chat_config(upstream_url), data_dir=data_dir, cassettes_dir=tmp_path / "used") as p:
        with httpx.Client(base_url=p.url) as client:
            assert client.post("/forward/chat/v1/chat", json={"q": 1}).status_code == 200
    (tmp_path / "other" / "sessions").mkdir(parents=True)
    (tmp_path / "other" / "sessions" / "a.yaml").write_text("interactions: []\nversion: 1\n")
    args = ["--cassettes", str(tmp_path / "other"), "--data-dir", str(data_dir), "--delete"]
    result = CliRunner().invoke(main, ["cassettes", "prune", "--unused-since", "30d", *args])
    assert result.exit_code == 2 and "no record of cassette use under" in result.output
    assert (tmp_path / "other" / "sessions" / "a.yaml").exists()


def test_prune_refuses_a_bad_date(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["cassettes", "prune", "--unused-since", "last week"])
    assert result.exit_code == 2 and "'last week' is not a date (2026-01-31), a time or an age" in result.output


def test_a_committed_orphans_record_never_deletes_outside_the_cassettes_folder(tmp_path: Path) -> None:
    """The attack: `.proxy/cassette-orphans.json` is a file a repository can ship. Entries `../../victim`, an
    absolute path and a symlink out of the folder named YAML files elsewhere, and `prune --orphans --delete`
    deleted them. Each is refused with a line; only a real test folder inside the cassettes folder goes."""
    cassettes = tmp_path / "proj" / "cassettes"
    inside = cassettes / "test_a" / "test_one" / "connections"
    inside.mkdir(parents=True)
    (inside / "chat.yaml").write_text("interactions: []\nversion: 1\n")
    victim = tmp_path / "victim"
    (victim / "deep").mkdir(parents=True)
    (victim / "top.yaml").write_text("x: 1\n")
    (victim / "deep" / "keep.yaml").write_text("x: 1\n")
    (cassettes / "test_a" / "link").symlink_to(victim)
    data_dir = tmp_path / "proj" / ".proxy"
    data_dir.mkdir()
    entries = ["../../victim", str(victim), "test_a/link", "test_a/test_one"]
    (data_dir / "cassette-orphans.json").write_text(json.dumps({str(cassettes.resolve()): entries}))
    args = ["--orphans", "--delete", "--cassettes", str(cassettes), "--data-dir", str(data_dir)]
    result = CliRunner().invoke(main, ["cassettes", "prune", *args])
    assert result.exit_code == 0, result.output
    assert (victim / "top.yaml").exists() and (victim / "deep" / "keep.yaml").exists()
    assert not (inside / "chat.yaml").exists()
    for entry in entries[:3]:
        assert f"{entry!r}  refused: not a test folder inside {cassettes}" in result.output


def test_prune_leaves_cassettes_another_tool_wrote_alone(tmp_path: Path, upstream: Upstream, upstream_url: str) -> None:
    """pytest-recording keeps its cassettes in the same `cassettes/<module>/` folders: without any `proxy` section
    they were listed as never used, and `--delete` removed a suite's pytest-recording cassettes."""
    cassettes, data_dir = tmp_path / "cassettes", tmp_path / "data"
    with running_proxy(tmp_path, chat_config(upstream_url), data_dir=data_dir, cassettes_dir=cassettes) as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            assert client.post("/forward/chat/v1/chat", json={"q": 1}).status_code == 200
    theirs = cassettes / "test_vcr" / "test_stream.yaml"
    theirs.parent.mkdir(parents=True)
    theirs.write_text(
        "interactions:\n- request: {body: null, headers: {}, method: GET, uri: 'http://x.test/'}\n"
        "  response: {body: {string: ok}, headers: {}, status: {code: 200, message: OK}}\nversion: 1\n"
    )
    listed = prune(cassettes, data_dir, "--unused-since", "1d", "--delete")
    assert listed[-1].startswith("0 of 2 cassettes")
    assert theirs.exists()
