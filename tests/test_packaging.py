"""A plain (non-editable) install ships every subpackage: pyproject.toml lists them by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11


ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_of_the_tree() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "normwatch").rglob("__init__.py")}
    on_disk |= {"normwatch.integrations"} if (ROOT / "integrations" / "__init__.py").exists() else set()
    assert set(setuptools["packages"]) == on_disk
    assert setuptools["package-dir"]["normwatch.integrations"] == "integrations"
