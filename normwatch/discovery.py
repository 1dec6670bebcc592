"""Finding the layers to record, at the first training forward of the model a Watcher is attached to.

A forward pre-hook runs detection (:func:`normwatch.detect.scan`) on that forward's inputs, retries on the
next forward when it fails (:data:`DETECTION_TRIES` in all), waits while lazy modules are uninitialised,
and applies the user's ``layers`` patterns. ``Module.compile()`` before attach is set aside until detection
has run (its compiled ``__call__`` would skip the hook); a ``torch.compile`` wrapper made after attach
cannot be inspected, and the first optimizer step says so.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from normwatch._warn import warn
from normwatch.detect import Layer, scan, unwrap
from normwatch.options import ForwardFilter

DETECTION_TRIES = 3  # training forwards on which detection may fail before normwatch gives up


class Discovery:
    """The detection hook of one Watcher; calls ``on_found(layers, said)`` once, when detection is over
    (``said``: a warning already explained an empty or failed result)."""

    def __init__(self, model: nn.Module, *, confirm: bool, patterns: Sequence[str],
                 forward_filter: ForwardFilter | None, warn_undetected: bool,
                 on_found: Callable[[list[Layer], bool], None]) -> None:
        self._model = model
        self._confirm = confirm
        self._patterns = list(patterns)
        self._forward_filter = forward_filter
        self._warn_undetected = warn_undetected  # a step with no detection yet says why, once
        self._on_found = on_found
        self._failures = 0
        self.done = False
        self._running = False  # inside detection's own forwards
        self._compiled_call: Any = None  # Module.compile()'s compiled __call__, set aside until detection
        if getattr(model, "_compiled_call_impl", None) is not None:  # its compiled __call__ runs hooks inside
            self._compiled_call, model._compiled_call_impl = model._compiled_call_impl, None
        self._handle = model.register_forward_pre_hook(self._on_forward, with_kwargs=True)

    def close(self) -> None:
        """Remove the hook (torch may still hold it for a forward under way: it does nothing from now on)."""
        self.done = True
        self._handle.remove()
        self._restore_compiled_call()

    def after_step(self) -> None:
        """In the step post-hook while nothing is detected yet: set a later ``Module.compile()`` aside, or
        say once why nothing is recorded."""
        if getattr(self._model, "_compiled_call_impl", None) is not None:
            # Module.compile() after attach traced the hook as a no-op: the next forward runs eagerly instead
            self._compiled_call, self._model._compiled_call_impl = self._model._compiled_call_impl, None
        elif self._warn_undetected:
            self._warn_undetected = False
            warn("normwatch: the optimizer stepped before any training-mode forward of the module it "
                 "is attached to reached normwatch, so nothing is recorded yet: attach to the module "
                 "the loop calls, in train() mode, and with torch.compile attach after compiling "
                 "(normwatch.attach(torch.compile(model), optimizer)).", RuntimeWarning)

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
        # Inside torch.compile (a model compiled after attach) this is traced as a no-op: no graph break, and
        # detection, which needs eager tensors, waits; after_step says so if it never happens.
        if torch.compiler.is_compiling() or self.done or self._running or not module.training:
            return
        if self._forward_filter is not None and not self._forward_filter(module, args, kwargs or {}):
            return  # not the model's own forward (e.g. a trainer's redirected training_step)
        if any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in unwrap(module).modules()):
            self._warn_undetected = False  # the hook works: detection waits for the next forward
            return  # this forward initialises them from the global RNG: detection waits for the next one
        found = self._scan(module, args, kwargs or {})
        if found is None:
            return
        self.close()
        self._on_found(select(found, self._patterns, self._model), bool(found) or self._failures > 0)

    def _scan(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Layer] | None:
        """Detection on this forward's inputs; None to try again on the next forward."""
        self._running = True
        try:
            return scan(module, args, kwargs, confirm=self._confirm)
        except Exception as error:
            self._failures += 1
            self._warn_undetected = False  # the forward did reach normwatch; the warning below says what failed
            last = self._failures == DETECTION_TRIES
            if self._failures == 1 or last:
                then = "nothing will be recorded" if last else "it tries again on the next training forward"
                warn(f"normwatch: could not trace the model's forward ({error!r}); {then}. Training is "
                     "not affected.", RuntimeWarning)
            return [] if last else None
        finally:
            self._running = False

    def _restore_compiled_call(self) -> None:
        if self._compiled_call is not None:
            self._model._compiled_call_impl, self._compiled_call = self._compiled_call, None


def select(found: list[Layer], patterns: Sequence[str], model: nn.Module) -> list[Layer]:
    """Apply ``layers`` patterns: ``"pat"`` keeps matching detected layers, ``"-pat"`` drops them, ``"+pat"``
    adds modules with a weight that detection did not find; warn about patterns that match nothing."""
    keep = [p for p in patterns if p[:1] not in "+-"]
    drop = [p[1:] for p in patterns if p.startswith("-")]
    add = [p[1:] for p in patterns if p.startswith("+")]
    for pattern in keep + drop:
        if not any(fnmatch.fnmatchcase(layer.name, pattern) for layer in found):
            warn(f"normwatch: layers pattern {pattern!r} matches no detected layer "
                 f"(detected: {', '.join(layer.name for layer in found) or 'none'}).")
    chosen = [layer for layer in found if (not keep or any(fnmatch.fnmatchcase(layer.name, p) for p in keep))
              and not any(fnmatch.fnmatchcase(layer.name, p) for p in drop)]
    if found and not chosen and not add:
        warn(f"normwatch: the layers patterns {list(patterns)} leave none of the {len(found)} detected "
             "layers: nothing will be recorded.", RuntimeWarning)
    names = {layer.name for layer in chosen}
    for pattern in add:
        matches = [n for n, m in unwrap(model).named_modules() if fnmatch.fnmatchcase(n, pattern)
                   and isinstance(getattr(m, "weight", None), nn.Parameter)]
        if not matches:
            warn(f"normwatch: layers pattern '+{pattern}' matches no module with a weight.")
        for name in matches:
            if name not in names:
                names.add(name)
                chosen.append(Layer(name, "(added by user)", (f"{name}.weight",), "tensor", 1))
    return chosen
