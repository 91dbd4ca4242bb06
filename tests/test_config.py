from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import build_settings
from proxy.config import load_config
from proxy.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    return path


def test_env_references_are_expanded_with_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "settings: {record_mode: none, traceparent: false}\n"
        "connections:\n"
        "  - {name: a, auth_token: '${TOKEN}', url: '${BASE:-https://x.test}/chat', note: 'a: b ${TOKEN}'}\n",
    )
    config = load_config(path, env={"TOKEN": "t: 'quoted'"})
    assert config.connections[0]["auth_token"] == "t: 'quoted'"
    assert config.connections[0]["url"] == "https://x.test/chat"
    assert config.connections[0]["note"] == "a: b t: 'quoted'"
    settings = build_settings(config, record_mode=None, port=9000)
    assert (settings.record_mode, settings.traceparent, settings.port) == ("none", False, 9000)


def test_missing_env_variable_names_the_place(tmp_path: Path) -> None:
    path = write(tmp_path, "connections:\n  - {name: a, auth_token: '${NOPE_TOKEN}'}\n")
    with pytest.raises(
        ConfigError, match=r"^config connections\[0\]\.auth_token: environment variable NOPE_TOKEN is not set$"
    ):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("connections: {a: 1}", "connections must be a list"),
        ("bogus: 1", "unknown section"),
        ("a: [", "not valid YAML"),
    ],
)
def test_bad_config_files_are_explained(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("word", ["off", "no", "false", "Off", "NO"])
def test_a_record_mode_that_yaml_reads_as_false_is_off(tmp_path: Path, word: str) -> None:
    config = load_config(write(tmp_path, f"settings: {{record_mode: {word}}}"))
    assert build_settings(config).record_mode == "off"


def test_a_record_mode_that_yaml_reads_as_true_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config settings\.record_mode: true is not a record mode .* all, off$"):
        load_config(write(tmp_path, "settings: {record_mode: yes}"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("{replay_latency: slow}", r"settings\.replay_latency: 'slow' is not one of none, recorded"),
        ("{replay_speed: 0}", r"settings\.replay_speed: 0 is not a positive number"),
        ("{replay_speed: fast}", r"settings\.replay_speed: 'fast' is not a positive number"),
    ],
)
def test_bad_replay_settings_are_explained(tmp_path: Path, settings: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f"settings: {settings}"))


def test_replay_settings_come_from_the_file_unless_flags_say_otherwise(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "settings: {replay_latency: recorded, replay_speed: 2.5}"))
    assert (build_settings(config).replay_latency, build_settings(config).replay_speed) == ("recorded", 2.5)
    assert build_settings(config, replay_speed=10.0).replay_speed == 10.0
    assert build_settings(load_config(write(tmp_path, ""))).replay_speed == 1.0
