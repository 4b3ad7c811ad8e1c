"""The public API: everything in ``__all__`` exists, and ``__all__`` is complete.

Complete means two things: every public name of the package is in ``__all__``, and every
fusillade type that a public signature names (a parameter, a return, a field of an
exported record) is itself exported, from ``fusillade`` or ``fusillade.testing``; so a
user can name every type they are handed, and a new signature with an internal type fails
here.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterator
from typing import Any

import attrs

import fusillade
import fusillade.testing
from fusillade.core.attempts import ClaimedRequest
from fusillade.core.jsonl import CheckedLine, JsonlValidator
from fusillade.store.interface import BatchSpec

PUBLIC_MODULES = (fusillade, fusillade.testing)

# A repository is handed to ``open`` and held by the engine, but its methods are the
# interface between the engine, the daemon and a store (claims, fenced writes...), not
# the user's: their signatures are not checked (``fusillade``'s docstring says so).
OPAQUE = (fusillade.Repository, fusillade.testing.MemoryRepository)


def exported() -> dict[str, Any]:
    """Every name in the ``__all__`` of a public module, and its object."""
    names: dict[str, Any] = {}
    for module in PUBLIC_MODULES:
        names.update({name: getattr(module, name) for name in module.__all__})
    return names


def _fusillade_types(hint: object) -> Iterator[type]:
    """The fusillade classes a resolved annotation names, at any depth."""
    origin = typing.get_origin(hint)
    if origin is not None:
        yield from _fusillade_types(origin)
        for arg in typing.get_args(hint):
            yield from _fusillade_types(arg)
    elif isinstance(hint, (list, tuple)):  # Callable[[A, B], C] arguments
        for arg in hint:
            yield from _fusillade_types(arg)
    elif isinstance(hint, type) and hint.__module__.split(".")[0] == "fusillade":
        yield hint


def _hints(obj: object, fallback: dict[str, Any]) -> dict[str, Any]:
    """``typing.get_type_hints``; a name imported only for type checkers resolves to the
    export of that name, or fails (so it must be exported)."""
    module = inspect.getmodule(obj)
    own = vars(module) if module is not None else {}
    globalns = getattr(inspect.unwrap(obj), "__globals__", own)  # type: ignore[arg-type]  # any callable
    localns = {k: v for k, v in fallback.items() if k not in globalns}
    return typing.get_type_hints(obj, localns=localns)


def _callables(obj: object) -> Iterator[tuple[str, object]]:
    """The public functions, methods and properties of an exported object."""
    if not isinstance(obj, type):
        if callable(obj):
            yield "", obj
        return
    for klass in reversed(obj.__mro__):
        if klass.__module__.split(".")[0] != "fusillade":
            continue
        for attr, member in vars(klass).items():
            if attr.startswith("_") and attr != "__init__":
                continue
            if isinstance(member, property):
                member = member.fget
            elif isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if callable(member) and not isinstance(member, type):
                yield f".{attr}", member


def unexported_types(objects: dict[str, Any]) -> dict[str, set[str]]:
    """Each fusillade type named in a public signature of ``objects`` but not among them,
    with where it is named."""
    known = {id(value) for value in objects.values()}
    found: dict[str, set[str]] = {}
    for name, obj in objects.items():
        if any(obj is opaque for opaque in OPAQUE) or isinstance(obj, types.ModuleType):
            continue
        where = [(name + suffix, fn) for suffix, fn in _callables(obj)]
        if isinstance(obj, type) and not issubclass(obj, BaseException):
            where.append((name, obj))  # class-level annotations: attributes, attrs fields
        for place, annotated in where:
            try:
                hints = _hints(annotated, objects)
            except NameError as e:  # imported only for type checkers, and not exported
                found.setdefault(f"{e.name} (not importable)", set()).add(place)
                continue
            if annotated is obj:
                hints = {k: v for k, v in hints.items() if not k.startswith("_")}
            for hint in hints.values():
                for t in _fusillade_types(hint):
                    if id(t) not in known:
                        found.setdefault(f"{t.__module__}.{t.__qualname__}", set()).add(place)
    return found


def test_all_is_sorted_and_resolves() -> None:
    for module in PUBLIC_MODULES:
        assert module.__all__ == sorted(module.__all__), module
        for name in module.__all__:
            assert hasattr(module, name), name


def test_all_is_complete() -> None:
    for module in PUBLIC_MODULES:
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        }
        public.discard("annotations")
        assert public <= set(module.__all__), public - set(module.__all__)


def test_every_type_in_a_public_signature_is_exported() -> None:
    assert unexported_types(exported()) == {}


@attrs.frozen
class Record:
    spec: BatchSpec | None


def function(spec: list[dict[str, ClaimedRequest]]) -> None: ...


def test_the_signature_check_sees_an_unexported_type() -> None:
    """The check finds an internal type in a parameter, a return, a field, a property and
    a nested generic, so a passing test means something."""
    assert set(unexported_types({**exported(), "Record": Record})) == {
        "fusillade.store.interface.BatchSpec"
    }
    assert set(unexported_types({**exported(), "function": function})) == {
        "fusillade.core.attempts.ClaimedRequest"
    }
    missing = unexported_types({"JsonlValidator": JsonlValidator})
    assert "JsonlValidator.problems" in missing["fusillade.core.jsonl._limits.LineProblem"]
    assert "JsonlValidator.__init__" in missing["fusillade.core.jsonl._limits.JsonlLimits"]
    assert unexported_types({"CheckedLine": CheckedLine})[
        "fusillade.core.models.RequestTemplate"
    ] == {"CheckedLine", "CheckedLine.__init__"}
    # errors.py imports LineProblem for type checkers only: it resolves only when exported
    assert unexported_types({"InvalidJSONL": fusillade.InvalidJSONL}) == {
        "LineProblem (not importable)": {"InvalidJSONL.__init__"}
    }
