"""What the integrations share: the one-sentence error for a missing framework, and the attach options."""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any

import normwatch

# The keyword arguments of normwatch.attach that an integration passes through (it chooses model,
# optimizer, where to write and the start step itself).
ATTACH_OPTIONS = (frozenset(inspect.signature(normwatch.attach).parameters)
                  - {"model", "optimizer", "logdir", "writer", "start_step"})


def import_first(integration: str, framework: str, extra: str, *modules: str) -> dict[str, ModuleType]:
    """Import every module of ``modules`` that is installed; when none is, raise the one-sentence ImportError.

    Raises:
        ImportError: "normwatch.integrations.<x> needs <Framework>: pip install 'normwatch[<extra>]'".
    """
    found: dict[str, ModuleType] = {}
    error: ImportError | None = None
    for name in modules:
        try:
            found[name] = importlib.import_module(name)
        except ImportError as missing:
            error = error or missing
    if not found:
        raise ImportError(f"{integration} needs {framework}: pip install 'normwatch[{extra}]'") from error
    return found


def check_options(owner: str, options: dict[str, Any]) -> dict[str, Any]:
    """Reject keyword arguments that :func:`normwatch.attach` does not take, naming the ones it does."""
    unknown = sorted(set(options) - ATTACH_OPTIONS)
    if unknown:
        raise TypeError(f"{owner} got unexpected keyword arguments {', '.join(map(repr, unknown))}; the normwatch "
                        f"options are {', '.join(sorted(ATTACH_OPTIONS))}.")
    return dict(options)
