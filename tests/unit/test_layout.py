"""The layout of the repository: the test tree, and docs/architecture.md against the code.

pytest imports test modules by basename (no packages), so two test files with one name
in different folders break collection of the whole suite.

docs/architecture.md describes the code as it is: every module, package and file it
names exists (its layout tree, ``fusillade.x.y`` names, and ``.py``/``.sql`` paths
anywhere on the page), and its tree names every top-level package and module of
``fusillade/``.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TESTS = ROOT / "tests"
PACKAGE = ROOT / "fusillade"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# A tree entry: one or more names (``files.py, batches.py``), each a file or a folder/.
_ENTRY_NAME = re.compile(r"[A-Za-z0-9_.]+(/|\.py|\.sql)")
# fusillade.core.retry, fusillade.open (an attribute of a module is fine too).
_DOTTED = re.compile(r"(?<![\w./-])fusillade(?:\.[A-Za-z_]\w*)+")
# core/retry.py, sql/queries/claim.sql, freeze_batch.sql, docs/performance.md.
_PATH = re.compile(r"(?<![\w./*{}-])(?:[\w.-]+/)*[\w-][\w.-]*\.(?:py|sql|md|toml)\b")


def test_test_module_names_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("*.py") if p.name != "conftest.py")
    assert [n for n, c in names.items() if c > 1] == []


def _fenced_blocks(text: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def tree_paths(text: str) -> list[str]:
    """The paths the layout tree names (the fenced block that starts with ``fusillade/``).

    An entry is indented two spaces under its folder; its names end in ``/``, ``.py`` or
    ``.sql`` and are followed by two spaces and a description. A line whose first words
    are not such names continues the description above it.
    """
    [tree] = [b for b in _fenced_blocks(text) if b and b[0] == "fusillade/"]
    paths: list[str] = []
    folders: list[tuple[int, str]] = []  # (indent, path) of the open folders
    for line in tree:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        names = re.split(r" {2,}", line.strip(), maxsplit=1)[0].split(", ")
        if not all(_ENTRY_NAME.fullmatch(n) for n in names):
            continue  # a description's second line
        while folders and folders[-1][0] >= indent:
            folders.pop()
        parent = folders[-1][1] if folders else ""
        for name in names:
            paths.append(parent + name)
        if len(names) == 1 and names[0].endswith("/"):
            folders.append((indent, parent + names[0]))
    return paths


def missing_tree_paths(text: str) -> list[str]:
    return [p for p in tree_paths(text) if not (ROOT / p).exists()]


def top_level_entries() -> set[str]:
    """Every top-level package (``core/``) and module (``cli.py``) of ``fusillade/``."""
    packages = {p.name + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.name for p in PACKAGE.glob("*.py")}
    return packages | modules


def omitted_top_level(text: str) -> set[str]:
    named = {p.removeprefix("fusillade/") for p in tree_paths(text)}
    return top_level_entries() - named


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    module = None
    n = len(parts)
    while n > 0:  # the longest importable prefix
        try:
            module = importlib.import_module(".".join(parts[:n]))
            break
        except ModuleNotFoundError:
            n -= 1
    obj: object = module
    for attr in parts[n:]:
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
    return module is not None


def unresolved_modules(text: str) -> list[str]:
    return sorted({d for d in _DOTTED.findall(text) if not _resolves(d)})


def _path_exists(token: str) -> bool:
    if "/" in token:
        return (ROOT / token).exists() or (PACKAGE / token).exists()
    # A bare file name: a top-level file, or one of that name in the code, SQL or docs.
    if (ROOT / token).exists():
        return True
    return any(
        next(top.rglob(token), None) is not None for top in (PACKAGE, ROOT / "sql", ROOT / "docs")
    )


def missing_paths(text: str) -> list[str]:
    return sorted({p for p in _PATH.findall(text) if not _path_exists(p)})


def test_architecture_tree_names_only_what_exists() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    assert len(tree_paths(text)) > 20  # the tree was found and read
    assert missing_tree_paths(text) == []


def test_architecture_tree_names_every_top_level_package_and_module() -> None:
    assert omitted_top_level(ARCHITECTURE.read_text(encoding="utf-8")) == set()


def test_architecture_names_only_modules_that_exist() -> None:
    assert unresolved_modules(ARCHITECTURE.read_text(encoding="utf-8")) == []


def test_architecture_names_only_files_that_exist() -> None:
    assert missing_paths(ARCHITECTURE.read_text(encoding="utf-8")) == []


def test_the_checks_see_what_is_wrong() -> None:
    """Each check finds a planted mistake, so a passing test means something."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    stale = text.replace(
        "    limits.py        per-model", "    limits.py        per-model\n    gone.py          x"
    )
    assert missing_tree_paths(stale) == ["fusillade/runtime/gone.py"]
    assert omitted_top_level(text.replace("  serde.py  ", "  serde2.py  ")) == {"serde.py"}
    assert unresolved_modules(text + "\n`fusillade.store.postgres_old`, `fusillade.nope`") == [
        "fusillade.nope",
        "fusillade.store.postgres_old",
    ]
    assert missing_paths(text + "\n`store/postgres.py`, `no_such_query.sql`") == [
        "no_such_query.sql",
        "store/postgres.py",
    ]
