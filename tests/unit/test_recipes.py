"""docs/recipes.md: every TOML snippet loads and every ``fusillade`` command line parses.

The recipes are copied by hand into shells and files, so a renamed flag or key must fail
here rather than there. Each TOML snippet starts with ``# NAME.toml``; the commands name
those files with ``--config``, and each is checked with the file it names, as the real
command would read it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fusillade.cli._main import build_parser
from fusillade.config import load_settings, settings_from_args

DOC = Path(__file__).parents[2] / "docs" / "recipes.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
FILE_NAME = re.compile(r"# ([\w.-]+\.toml)\n")


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(DOC.read_text()) if lang == language]


def snippets() -> dict[str, str]:
    """The TOML snippets by the file name on their first line."""
    named = {}
    for body in blocks("toml"):
        match = FILE_NAME.match(body)
        assert match, f"a TOML snippet without a '# NAME.toml' first line:\n{body}"
        named[match.group(1)] = body
    return named


def commands() -> list[list[str]]:
    """Every ``fusillade ...`` line of the shell blocks, continuations joined, split."""
    found = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["fusillade"]:
                found.append(words[1:])
    return found


def test_the_doc_has_the_recipes() -> None:
    # a broken pattern would find nothing and pass every test below
    assert {"openai.toml", "vllm.toml", "ollama.toml", "llama-cpp.toml", "gateway.toml"} <= set(
        snippets()
    )
    assert len(commands()) >= 12


@pytest.mark.parametrize("name", sorted(snippets()))
def test_every_toml_snippet_loads(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(snippets()[name])
    settings = load_settings(path, env={})
    assert settings.default_upstream in settings.upstreams
    settings.daemon_config()


@pytest.mark.parametrize("argv", commands(), ids=" ".join)
def test_every_command_parses_and_loads(tmp_path: Path, argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    if args.config is not None:
        name = str(args.config)
        assert name in snippets(), f"--config {name} names no snippet of the doc"
        args.config = tmp_path / name
        args.config.write_text(snippets()[name])
    settings_from_args(args, env={}).daemon_config()


def test_every_snippet_has_a_run_and_a_serve_command() -> None:
    used = {
        (argv[0], argv[argv.index("--config") + 1]) for argv in commands() if "--config" in argv
    }
    for name in snippets():
        assert ("run", name) in used, name
        assert ("serve", name) in used, name
