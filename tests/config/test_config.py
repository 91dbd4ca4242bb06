from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from proxy.cli.options import build_settings
from proxy.config.expiry import OnExpired
from proxy.config.file import load_config
from proxy.config.record_mode import RecordMode
from proxy.config.settings import ReplayLatency, Settings
from proxy.config.sources import merge_settings
from proxy.errors import ConfigError
from proxy.server.runtime import Runtime


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
    """A server that may record (here `once`) needs every credential's variable."""
    path = write(
        tmp_path,
        "connections:\n  - {name: a, product_id: p, type: CONVERSATION, url: 'https://api.example/chat',\n"
        "      auth_type: BEARER, auth_token: '${NOPE_TOKEN}', input_template: '{\"m\": \"{{ input }}\"}',\n"
        "      output_mapping: {output: $.r}}\n",
    )
    settings = Settings(data_dir=tmp_path / "data", cassettes_dir=tmp_path / "cassettes", record_mode="once")
    with pytest.raises(
        ConfigError,
        match=r"^config connections\[0\]\.auth_token: environment variable NOPE_TOKEN is not set \(only a replay",
    ):
        Runtime(settings, load_config(path, env={})).check_config()


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
        ("{port: abc}", r"settings\.port: 'abc' is not a port number \(0-65535\)"),
        ("{port: 70000}", r"settings\.port: 70000 is not a port number"),
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
    from_env = load_config(
        write(tmp_path, "settings: {port: '${P}', replay_speed: '${S}'}"), env={"P": "9000", "S": "3"}
    )
    assert (build_settings(from_env).port, build_settings(from_env).replay_speed) == (9000, 3.0)


def check_config_file(tmp_path: Path, text: str) -> None:
    """What start-up checks: the file as it loads, then its connections, versions and connectors."""
    from proxy.server.runtime import Runtime

    config = load_config(write(tmp_path, text))
    runtime = Runtime(build_settings(config, data_dir=tmp_path / "data"), config)
    try:
        runtime.check_config()
    finally:
        runtime.store.close()


CHAT = (
    "  - name: chat\n    product_id: p\n    type: CONVERSATION\n    url: https://chat.test/v1\n    auth_type: NONE\n"
    '    input_template: \'{"m": "{{ input.m }}"}\'\n    output_mapping: {output: $.a}\n'
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("setings: {}", "config setings: unknown section — did you mean settings?"),
        ("settings: {record_mod: none}", "config settings.record_mod: unknown field — did you mean record_mode?"),
        ("settings: {ignore: {qeury: [ts]}}", "config settings.ignore.qeury: unknown field — did you mean query?"),
        (f"connections:\n{CHAT}    timout: 5\n", "config connections[0].timout: unknown field — did you mean timeout?"),
        (
            f"connections:\n{CHAT.replace('input_template', 'input_templat')}",
            "config connections[0].input_templat: unknown field — did you mean input_template?",
        ),
        (
            f"connections:\n{CHAT}    conversation_end_rules: [{{status_code: 409, body_match: {{pth: $.a}}}}]\n",
            "config connections[0].conversation_end_rules[0].body_match.pth: unknown field — did you mean path?",
        ),
        (
            f"connections:\n{CHAT}versions:\n  - {{name: v1, product_id: p, conversaton: chat}}\n",
            "config versions[0].conversaton: unknown field — did you mean conversation?",
        ),
        (
            "connectors:\n  - {name: kb, url: 'https://kb.test', service_auth: {type: bearer, tokn: abcdefghijk}}\n",
            "config connectors[0].service_auth.tokn: unknown field — did you mean token?",
        ),
        (
            "connectors:\n  - {name: kb, url: 'https://kb.test', continue_on_falure: true}\n",
            "config connectors[0].continue_on_falure: unknown field — did you mean continue_on_failure?",
        ),
    ],
)
def test_an_unknown_key_anywhere_stops_start_up_with_its_place_and_the_nearest_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        check_config_file(tmp_path, text)
    assert raised.value.message == message


def test_known_keys_pass_in_either_spelling(tmp_path: Path) -> None:
    text = (
        "settings: {record_mode: none, cassettes: c, ignore: {query: [ts]}, match_headers: [x-t], redact_values: []}\n"
        f"connections:\n{CHAT}    retryEnabled: true\n    record_mode: off\n"
        "versions:\n  - {name: v1, productId: p, conversation: chat, description: d}\n"
    )
    config = load_config(write(tmp_path, text))
    runtime = Runtime(build_settings(config, data_dir=tmp_path / "data"), config)
    try:
        runtime.check_config()  # start-up accepts the file, and each key, in either spelling, took effect
        settings, library = runtime.settings, runtime.library
        assert (settings.record_mode, settings.cassettes_dir) == ("none", Path("c"))
        assert library.mode_for("chat") is RecordMode.OFF and library.mode_for("other") is RecordMode.NONE
        assert (library.rules.ignore_query, library.rules.match_headers) == ({"ts"}, {"x-t"})
        connection = runtime.connections.build(runtime._without_proxy_fields(config.connections[0]))
        assert connection.spec.retry_enabled is True and connection.spec.product_id == "p"
    finally:
        runtime.store.close()


def test_only_a_credential_may_come_from_an_unset_variable(tmp_path: Path) -> None:
    """A replay needs no secret, so an unset variable in a credential's place is kept as `${VAR}` and noted; in any
    other place (a URL decides where calls go) it stays an error naming the place and the variable."""
    path = tmp_path / "proxy.yaml"
    path.write_text(
        "connections:\n"
        "  - {name: c, url: 'https://api.example/v1', auth_token: '${NO_SUCH_TOKEN}', headers: {X-Key: '${NO_KEY}'}}\n"
        "connectors:\n  - {name: k, url: 'https://kb.example', service_auth: {type: bearer, token: '${NO_KB}'}}\n"
    )
    config = load_config(path, env={})
    assert config.unset_credentials == {
        "connections[0].auth_token": "NO_SUCH_TOKEN",
        "connections[0].headers.X-Key": "NO_KEY",
        "connectors[0].service_auth.token": "NO_KB",
    }
    assert config.connections[0]["auth_token"] == "${NO_SUCH_TOKEN}"
    path.write_text("connections:\n  - {name: c, url: '${NO_SUCH_URL}', auth_token: '${NO_SUCH_TOKEN}'}\n")
    with pytest.raises(ConfigError, match=re.escape("config connections[0].url: environment variable NO_SUCH_URL")):
        load_config(path, env={})


def test_merge_takes_flags_over_the_environment_over_the_file_over_the_defaults() -> None:
    file = {"host": "file.test", "port": 7000, "api_key": "file-key-123", "record_mode": RecordMode.NONE}
    env = {"PROXY_API_KEY": "env-key-1234"}
    assert merge_settings({}, {}, {}) == Settings()
    from_file = merge_settings(file, {}, {})
    assert (from_file.host, from_file.port, from_file.api_key, from_file.record_mode) == (
        "file.test",
        7000,
        "file-key-123",
        RecordMode.NONE,
    )
    assert merge_settings(file, {}, env).api_key == "env-key-1234"  # the environment beats the file
    flagged = merge_settings(file, {"api_key": "flag-key-123", "port": 0, "record_mode": "all"}, env)
    assert (flagged.api_key, flagged.port, flagged.record_mode, flagged.host) == (
        "flag-key-123",
        0,
        RecordMode.ALL,
        "file.test",
    )


def test_merge_counts_a_flag_or_variable_left_out_or_empty_as_not_given() -> None:
    file = {"api_key": "file-key-123", "replay_speed": 2.0}
    merged = merge_settings(file, {"api_key": None, "replay_speed": None}, {"PROXY_API_KEY": ""})
    assert (merged.api_key, merged.replay_speed) == ("file-key-123", 2.0)
    assert merge_settings({}, {}, {"OTHER_KEY": "x"}).api_key is None  # only the variables the merge names count


def test_merge_reads_the_cassettes_key_and_a_callers_defaults(tmp_path: Path) -> None:
    defaults = {"cassettes_dir": tmp_path / "c", "data_dir": tmp_path / "d", "record_mode": RecordMode.NONE}
    merged = merge_settings({}, {}, {}, defaults)
    assert (merged.cassettes_dir, merged.data_dir, merged.record_mode) == (tmp_path / "c", tmp_path / "d", "none")
    both = {"cassettes": Path("short"), "cassettes_dir": Path("long")}
    assert merge_settings(both, {}, {}, defaults).cassettes_dir == Path("short")
    assert merge_settings(both, {"cassettes_dir": Path("flag")}, {}).cassettes_dir == Path("flag")
    with pytest.raises(TypeError, match="not settings: cassettes_folder"):
        merge_settings({}, {"cassettes_folder": Path("x")}, {})


def test_the_file_settings_are_typed_once_where_the_file_is_read(tmp_path: Path) -> None:
    text = (
        "settings: {record_mode: ALL, replay_latency: Recorded, cassette_max_age: 12h, on_expired: FAIL,"
        " allow_http: '${ALLOW}', traceparent: 'off', data_dir: d, cassettes: c, flow_log_size: '50'}"
    )
    file = load_config(write(tmp_path, text), env={"ALLOW": "true"}).settings
    settings = merge_settings(file, {}, {})
    assert settings.record_mode is RecordMode.ALL and settings.replay_latency is ReplayLatency.RECORDED
    assert settings.cassette_max_age == timedelta(hours=12) and settings.on_expired is OnExpired.FAIL
    assert (settings.allow_http, settings.traceparent) == (True, False)
    assert (settings.data_dir, settings.cassettes_dir, settings.flow_log_size) == (Path("d"), Path("c"), 50)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("{allow_http: maybe}", "config settings.allow_http: 'maybe' is not true or false"),
        ("{flow_log_size: 0}", "config settings.flow_log_size: 0 is not a positive whole number of flows"),
        ("{host: [a]}", "config settings.host: ['a'] is not text"),
        ("{fault_seed: .inf}", "config settings.fault_seed: inf is not an integer"),
    ],
)
def test_bad_settings_are_refused_where_the_file_is_read(tmp_path: Path, settings: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, f"settings: {settings}"))
    assert raised.value.message == message


def test_the_files_hosts_and_origins_are_read_as_their_flags_read_them(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "settings:\n  allowed_hosts: [Proxy.Internal., '[::1]']\n"
        "  cors_origins: ['HTTP://LocalHost:5173/', 'https://app.example:443', '${APP_ORIGIN}']\n",
    )
    settings = load_config(path, env={"APP_ORIGIN": "http://10.0.0.2:8080"}).settings
    assert settings["allowed_hosts"] == ("proxy.internal", "::1")
    assert settings["cors_origins"] == ("http://localhost:5173", "https://app.example", "http://10.0.0.2:8080")
    merged = merge_settings(settings, {}, {})
    assert (merged.allowed_hosts, merged.cors_origins) == (settings["allowed_hosts"], settings["cors_origins"])


@pytest.mark.parametrize(
    ("line", "place", "reason"),
    [
        ("cors_origins: ['*']", "settings.cors_origins[0]", "'*' is not an origin"),
        ("cors_origins: [http://localhost:5173, 'null']", "settings.cors_origins[1]", "'null' is not an origin"),
        ("cors_origins: ['http://localhost:5173/app']", "settings.cors_origins[0]", "with no path, query or user"),
        ("cors_origins: ['ftp://files.example']", "settings.cors_origins[0]", "write it as http(s)://host[:port]"),
        ("cors_origins: ['http://localhost:99999']", "settings.cors_origins[0]", "is not a valid origin"),
        ("cors_origins: [{a: 1}]", "settings.cors_origins[0]", "is not text"),
        ("cors_origins: http://localhost:5173", "settings.cors_origins", "is not a list"),
        ("allowed_hosts: ['http://proxy.internal']", "settings.allowed_hosts[0]", "without scheme or port"),
        ("allowed_hosts: ['proxy.internal:8787']", "settings.allowed_hosts[0]", "is not a host name"),
    ],
)
def test_a_bad_host_or_origin_in_the_file_is_refused_naming_its_place(
    tmp_path: Path, line: str, place: str, reason: str
) -> None:
    path = write(tmp_path, f"settings:\n  {line}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.message.startswith(f"config {place}: ") and reason in refused.value.message


def test_a_flag_list_replaces_the_files_and_an_empty_one_keeps_it(tmp_path: Path) -> None:
    """click gives a repeatable option left out as an empty tuple: that is no flag, so the file's list stands."""
    config = load_config(
        write(tmp_path, "settings: {cors_origins: ['http://localhost:5173'], allowed_hosts: [proxy.internal]}\n")
    )
    unflagged = build_settings(config, allowed_hosts=(), cors_origins=())
    assert (unflagged.cors_origins, unflagged.allowed_hosts) == (("http://localhost:5173",), ("proxy.internal",))
    flagged = build_settings(config, allowed_hosts=(), cors_origins=("http://localhost:3000",))
    assert (flagged.cors_origins, flagged.allowed_hosts) == (("http://localhost:3000",), ("proxy.internal",))
