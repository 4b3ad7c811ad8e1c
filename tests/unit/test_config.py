"""Configuration: file, environment and flags, validation, masking, the daemon mapping."""

from __future__ import annotations

import contextlib
import json
import tomllib
from datetime import timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fusillade.cli import main
from fusillade.config import (
    ApiKey,
    DaemonSettings,
    LogSettings,
    ModelSettings,
    OwnerSettings,
    RetentionSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
    WebhookSettings,
    load_settings,
    render,
)
from fusillade.core.scheduling.budget import BudgetLimits
from fusillade.errors import ConfigError
from fusillade.runtime.config import DaemonConfig, Upstream

FULL = """
database_url = "postgresql://app@db/fusillade"
data_dir = "/var/lib/fusillade"
default_upstream = "openai"

[server]
host = "0.0.0.0"
port = 9000
api_keys = [
  { key_env = "FUSILLADE_KEY_ALICE", owner = "alice" },
  { key_env = "FUSILLADE_KEY_BOB", owner = "bob" },
]
max_upload_bytes = 1000
max_lines = 10
max_line_bytes = 100
allowed_endpoints = ["/v1/chat/completions"]
completion_windows = ["24h", "1h"]
max_request_bytes = 2000

[daemon]
default_concurrency = 8
heartbeat_interval = "2s"
stale_after = "20s"
poll_interval = "250ms"
request_timeout = "2m"
shutdown_grace = "0s"
max_attempts = 3
backoff_base = "500ms"
backoff_cap = "30s"

[retention]
finished_batches = "30d"
stopped_daemons = "2d"

[upstreams.openai]
base_url = "https://api.openai.com"
api_key_env = "OPENAI_API_KEY"

[upstreams.local-vllm]
base_url = "http://127.0.0.1:8001/v1"

[models."llama-3.1-8b"]
upstream = "local-vllm"
concurrency = 64

[models."gpt-4o-mini"]
concurrency = 4
"""

FULL_SETTINGS = Settings(
    database_url="postgresql://app@db/fusillade",
    data_dir=Path("/var/lib/fusillade"),
    default_upstream="openai",
    server=ServerSettings(
        host="0.0.0.0",
        port=9000,
        api_keys=(ApiKey("FUSILLADE_KEY_ALICE", "alice"), ApiKey("FUSILLADE_KEY_BOB", "bob")),
        max_upload_bytes=1000,
        max_lines=10,
        max_line_bytes=100,
        allowed_endpoints=("/v1/chat/completions",),
        completion_windows=("24h", "1h"),
        max_request_bytes=2000,
    ),
    retention=RetentionSettings(
        finished_batches=timedelta(days=30), stopped_daemons=timedelta(days=2)
    ),
    daemon=DaemonSettings(
        default_concurrency=8,
        heartbeat_interval=timedelta(seconds=2),
        stale_after=timedelta(seconds=20),
        poll_interval=timedelta(milliseconds=250),
        request_timeout=timedelta(minutes=2),
        shutdown_grace=timedelta(0),
        max_attempts=3,
        backoff_base=timedelta(milliseconds=500),
        backoff_cap=timedelta(seconds=30),
    ),
    upstreams={
        "openai": UpstreamSettings("https://api.openai.com", "OPENAI_API_KEY"),
        "local-vllm": UpstreamSettings("http://127.0.0.1:8001/v1"),
    },
    models={
        "llama-3.1-8b": ModelSettings("local-vllm", 64),
        "gpt-4o-mini": ModelSettings(concurrency=4),
    },
)


@pytest.fixture
def full(tmp_path: Path) -> Path:
    path = tmp_path / "fusillade.toml"
    path.write_text(FULL)
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env=kwargs.pop("env", {}), **kwargs)
    return str(info.value)


# --- sources and precedence -------------------------------------------------------------


def test_defaults() -> None:
    assert load_settings(env={}) == Settings()
    assert Settings().daemon.max_attempts >= 5  # api.md: the default budget allows 5 or more


def test_file_sets_every_key(full: Path) -> None:
    assert load_settings(full, env={}) == FULL_SETTINGS


def test_every_scalar_key_has_a_rule() -> None:
    from fusillade.config._load import KEYS  # what variables and flags may set

    for section, cls in (("server", ServerSettings), ("daemon", DaemonSettings)):
        assert {(section, name) for name in attrs.fields_dict(cls)} <= set(KEYS), section
    assert {key for key in KEYS if len(key) == 1} == {
        ("database_url",),
        ("data_dir",),
        ("default_upstream",),
    }


def test_config_env_names_the_file(full: Path) -> None:
    assert load_settings(env={"FUSILLADE_CONFIG": str(full)}) == FULL_SETTINGS


def test_env_overrides_file(full: Path) -> None:
    env = {
        "FUSILLADE_DATABASE_URL": "postgresql://other/db",
        "FUSILLADE_DATA_DIR": "/tmp/data",
        "FUSILLADE_SERVER_PORT": "9100",
        "FUSILLADE_SERVER_API_KEYS": "carol=CAROL_KEY, dave = DAVE_KEY",
        "FUSILLADE_SERVER_COMPLETION_WINDOWS": "24h, 7d",
        "FUSILLADE_DAEMON_DEFAULT_CONCURRENCY": "32",
        "FUSILLADE_DAEMON_STALE_AFTER": "1m",
    }
    s = load_settings(full, env=env)
    assert s.database_url == "postgresql://other/db"
    assert s.data_dir == Path("/tmp/data")
    assert s.server.port == 9100
    assert s.server.api_keys == (ApiKey("CAROL_KEY", "carol"), ApiKey("DAVE_KEY", "dave"))
    assert s.server.completion_windows == ("24h", "7d")
    assert s.daemon.default_concurrency == 32
    assert s.daemon.stale_after == timedelta(minutes=1)
    assert s.server.host == "0.0.0.0"  # untouched keys keep the file's value
    assert s.sources[("server", "port")] == "FUSILLADE_SERVER_PORT"
    assert s.sources[("server", "host")] == str(full)


def test_flags_override_env(full: Path) -> None:
    env = {"FUSILLADE_SERVER_PORT": "9100", "FUSILLADE_DATABASE_URL": "postgresql://env/db"}
    flags = {
        "server.port": 9200,
        "database_url": "postgresql://flag/db",
        "daemon.max_attempts": "9",
    }
    s = load_settings(full, env=env, flags=flags)
    assert (s.server.port, s.database_url, s.daemon.max_attempts) == (
        9200,
        "postgresql://flag/db",
        9,
    )
    assert s.sources[("server", "port")] == "command line"


def test_none_flags_are_skipped() -> None:
    assert load_settings(env={}, flags={"server.port": None, "upstream": None}) == Settings()


def test_empty_and_unknown_env_variables_are_ignored() -> None:
    env = {"FUSILLADE_SERVER_PORT": "", "FUSILLADE_KEY_ALICE": "x", "FUSILLADE_SERVER_PROT": "1"}
    assert load_settings(env=env) == Settings()


def test_every_server_and_daemon_key_has_a_variable() -> None:
    defaults = {"server": ServerSettings(), "daemon": DaemonSettings()}
    env = {
        f"FUSILLADE_{section.upper()}_{name.upper()}": "7"
        for section, record in defaults.items()
        for name, value in attrs.asdict(record).items()
        if type(value) is int
    }
    s = load_settings(env=env)
    assert s.server.port == s.server.max_lines == s.daemon.max_attempts == 7
    assert s.server.body_min_rate == s.daemon.default_concurrency == 7


def test_retention_keys_have_variables_and_reach_the_daemon() -> None:
    s = load_settings(
        env={
            "FUSILLADE_RETENTION_FINISHED_BATCHES": "12h",
            "FUSILLADE_RETENTION_STOPPED_DAEMONS": "1d",
        }
    )
    assert s.retention == RetentionSettings(timedelta(hours=12), timedelta(days=1))
    config = s.daemon_config()
    assert config.finished_batch_retention == timedelta(hours=12)
    assert config.stopped_daemon_retention == timedelta(days=1)
    assert Settings().daemon_config().finished_batch_retention is None  # kept by default


# --- the --upstream shortcut ------------------------------------------------------------


def test_upstream_flag() -> None:
    s = load_settings(env={}, flags={"upstream": "http://127.0.0.1:8001"})
    assert s.upstreams == {"default": UpstreamSettings("http://127.0.0.1:8001")}
    assert s.default_upstream == "default"
    flags = {"upstream": "http://h:1", "upstream_api_key_env": "MY_KEY"}
    s = load_settings(env={}, flags=flags)
    assert s.upstreams["default"] == UpstreamSettings("http://h:1", "MY_KEY")
    assert s.daemon_config().upstream_for("any-model") == Upstream("http://h:1", "MY_KEY")


def test_upstream_flag_beats_the_files_default_upstream(full: Path) -> None:
    s = load_settings(full, env={}, flags={"upstream": "http://h:1"})
    assert s.default_upstream == "default"
    assert s.models["llama-3.1-8b"].upstream == "local-vllm"  # listed models keep theirs


def test_upstream_env() -> None:
    env = {"FUSILLADE_UPSTREAM": "http://h:1", "FUSILLADE_UPSTREAM_API_KEY_ENV": "K"}
    assert load_settings(env=env).upstreams == {"default": UpstreamSettings("http://h:1", "K")}


def test_upstream_api_key_env_alone_is_an_error() -> None:
    with pytest.raises(ConfigError, match="upstream_api_key_env needs upstream"):
        load_settings(env={}, flags={"upstream_api_key_env": "K"})


# --- unknown keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("prot = 1", "unknown key prot"),
        ("[server]\nprot = 1", "unknown key [server] prot"),
        ("[daemon]\nheartbeat = '5s'", "unknown key [daemon] heartbeat"),
        ("[upstreams.a]\nbase_url = 'http://h'\nkey = 'x'", "unknown key [upstreams.a] key"),
        ('[models."gpt-4.1"]\nupstreams = "a"', 'unknown key [models."gpt-4.1"] upstreams'),
        ("[servers]\nport = 1", "unknown key servers"),
    ],
)
def test_unknown_key_in_file(tmp_path: Path, text: str, named: str) -> None:
    assert error(tmp_path, text) == f"{tmp_path / 'config.toml'}: {named}"


def test_unknown_api_key_field(tmp_path: Path) -> None:
    message = error(tmp_path, '[server]\napi_keys = [{key_env = "K", owner = "o", x = 1}]')
    assert "[server] api_keys" in message


@pytest.mark.parametrize("key", ["prot", "server.prot", "upstreams.a.base_url", "serve.port"])
def test_unknown_flag(key: str) -> None:
    with pytest.raises(ConfigError, match=f"command line: unknown setting '{key}'"):
        load_settings(env={}, flags={key: 1})


# --- bad values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('database_url = ""', "database_url: must be a non-empty string"),
        ("data_dir = 3", "data_dir: must be a non-empty string"),
        ("[server]\nport = '8000'", "[server] port: must be an integer from 0 to 65535"),
        ("[server]\nport = 70000", "[server] port: must be an integer from 0 to 65535, got 70000"),
        ("[server]\nport = 65536", "[server] port: must be an integer"),
        ("[server]\nport = true", "[server] port: must be an integer"),
        ("[server]\nmax_lines = 1.5", "[server] max_lines: must be an integer >= 1"),
        ("[server]\napi_keys = 'K'", "[server] api_keys: must be a list"),
        ('[server]\napi_keys = [{key_env = "K", owner = ""}]', "[server] api_keys: entry 1"),
        (
            '[server]\napi_keys = [{key_env = "K", owner = "a"}, {key_env = "K", owner = "b"}]',
            "[server] api_keys: the same key_env is listed twice",
        ),
        ("[server]\nallowed_endpoints = ['v1/x']", "[server] allowed_endpoints: endpoints start"),
        ("[server]\nallowed_endpoints = []", "[server] allowed_endpoints: must be a non-empty"),
        ("[server]\ncompletion_windows = ['1 day']", "[server] completion_windows: invalid"),
        ("[server]\ncompletion_windows = ['0h']", "[server] completion_windows"),
        ("[server]\nallowed_hosts = ['evil host']", "[server] allowed_hosts: each entry"),
        ("[server]\nallowed_hosts = ['a:b']", "[server] allowed_hosts: each entry"),
        ("[server]\nallowed_hosts = 'a'", "[server] allowed_hosts: must be a list"),
        ("[server]\nbody_read_timeout = '0s'", "[server] body_read_timeout: must be longer"),
        ("[server]\nbody_min_rate = 0", "[server] body_min_rate: must be an integer >= 1"),
        ("server = 1", "[server] must be a table"),
        (
            "[daemon]\ndefault_concurrency = 0",
            "[daemon] default_concurrency: must be an integer >= 1",
        ),
        ("[daemon]\nmax_attempts = 0", "[daemon] max_attempts"),
        ("[daemon]\nheartbeat_interval = 5", "[daemon] heartbeat_interval: must be a duration"),
        ("[daemon]\npoll_interval = '5 s'", "[daemon] poll_interval: invalid duration"),
        ("[daemon]\nbackoff_base = '0s'", "[daemon] backoff_base: must be longer than 0s"),
        ("[daemon]\nstale_after = '5s'", "[daemon] stale_after: stale_after '5s' must be longer"),
        ("upstreams = 1", "[upstreams] must be a table"),
        ("[upstreams.a]\napi_key_env = 'K'", "[upstreams.a] base_url: required"),
        ("[upstreams.a]\nbase_url = 'ftp://h'", "[upstreams.a] base_url: must be an http"),
        ("[upstreams.a]\nbase_url = 'http://'", "[upstreams.a] base_url: must be an http"),
        ('[models."m"]\nconcurrency = 0', "[models.m] concurrency: must be an integer >= 1"),
        (
            '[models."m"]\nupstream = "nope"',
            "[models.m] upstream: no upstream named 'nope' in [upstreams] (defined: none)",
        ),
        ("default_upstream = 'nope'", "default_upstream: no upstream named 'nope'"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    assert error(tmp_path, text).startswith(f"{tmp_path / 'config.toml'}: {named}")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FUSILLADE_SERVER_PORT": "80a"}, "FUSILLADE_SERVER_PORT: [server] port: must be"),
        ({"FUSILLADE_SERVER_API_KEYS": "alice"}, "FUSILLADE_SERVER_API_KEYS: [server] api_keys:"),
        ({"FUSILLADE_DAEMON_STALE_AFTER": "soon"}, "FUSILLADE_DAEMON_STALE_AFTER: [daemon]"),
        ({"FUSILLADE_DEFAULT_UPSTREAM": "x"}, "FUSILLADE_DEFAULT_UPSTREAM: default_upstream: no"),
        ({"FUSILLADE_UPSTREAM": "localhost:1"}, "FUSILLADE_UPSTREAM: [upstreams.default] base_url"),
    ],
)
def test_bad_env_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert str(info.value).startswith(named)


def test_heartbeat_blamed_when_only_it_changed() -> None:
    with pytest.raises(
        ConfigError, match=r"^FUSILLADE_DAEMON_HEARTBEAT_INTERVAL: \[daemon\] heart"
    ):
        load_settings(env={"FUSILLADE_DAEMON_HEARTBEAT_INTERVAL": "1m"})


def test_key_env_holding_a_secret_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    secret = "sk-proj-abc123"
    message = error(tmp_path, f'[upstreams.a]\nbase_url = "http://h"\napi_key_env = "{secret}"')
    assert "[upstreams.a] api_key_env: must be the NAME" in message
    assert secret not in message
    message = error(tmp_path, f'[server]\napi_keys = [{{key_env = "{secret}", owner = "o"}}]')
    assert secret not in message


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_settings(tmp_path / "missing.toml", env={})
    assert "not valid TOML" in error(tmp_path, "port = ")


# --- render -----------------------------------------------------------------------------


def test_render_masks_api_keys(full: Path) -> None:
    env = {"FUSILLADE_KEY_ALICE": "alice-secret-value", "OPENAI_API_KEY": "sk-openai-secret"}
    out = render(load_settings(full, env=env), env=env)
    assert "alice-secret-value" not in out
    assert "sk-openai-secret" not in out
    assert '{ key_env = "FUSILLADE_KEY_ALICE", owner = "alice" },  # set' in out
    assert '{ key_env = "FUSILLADE_KEY_BOB", owner = "bob" },  # NOT SET' in out
    assert f'api_key_env = "OPENAI_API_KEY"  # set; from {full}' in out


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:hunter2@host/db", "postgresql://user:***@host/db"),
        ("postgres://user:hun@ter2@host:5432/db", "postgres://user:***@host:5432/db"),
        ("postgresql://:hunter2@host/db", "postgresql://:***@host/db"),
        ("postgresql://host/db?password=hunter2&x=1", "postgresql://host/db?password=***&x=1"),
        ("host=db user=app password=hunter2 dbname=f", "host=db user=app password=*** dbname=f"),
        ("host=db password = 'hun ter2'", "host=db password = ***"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
    ],
)
def test_render_masks_the_database_password(url: str, masked: str) -> None:
    out = render(load_settings(env={}, flags={"database_url": url}), env={})
    assert "hunter2" not in out
    assert "hun ter2" not in out
    assert f'database_url = "{masked}"  # from command line' in out


def test_render_reads_back(full: Path, tmp_path: Path) -> None:
    for s in (Settings(), load_settings(full, env={})):
        path = tmp_path / "rendered.toml"
        path.write_text(render(s, env={}))
        assert load_settings(path, env={}) == s


def test_render_quotes_odd_names(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path, '[upstreams."a b"]\nbase_url = "http://h"\n[models."x\\"y"]\nupstream = "a b"'
        ),
        env={},
    )
    out = render(s, env={})
    assert '[upstreams."a b"]' in out
    assert '[models."x\\"y"]' in out
    assert tomllib.loads(out)["models"] == {'x"y': {"upstream": "a b"}}


# --- the daemon's config ----------------------------------------------------------------


def test_daemon_config(full: Path) -> None:
    config = load_settings(full, env={}).daemon_config()
    assert config.default_concurrency == 8
    assert config.model_concurrency == {"llama-3.1-8b": 64, "gpt-4o-mini": 4}
    assert config.upstreams == {
        "openai": Upstream("https://api.openai.com", "OPENAI_API_KEY"),
        "local-vllm": Upstream("http://127.0.0.1:8001/v1", None),
    }
    assert config.model_upstreams == {"llama-3.1-8b": "local-vllm"}
    assert config.default_upstream == "openai"
    assert config.upstream_for("gpt-4o-mini") == config.upstreams["openai"]
    assert config.retry.max_attempts == 3
    assert config.retry.base == timedelta(milliseconds=500)
    assert config.retry.cap == timedelta(seconds=30)
    seconds = timedelta(seconds=1)
    assert (config.heartbeat_interval, config.stale_after, config.poll_interval) == (
        2 * seconds,
        20 * seconds,
        seconds / 4,
    )
    assert (config.request_timeout, config.shutdown_grace) == (120 * seconds, timedelta(0))


def test_metrics_label_only_configured_models_by_name(tmp_path: Path) -> None:
    # a [models] table without keys still names its model in the metrics
    text = '[models."listed"]\n[models."limited"]\nconcurrency = 2\n'
    config = load_settings(write(tmp_path, text), env={}).daemon_config()
    assert config.metric_models == {"listed", "limited"}
    assert config.metric_label("listed") == "listed"
    assert config.metric_label("limited") == "limited"
    assert config.metric_label("any-name-a-client-sent") == "other"
    from fusillade.runtime.config import DaemonConfig

    # the library: routed or limited models count as configured
    library = DaemonConfig(model_concurrency={"a": 1}, model_upstreams={"b": "up"})
    assert [library.metric_label(m) for m in ("a", "b", "c")] == ["a", "b", "other"]


def test_metrics_key_env(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nmetrics_key_env = "SCRAPE_KEY"\n')
    assert load_settings(path, env={}).server.metrics_key_env == "SCRAPE_KEY"
    env = {"FUSILLADE_SERVER_METRICS_KEY_ENV": "OTHER_KEY", "OTHER_KEY": "sk-scrape-secret"}
    s = load_settings(path, env=env)
    assert s.server.metrics_key_env == "OTHER_KEY"
    out = render(s, env=env)
    assert 'metrics_key_env = "OTHER_KEY"  # set; from FUSILLADE_SERVER_METRICS_KEY_ENV' in out
    assert "sk-scrape-secret" not in out
    assert "must be the NAME" in error(tmp_path, '[server]\nmetrics_key_env = "sk-a b"\n')


def test_default_daemon_config_matches_the_runtime_defaults() -> None:
    from fusillade.runtime.config import DaemonConfig

    assert Settings().daemon_config() == DaemonConfig()


def test_daemon_config_durations_are_timedeltas_and_accept_seconds() -> None:
    from fusillade.runtime.config import DaemonConfig

    # library callers may give seconds; the field holds a timedelta either way
    numbers = DaemonConfig(poll_interval=0.05, stale_after=90, shutdown_grace=0)
    deltas = DaemonConfig(
        poll_interval=timedelta(milliseconds=50),
        stale_after=timedelta(seconds=90),
        shutdown_grace=timedelta(0),
    )
    assert numbers == deltas
    assert numbers.poll_interval == timedelta(milliseconds=50)
    assert type(numbers.stale_after) is timedelta
    durations = [f.name for f in attrs.fields(DaemonConfig) if f.type in ("timedelta", timedelta)]
    assert "db_call_timeout" in durations
    assert all(type(getattr(DaemonConfig(), name)) is timedelta for name in durations)
    assert all(type(getattr(numbers, name)) is timedelta for name in durations)
    with pytest.raises(TypeError, match="a duration must be a timedelta or seconds"):
        DaemonConfig(poll_interval="5s")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a duration must be a timedelta or seconds"):
        DaemonConfig(poll_interval=True)


@pytest.mark.parametrize(
    ("given", "stale", "beat"),
    [
        ("2m", timedelta(minutes=2), timedelta(seconds=5)),
        ("90s", timedelta(seconds=90), timedelta(seconds=5)),
        ("2", timedelta(seconds=2), timedelta(milliseconds=500)),
        ("1.5", timedelta(seconds=1.5), timedelta(milliseconds=375)),
    ],
)
def test_run_duration_flags_take_the_configuration_form(
    given: str, stale: timedelta, beat: timedelta, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from fusillade.cli._main import _run_settings, build_parser

    for name in [n for n in os.environ if n.startswith("FUSILLADE_")]:
        monkeypatch.delenv(name)
    argv = ["run", "in.jsonl", "-o", "out.jsonl", "--stale-after", given]
    args = build_parser().parse_args([*argv, "--progress-interval", given])
    assert args.progress_interval == stale
    config = _run_settings(args).daemon_config()
    assert (config.stale_after, config.heartbeat_interval) == (stale, beat)
    assert build_parser().parse_args(argv[:4]).progress_interval == timedelta(seconds=5)


@pytest.mark.parametrize("given", ["soon", "-5", "5 parsecs", ""])
def test_run_rejects_a_bad_duration_flag(given: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "in.jsonl", "-o", "out.jsonl", "--stale-after", given])
    assert exit_.value.code == 2
    assert "--stale-after" in capsys.readouterr().err


@settings(max_examples=200)
@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=100_000)))
def test_durations_render_as_they_read(value: timedelta) -> None:
    from fusillade.config._model import format_duration
    from fusillade.core.windows import parse_duration

    assert parse_duration(format_duration(value)) == value


def test_flags_may_give_durations_as_timedeltas() -> None:
    # `run --stale-after 2` sets both; the daemon reclaims twice per stale_after
    flags = {"daemon.stale_after": timedelta(seconds=2), "daemon.heartbeat_interval": "500ms"}
    config = load_settings(env={}, flags=flags).daemon_config()
    assert (config.stale_after, config.heartbeat_interval, config.maintenance_interval) == (
        timedelta(seconds=2),
        timedelta(milliseconds=500),
        timedelta(seconds=1),
    )
    with pytest.raises(ConfigError, match=r"^command line: \[daemon\] stale_after: must be lon"):
        load_settings(env={}, flags={"daemon.stale_after": timedelta(0)})


# --- the command ------------------------------------------------------------------------


def test_config_command(
    full: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FUSILLADE_KEY_ALICE", "alice-secret-value")
    monkeypatch.setenv("FUSILLADE_SERVER_PORT", "9100")
    argv = ["config", "--config", str(full), "--database-url", "postgresql://u:pw@h/d"]
    assert main([*argv, "--upstream", "http://up:1"]) == 0
    out = capsys.readouterr().out
    assert "alice-secret-value" not in out
    assert ":pw@" not in out
    assert "port = 9100  # from FUSILLADE_SERVER_PORT" in out
    assert 'base_url = "http://up:1"  # from command line' in out
    assert tomllib.loads(out)["upstreams"]["default"]["api_key_env"] == "OPENAI_API_KEY"


def test_config_command_masks_userinfo_of_every_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FUSILLADE_CONFIG", raising=False)
    config = write(
        tmp_path,
        'database_url = "postgresql://app:DBPASS@db/f"\n'
        '[upstreams.proxy]\nbase_url = "https://user:UPPASS@proxy/v1"\n'
        '[upstreams.token]\nbase_url = "https://TOKEN@gateway"\n',
    )
    argv = ["config", "--config", str(config), "--upstream", "http://flag:FLAGPASS@up:1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for secret in ("DBPASS", "UPPASS", "TOKEN", "FLAGPASS"):
        assert secret not in out
    assert 'database_url = "postgresql://app:***@db/f"' in out
    assert 'base_url = "https://***@proxy/v1"' in out
    assert 'base_url = "https://***@gateway"' in out
    assert 'base_url = "http://***@up:1"' in out


def test_config_errors_mask_userinfo_of_urls(tmp_path: Path) -> None:
    # a base_url that is not http(s) is quoted back in the error, without its password
    message = error(tmp_path, '[upstreams.x]\nbase_url = "ftp://user:UPPASS@proxy/v1"\n')
    assert "base_url" in message and "ftp://***@proxy" in message
    assert "UPPASS" not in message


def test_config_command_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FUSILLADE_CONFIG", raising=False)
    assert main(["config", "--config", str(write(tmp_path, "[server]\nprot = 1"))]) == 1
    err = capsys.readouterr().err
    assert err.strip().endswith("config.toml: unknown key [server] prot")
    assert len(err.strip().splitlines()) == 1


# --- anything else is a ConfigError -----------------------------------------------------

KEYS = st.sampled_from(
    [
        *("database_url", "data_dir", "default_upstream", "port", "host", "api_keys", "key_env"),
        *("owner", "base_url", "api_key_env", "upstream", "concurrency", "stale_after", "x"),
    ]
)
SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
    st.sampled_from(["5s", "24h", "/v1/x", "http://h:1", "K", "0s", "a"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
SECTIONS = st.fixed_dictionaries(
    {},
    optional={
        "server": st.dictionaries(KEYS, VALUES, max_size=3),
        "daemon": st.dictionaries(KEYS, VALUES, max_size=3),
        "upstreams": st.dictionaries(KEYS, st.dictionaries(KEYS, VALUES, max_size=3), max_size=2),
        "models": st.dictionaries(KEYS, st.dictionaries(KEYS, VALUES, max_size=3), max_size=2),
    },
)


def toml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


@settings(max_examples=300, deadline=None)
@given(top=st.dictionaries(KEYS, VALUES, max_size=3), sections=SECTIONS)
def test_arbitrary_files_raise_only_config_errors(
    top: dict[str, object], sections: dict[str, object]
) -> None:
    text = "\n".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in {**top, **sections}.items())
    with TemporaryDirectory() as directory:
        path = Path(directory) / "config.toml"
        path.write_text(text)
        try:
            s = load_settings(path, env={})
        except ConfigError:
            return
        render(s, env={})
        s.daemon_config()


@settings(max_examples=200, deadline=None)
@given(
    env=st.dictionaries(
        st.sampled_from(
            [
                *("FUSILLADE_SERVER_PORT", "FUSILLADE_SERVER_API_KEYS", "FUSILLADE_DATA_DIR"),
                *("FUSILLADE_SERVER_ALLOWED_ENDPOINTS", "FUSILLADE_SERVER_COMPLETION_WINDOWS"),
                *("FUSILLADE_UPSTREAM", "FUSILLADE_UPSTREAM_API_KEY_ENV"),
                *("FUSILLADE_DAEMON_STALE_AFTER", "FUSILLADE_DAEMON_HEARTBEAT_INTERVAL"),
            ]
        ),
        st.text(max_size=20),
    )
)
# "~0" names no user: Path.expanduser raised RuntimeError, not a ConfigError.
@example(env={"FUSILLADE_DATA_DIR": "~0"})
def test_arbitrary_environments_raise_only_config_errors(env: dict[str, str]) -> None:
    with contextlib.suppress(ConfigError):
        load_settings(env=env).daemon_config()


# --- the reference stays current --------------------------------------------------------

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_docs_example_loads(tmp_path: Path) -> None:
    example = DOC.read_text().split("```toml\n")[1].split("```")[0]
    s = load_settings(write(tmp_path, example), env={})
    assert s.models["llama-3.1-8b"] == ModelSettings("local-vllm", 64)


def test_docs_name_every_key_and_variable() -> None:
    text = DOC.read_text()
    records = (
        Settings,
        ServerSettings,
        DaemonSettings,
        LogSettings,
        UpstreamSettings,
        ModelSettings,
        OwnerSettings,
        WebhookSettings,
    )
    for cls in records:
        for field in attrs.fields(cls):
            if not attrs.has(field.type) and field.name not in (
                "upstreams",
                "models",
                "owners",
                "webhooks",
                "sources",
            ):
                assert f"| `{field.name}` |" in text, field.name
    for section, cls in (
        ((), Settings),
        (("server",), ServerSettings),
        (("daemon",), DaemonSettings),
        (("log",), LogSettings),
    ):
        for field in attrs.fields(cls):
            if not attrs.has(field.type) and field.name not in (
                "upstreams",
                "models",
                "owners",
                "webhooks",
                "sources",
            ):
                variable = "_".join(["FUSILLADE", *section, field.name]).upper()
                assert f"`{variable}`" in text, variable


def test_log_keys_from_file_variables_and_flags(tmp_path: Path) -> None:
    assert load_settings(env={}).log == LogSettings(level=None, format="text")
    path = write(tmp_path, '[log]\nlevel = "DEBUG"\nformat = "json"\n')
    assert load_settings(path, env={}).log == LogSettings("debug", "json")
    env = {"FUSILLADE_LOG_LEVEL": "warning", "FUSILLADE_LOG_FORMAT": "json"}
    assert load_settings(env=env).log == LogSettings("warning", "json")
    flags = {"log.level": "error", "log.format": "text"}
    assert load_settings(env=env, flags=flags).log == LogSettings("error", "text")
    with pytest.raises(ConfigError, match=r"\[log\] format: must be one of text, json"):
        load_settings(env={"FUSILLADE_LOG_FORMAT": "xml"})
    s = load_settings(path, env={})
    assert load_settings(write(tmp_path, render(s, env={})), env={}) == s


def test_a_config_path_naming_no_user_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="FUSILLADE_CONFIG: names a home directory"):
        load_settings(env={"FUSILLADE_CONFIG": "~no-such-user-fusillade/f.toml"})


def test_allowed_hosts_from_the_environment() -> None:
    env = {"FUSILLADE_SERVER_ALLOWED_HOSTS": "batch.internal, ui.internal:3000,[::1]:8000,*"}
    hosts = load_settings(env=env).server.allowed_hosts
    assert hosts == ("batch.internal", "ui.internal:3000", "[::1]:8000", "*")
    assert load_settings(env={}).server.allowed_hosts == ()


# --- issue 13: budgets and owner weights -------------------------------------------------


def test_budget_keys_of_upstreams_models_and_owners(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path,
            """
            [upstreams.openai]
            base_url = "https://api.openai.com"
            max_in_flight = 64
            rpm = 500
            tpm = 200000
            budget_share = 0.5
            [models."gpt-4o"]
            upstream = "openai"
            rpm = 100
            [owners.alice]
            weight = 3
            [owners."bob the builder"]
            weight = 0.5
            """,
        ),
        env={},
    )
    assert s.upstreams["openai"] == UpstreamSettings(
        "https://api.openai.com", None, max_in_flight=64, rpm=500, tpm=200000, budget_share=0.5
    )
    assert s.models["gpt-4o"] == ModelSettings("openai", rpm=100)
    assert s.owners == {"alice": OwnerSettings(3.0), "bob the builder": OwnerSettings(0.5)}
    assert load_settings(write(tmp_path, render(s, env={})), env={}) == s


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('[upstreams.u]\nbase_url = "http://h"\nbudget_share = 0', "above 0 and at most 1"),
        ('[upstreams.u]\nbase_url = "http://h"\nbudget_share = 1.5', "above 0 and at most 1"),
        ('[upstreams.u]\nbase_url = "http://h"\nrpm = 0', "integer >= 1"),
        ('[models.m]\ntpm = "many"', "integer >= 1"),
        ("[owners.a]\nweight = -1", "above 0"),
        ("[owners.a]\nweight = true", "above 0"),
    ],
)
def test_budget_keys_are_checked(tmp_path: Path, table: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(write(tmp_path, table), env={})


def test_rate_flags_set_the_default_upstreams_budget() -> None:
    flags: dict[str, object] = {
        "upstream": "http://127.0.0.1:8001",
        "upstream.rpm": 1200,
        "upstream.tpm": 90000,
        "upstream.max_in_flight": 8,
    }
    s = load_settings(env={}, flags=flags)
    u = s.upstreams["default"]
    assert (u.rpm, u.tpm, u.max_in_flight, u.budget_share) == (1200, 90000, 8, 0.9)


def test_rate_flags_need_an_upstream() -> None:
    with pytest.raises(ConfigError, match="--rpm needs an upstream"):
        load_settings(env={}, flags={"upstream.rpm": 10})


def test_budgets_and_weights_reach_the_daemon(tmp_path: Path) -> None:
    # what serve and run give the daemon: the deployment's budgets by upstream and model
    # (a model's learned limits use its upstream's budget_share), owner weights, slow start
    s = load_settings(
        write(
            tmp_path,
            """
            default_upstream = "openai"
            [upstreams.openai]
            base_url = "https://api.openai.com"
            rpm = 500
            budget_share = 0.5
            slow_start = false
            [upstreams.local]
            base_url = "http://127.0.0.1:8001"
            [models."gpt-4o"]
            tpm = 90000
            [models.llama]
            upstream = "local"
            concurrency = 8
            [owners.alice]
            weight = 2
            [daemon]
            default_max_output_tokens = 256
            """,
        ),
        env={},
    )
    d = s.daemon_config()
    assert d.budget_limits("openai", None) == BudgetLimits(rpm=500, share=0.5)
    assert d.budget_limits("openai", "gpt-4o") == BudgetLimits(tpm=90000, share=0.5)
    assert d.budget_limits("openai", "unnamed") == BudgetLimits(share=0.5)
    assert d.budget_limits("local", None) == BudgetLimits()
    assert d.upstreams["openai"].slow_start is False
    assert d.upstreams["local"].slow_start is True
    # no max_in_flight: 8 x default_concurrency for unnamed models, plus llama's 8
    assert d.upstream_cap("local") == 8 * 16 + 8
    assert d.upstream_cap("openai") == 8 * 16
    assert d.owner_weights == {"alice": 2.0}
    assert d.default_max_output_tokens == 256


# --- issue 15: webhooks -------------------------------------------------------------------


def test_webhooks_load_render_and_reach_the_daemon(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[daemon]\nwebhook_timeout = "3s"\nwebhook_allow_private = true\n'
        '[webhooks."alice"]\nurl = "https://hooks.example/in"\nsecret_env = "ALICE_WHSEC"\n'
        '[webhooks."bob the builder"]\nurl = "http://10.0.0.1/x"\nsecret_env = "BOB_WHSEC"\n'
        'events = ["batch.completed", "batch.failed"]\n',
    )
    s = load_settings(path, env={})
    assert s.webhooks == {
        "alice": WebhookSettings("https://hooks.example/in", "ALICE_WHSEC"),
        "bob the builder": WebhookSettings(
            "http://10.0.0.1/x", "BOB_WHSEC", ("batch.completed", "batch.failed")
        ),
    }
    rendered = render(s, env={"ALICE_WHSEC": "whsec_c2VjcmV0"})
    assert "whsec_" not in rendered and 'secret_env = "ALICE_WHSEC"  # set' in rendered
    (tmp_path / "again.toml").write_text(rendered)
    assert load_settings(tmp_path / "again.toml", env={}) == s
    config = s.daemon_config()
    assert config.webhook_allow_private and config.webhook_timeout == timedelta(seconds=3)
    assert config.webhooks["alice"].wants("batch.expired")
    assert not config.webhooks["bob the builder"].wants("batch.expired")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('url = "ftp://x"\nsecret_env = "S"', "url: must be an http"),
        ('url = "http://x"\nsecret_env = "whsec_abc="', "secret_env: must be the NAME"),
        ('url = "http://x"\nsecret_env = "S"\nevents = ["batch.done"]', "events: each entry"),
        ('url = "http://x"', "secret_env: required"),
    ],
)
def test_webhook_mistakes_are_config_errors(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, f'[webhooks."alice"]\n{table}\n'), env={})


# --- issue 16: the sender -----------------------------------------------------------------


def test_sender_from_file_and_variable_reaches_the_daemon(tmp_path: Path) -> None:
    assert load_settings(env={}).daemon_config().sender == "httptools"  # the default
    assert DaemonConfig().sender == "httptools"
    path = write(tmp_path, '[daemon]\nsender = "httpcore"\n')
    assert load_settings(path, env={}).daemon_config().sender == "httpcore"
    env = {"FUSILLADE_DAEMON_SENDER": "httpcore"}
    assert load_settings(env=env).daemon_config().sender == "httpcore"
    with pytest.raises(ConfigError, match="FUSILLADE_DAEMON_SENDER"):
        load_settings(env={"FUSILLADE_DAEMON_SENDER": "pycurl"})
    with pytest.raises(ValueError, match="sender"):
        DaemonConfig(sender="pycurl")


def test_a_proxy_and_its_exceptions_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[daemon]\nproxy = "http://user:secret@proxy.internal:3128"\n'
        'no_proxy = ["vllm.internal", ".corp", "10.0.0.7:8000"]\n',
    )
    config = load_settings(path, env={}).daemon_config()
    assert config.proxy == "http://user:secret@proxy.internal:3128"
    assert config.no_proxy == ("vllm.internal", ".corp", "10.0.0.7:8000")
    env = {"FUSILLADE_DAEMON_PROXY": "http://p:3128", "FUSILLADE_DAEMON_NO_PROXY": "a, b:81"}
    config = load_settings(env=env).daemon_config()
    assert (config.proxy, config.no_proxy) == ("http://p:3128", ("a", "b:81"))
    assert load_settings(env={}).daemon_config().proxy is None  # none unless configured


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('proxy = "https://user:secret@p:3128"', r"\[daemon\] proxy: must be an http:// URL"),
        ('proxy = "socks5://p:1080"', r"\[daemon\] proxy: must be an http:// or https:// URL"),
        ('proxy = "http://p:3128"\nsender = "httpcore"', r"\[daemon\] sender: a proxy needs"),
        ('no_proxy = ["a b"]', r"\[daemon\] no_proxy: each entry"),
    ],
)
def test_a_proxy_that_cannot_work_is_a_config_error(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(write(tmp_path, f"[daemon]\n{text}\n"), env={})
    assert "secret" not in str(caught.value)  # the error never shows a credential
