"""The public API: everything in ``__all__`` exists, and ``__all__`` is complete."""

from __future__ import annotations

import types

import fusillade


def test_all_is_sorted_and_resolves() -> None:
    assert fusillade.__all__ == sorted(fusillade.__all__)
    for name in fusillade.__all__:
        assert hasattr(fusillade, name), name


def test_all_is_complete() -> None:
    public = {
        name
        for name, value in vars(fusillade).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    public.discard("annotations")
    assert public <= set(fusillade.__all__), public - set(fusillade.__all__)
