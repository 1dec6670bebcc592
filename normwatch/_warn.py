"""Warnings that point at the user's line: the first frame outside torch and normwatch (the training loop's
``model(x)`` or ``optimizer.step()``), not the hook inside torch that called normwatch."""

from __future__ import annotations

import os
import sys
import warnings

import torch

_INTERNAL = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(os.path.abspath(__file__)) + os.sep)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` with the stack level of the first caller outside torch and normwatch."""
    frame, level = sys._getframe(0), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL + _integrations()):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _integrations() -> tuple[str, ...]:
    integrations = sys.modules.get("normwatch.integrations")
    return (os.path.dirname(integrations.__file__) + os.sep,) if integrations and integrations.__file__ else ()
