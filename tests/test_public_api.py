"""Each package's ``__all__`` is exactly its public API, kept sorted.

Covers every package of the distribution that defines ``__all__``; packages that cannot be
imported here (a missing optional dependency) are skipped.
"""

from __future__ import annotations

import importlib
import types
import typing
from typing import Any

import pytest

PACKAGES = ("tracefmt", "recorder", "replayer", "tui")


def _package(name: str) -> types.ModuleType:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        pytest.skip(f"{name} cannot be imported here: {exc}")
    if not hasattr(module, "__all__"):
        pytest.skip(f"{name} defines no __all__")
    return module


def _is_typing_helper(value: Any) -> bool:
    """``from __future__ import annotations``, ``from typing import Any``: not API."""
    return (type(value).__module__ == "__future__" or value is typing.TYPE_CHECKING
            or getattr(value, "__module__", None) in ("typing", "typing_extensions"))


class TestDunderAll:
    """``__all__`` of each package."""

    @pytest.mark.parametrize("name", PACKAGES)
    def test_every_listed_name_exists(self, name: str) -> None:
        """Each name in ``__all__`` resolves (lazily exported ones included)."""
        module = _package(name)
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert missing == []

    @pytest.mark.parametrize("name", PACKAGES)
    def test_every_public_attribute_is_listed(self, name: str) -> None:
        """Each public attribute that is not a submodule or a typing helper is in ``__all__``."""
        module = _package(name)
        public = {n for n, v in vars(module).items()
                  if not n.startswith("_") and not isinstance(v, types.ModuleType)
                  and not _is_typing_helper(v)}
        assert sorted(public - set(module.__all__)) == []

    @pytest.mark.parametrize("name", PACKAGES)
    def test_is_sorted_without_duplicates(self, name: str) -> None:
        """``__all__`` is sorted and lists each name once."""
        names = list(_package(name).__all__)
        assert names == sorted(set(names))
