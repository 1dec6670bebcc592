"""The examples in normwatch's docstrings run and print what they say (the package's own docstring, an
illustration with a model and optimizer of the reader's, is not run)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import normwatch

MODULES = sorted(info.name for info in pkgutil.walk_packages(normwatch.__path__, "normwatch."))


def test_every_module_is_found() -> None:
    assert {"normwatch.theory", "normwatch.report.stats", "normwatch.rules.adam"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (printed above)"
