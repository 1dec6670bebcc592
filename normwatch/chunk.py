"""One chunk of a bucket's tensors in one recorded step: the memory's step and per-block partial sums.

Every argument is a ``(blocks, BLOCK)`` view of a flat buffer (:mod:`normwatch.flat`) or a number, so the
same few kernels serve any number of tensors; :func:`eager` runs them as they are, and :func:`fused`
(``attach(fused=True)``) through ``torch.compile``, which fuses them (its products are never stored). The
partial sums are :data:`PARTIALS`: squared norms first (kept as norms until :func:`finish` squares them),
then dot products; ``sums.SUMS`` lists the same names after ``present``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from normwatch._warn import warn
from normwatch.rules import RULES, Decoupled, Hyper

NORMS = ("ww", "gg", "vv", "uu", "uwd2", "ug2", "tgg")  # per block: √ of the sum of squares
DOTS = ("wg", "gv", "wu", "w_uwd", "u_uwd", "w_ug")
PARTIALS = NORMS + DOTS
ROW = {name: i for i, name in enumerate(PARTIALS)}
SPLIT_ROWS = (slice(ROW["uwd2"], ROW["ug2"] + 1), slice(ROW["w_uwd"], ROW["w_ug"] + 1))  # 2 runs of rows


def partials(hp: Hyper, w: torch.Tensor, v: torch.Tensor, g: torch.Tensor, w_next: torch.Tensor,
             state: dict[str, torch.Tensor], spreads: dict[str, torch.Tensor], first: bool,
             skip: torch.Tensor | None, out: torch.Tensor, product: torch.Tensor | None) -> Decoupled | None:
    """Fill ``out`` (len(PARTIALS), blocks) for the update w → w_next, and advance the memory ``v`` in place.

    ``v ← a·v + b·(s·ĝ)`` (the rule's :meth:`~normwatch.rules.Rule.memory_coefficients` and
    :meth:`~normwatch.rules.Rule.memory_scale`; ``ĝ = −g`` under ``maximize``), unless ``skip`` (a fused
    optimizer's ``found_inf``, on the device) says the optimizer skipped the step. ``g``, ``w_next`` and the
    ``state`` rows are scratch and are overwritten: ``w_next`` becomes u = w_next − w, then u_g = u − u_wd.
    ``product`` is scratch for the dot products, or None to compute them as ``(x·y).sum()`` (which a compiler
    fuses). Returns the decay part when it is :class:`~normwatch.rules.Decoupled` (its rows are filled by
    :func:`finish`), else None.
    """
    rule = RULES[hp.rule]

    def norm(x: torch.Tensor, name: str) -> None:
        torch.linalg.vector_norm(x, dim=1, out=out[ROW[name]])

    def dot(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
        if product is None:
            out[ROW[name]] = (x * y).sum(1)
        else:
            torch.sum(torch.mul(x, y, out=product), dim=1, out=out[ROW[name]])

    norm(w, "ww"), norm(g, "gg"), norm(v, "vv"), dot(g, w, "wg")
    if rule.uses_trust(hp):  # lars_ratio's t|g|: the trust ratio (per tensor or per channel) times g
        norm(g * state["trust_ratio"] if product is None else torch.mul(g, state["trust_ratio"], out=product), "tgg")
    if hp.maximize:
        g.neg_()  # the optimizer feeds −g to its state; its memory and autocorrelation follow
    dot(g, v, "gv")
    if rule.mirrors(hp) and (scale := rule.memory_scale(hp, state, spreads.__getitem__)) is not None:
        g.mul_(scale)
    step_memory(v, g, *rule.memory_coefficients(hp, first), skip)
    u = w_next.sub_(w)
    norm(u, "uu"), dot(w, u, "wu")
    decay = rule.decay(hp, w, v, state, spreads.__getitem__)
    if decay is None:  # slices, not a list of rows: indexing with a list would copy an index from the host
        for rows in SPLIT_ROWS:
            out[rows] = math.nan
        return None
    if isinstance(decay, Decoupled):
        c = decay.coefficient
        u.addcmul_(w, -c) if isinstance(c, torch.Tensor) else u.add_(w, alpha=-c)  # u_g = u − c·w
    else:
        norm(decay, "uwd2"), dot(w, decay, "w_uwd"), dot(u, decay, "u_uwd")
        u.sub_(decay)
    norm(u, "ug2"), dot(w, u, "w_ug")
    return decay if isinstance(decay, Decoupled) else None


def step_memory(v: torch.Tensor, g: torch.Tensor, a: float, b: float, skip: torch.Tensor | None) -> None:
    """``v ← a·v + b·g`` in place (``a = 0``: ``v = b·g`` whatever v held); where ``skip``, v as it was — selected,
    not multiplied by 0, because the gradient of a skipped step may be inf or NaN."""
    if skip is not None:
        v.copy_(torch.where(skip, v, v * a + g * b))
    elif a == 0.0:
        v.copy_(g).mul_(b)
    else:
        v.mul_(a).add_(g, alpha=b)


def finish(out: torch.Tensor, decoupled: Decoupled | None, trust: bool) -> None:
    """Square the norms (``tgg`` is gg where no trust ratio scales g); for a decoupled decay part ``u_wd = c·w``,
    its sums from w's (exact: c is per block)."""
    if not trust:
        out[ROW["tgg"]] = out[ROW["gg"]]
    out[:len(NORMS)].square_()
    if decoupled is not None:
        c = decoupled.coefficient
        c = c.reshape(-1) if isinstance(c, torch.Tensor) else c
        out[ROW["w_uwd"]] = out[ROW["ww"]] * c
        out[ROW["uwd2"]] = out[ROW["ww"]] * (c * c)
        out[ROW["u_uwd"]] = out[ROW["wu"]] * c


def eager(hp: Hyper, w: torch.Tensor, v: torch.Tensor, g: torch.Tensor, w_next: torch.Tensor,
          state: dict[str, torch.Tensor], spreads: dict[str, torch.Tensor], first: bool, skip: torch.Tensor | None,
          out: torch.Tensor, product: torch.Tensor | None) -> None:
    """:func:`partials` then :func:`finish`: ``out`` holds the chunk's finished partial sums."""
    finish(out, partials(hp, w, v, g, w_next, state, spreads, first, skip, out, product), RULES[hp.rule].uses_trust(hp))


def fused(hp: Hyper, w: torch.Tensor, v: torch.Tensor, g: torch.Tensor, w_next: torch.Tensor,
          state: dict[str, torch.Tensor], spreads: dict[str, torch.Tensor], first: bool, skip: torch.Tensor | None,
          out: torch.Tensor, product: torch.Tensor | None) -> None:
    """:func:`eager` through ``torch.compile`` (products fused, never stored); on a compiler failure, one
    warning and the eager function from then on."""
    global _compile_failed
    if not _compile_failed:
        try:  # a user's error_on_recompile is about their graphs; ours compiles once per range of sizes
            with torch._dynamo.config.patch(error_on_recompile=False):
                finished, new_v = _compiled()(hp, w, v, g, w_next, state, spreads, first, skip)
            v.copy_(new_v)
            out.copy_(finished)
            compiled_rules.add(hp.rule)
            return
        except Exception as error:  # a compiler failure must not stop training
            _compile_failed = True
            reason = (str(error).strip().splitlines() or [""])[0]
            warn(f"normwatch: torch.compile of the per-step statistics failed ({type(error).__name__}: "
                 f"{reason}); they run eagerly from now on.", RuntimeWarning)
    eager(hp, w, v, g, w_next, state, spreads, first, skip, out, product)


def _pure(hp: Hyper, w: torch.Tensor, v: torch.Tensor, g: torch.Tensor, w_next: torch.Tensor,
          state: dict[str, torch.Tensor], spreads: dict[str, torch.Tensor], first: bool,
          skip: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`eager` without mutating its inputs: (the finished partials, the new memory). The copies are the
    compiler's to elide."""
    v, g, w_next = v.clone(), g.clone(), w_next.clone()
    state = {key: row.clone() for key, row in state.items()}
    out = w.new_empty(len(PARTIALS), w.shape[0])
    eager(hp, w, v, g, w_next, state, spreads, first, skip, out, None)
    return out, v


@functools.cache
def _compiled() -> Any:
    return torch.compile(_pure, dynamic=True, fullgraph=True)


_compile_failed = False
compiled_rules: set[str] = set()  # the rules whose statistics have run compiled
