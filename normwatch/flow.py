"""Scale dataflow of one forward pass: which weights reach the outputs only through a normalisation.

A weight ``W`` is scale-invariant when the model's outputs do not change under ``W → r·W`` (r > 0). The
:class:`ScaleTracer` follows, op by op, how such a rescaling propagates: each tensor carries a set of
*flows*, one per weight it depends on. A flow of degree k says the tensor scales as r^k:

- ReLU, pooling, dropout, copies, reshapes and multiplication by constants keep k;
- ``pow(p)`` multiplies it by p; ``sqrt``, ``rsqrt`` and ``reciprocal`` by ½, −½ and −1;
- the product of two tensors of the same weight adds their degrees, the quotient subtracts them;
- sums, means, maxima and vector norms over axes keep it (variance doubles it);
- adding a constant breaks it, except a small epsilon added to a statistic (``var + eps``).

A flow that reaches degree 0 is *absorbed*: the tensor no longer depends on r (``x·rsqrt(mean(x²) + ε)``,
``x / |x|``, BatchNorm's ``(x − mean)/std``). A flow that meets an op that is not homogeneous (a residual
add, GELU, softmax, a norm using running statistics) or reaches the model's outputs *leaks*. A weight is
invariant when its flows were absorbed at least once and never leaked. Unknown ops leak: the analysis can
miss an invariant layer, never invent one.

A flow also says *which* rescalings it follows: the whole weight at once, or each of ``groups`` contiguous
groups of output channels by its own factor, while the tensor holds those groups in order along one axis.
A statistic taken over that axis mixes the groups, so the flow falls back to the whole weight there. Data
movements are followed exactly: reshapes, permutations, broadcasts and basic indexing from the shapes, the
rest (repeats, splits, advanced indexing) by *position probes*, the same op applied to a tensor holding each
element's position along the flow's axis.

Every weight (2-D or more) is a source: a conv/linear's output starts its flows, and any other op reading
the weight (a cosine layer's ``F.normalize(W)``) starts them from the weight itself.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

Granularity = Literal["channel", "group", "tensor"]
Variant = Literal["joint", "weight"]
Key = tuple[int, Variant]  # (source index, variant)

EPS_RATIO = 1e-2  # a constant added to a statistic is an epsilon when at most this fraction of its mean size


@dataclass(frozen=True)
class Flow:
    """How one weight's rescaling shows up in a tensor: the tensor scales as r^degree.

    Attributes:
        dim: the tensor axis holding the weight's groups of output channels, in order; None when only a
            rescaling of the whole weight is followed.
        groups: how many contiguous groups of output channels lie along ``dim``, each rescaled by its own
            factor (the channel count for per-channel flows, 1 for the whole weight).
        degree: k in "the tensor scales as r^k"; a flow of degree 0 is absorbed, never stored.
        shift: the tensor is homogeneous only up to an additive term that depends on the position along
            ``dim`` alone (a bias that is not rescaled with the weight).
        span: the positions ``[start, stop)`` along ``dim`` that depend on the weight, when the others do not
            (a concatenation with other tensors); None when all do.
        stat: the tensor is a statistic of a traced tensor (sum, mean, norm, ...): a small epsilon may be
            added to it.
    """

    dim: int | None
    groups: int = 1
    degree: Fraction = Fraction(1)
    shift: bool = False
    span: tuple[int, int] | None = None
    stat: bool = False

    def __post_init__(self) -> None:  # one spelling per flow: an axis with one group and nothing else is None
        if self.dim is not None and self.groups == 1 and not self.shift and self.span is None:
            object.__setattr__(self, "dim", None)


@dataclass
class Source:
    """A conv/linear weight whose output flows are traced (names are qualified parameter names)."""

    weight_name: str
    bias_name: str | None
    weight_shape: torch.Size
    out_axis: int  # weight axis of the output channels
    channelwise: bool  # output channel c depends on the slice weight[c] (along out_axis) only


@dataclass(frozen=True)
class Owned:
    """A parameter or buffer of a module: its qualified name, its module's name, which of the two."""

    name: str
    module: str
    is_param: bool


@dataclass(frozen=True)
class Absorption:
    """A normalisation that removed a flow: ``norm`` names its module; ``groups`` counts invariant groups."""

    norm: str
    granularity: Granularity
    groups: int


@dataclass
class TraceResult:
    """What one traced forward found."""

    sources: list[Source]
    absorbed: dict[Key, list[Absorption]] = field(default_factory=dict)
    leaked: set[Key] = field(default_factory=set)

    def invariant(self, key: Key) -> bool:
        return bool(self.absorbed.get(key)) and key not in self.leaked


# -- the algebra of flows: pure functions; None means "not homogeneous any more" (a leak) --------------------
def uniform(flow: Flow) -> Flow | None:
    """The flow followed for a rescaling of the whole weight only (None where positions matter: shift, span)."""
    if flow.shift or flow.span is not None:
        return None
    return Flow(None, degree=flow.degree, stat=flow.stat)


def regrouped(a: Flow, b: Flow) -> tuple[Flow, Flow] | None:
    """``a`` and ``b`` on the finest grouping both follow: the same axis keeps gcd(groups), else the whole weight.

    Contiguous groups of sizes C/Ga and C/Gb are both unions of the gcd(Ga, Gb) groups of size C/gcd.
    """
    if a.dim == b.dim and a.span == b.span:
        common = math.gcd(a.groups, b.groups)
        return replace(a, groups=common), replace(b, groups=common)
    ua, ub = uniform(a), uniform(b)
    return None if ua is None or ub is None else (ua, ub)


def product(a: Flow, b: Flow, sign: int = 1) -> Flow | None:
    """The flow of a·b (sign 1) or a/b (sign −1) for two tensors of the same weight: degrees add (subtract)."""
    pair = None if a.shift or b.shift else regrouped(a, b)
    if pair is None:
        return None
    a, b = pair
    return replace(a, degree=a.degree + sign * b.degree, stat=a.stat and b.stat)


def total(a: Flow, b: Flow) -> Flow | None:
    """The flow of a + b for two tensors of the same weight: homogeneous only when the degrees agree."""
    pair = regrouped(a, b) if a.degree == b.degree else None
    if pair is None:
        return None
    a, b = pair
    return replace(a, shift=a.shift or b.shift, stat=a.stat and b.stat)


def power(flow: Flow, exponent: Fraction) -> Flow | None:
    """The flow of x^p: (r^k x)^p = r^(kp) x^p."""
    if flow.shift and exponent != 1:
        return None
    return replace(flow, degree=flow.degree * exponent)


def reduction(flow: Flow, axes: frozenset[int], kind: str) -> Flow | None:
    """The flow of a statistic over ``axes``, with the reduced axes kept as size 1.

    ``kind``: ``"mean"`` (sum, mean, max: keep the degree and a shift along a kept axis), ``"norm"`` (vector
    norms: keep the degree, break a shift), ``"std"`` (keep the degree, remove a shift: std(r·y + b) = r·std(y)
    over axes along which b is constant) or ``"var"`` (as std, degree doubled). A statistic over the axis of
    the groups mixes them: the whole weight is followed from there.
    """
    degree = flow.degree * (2 if kind == "var" else 1)
    if flow.dim is not None and flow.dim in axes:
        if flow.shift or flow.span is not None:
            return None
        return Flow(None, degree=degree, stat=True)
    if flow.shift and kind == "norm":
        return None
    return replace(flow, degree=degree, shift=flow.shift and kind == "mean", stat=True)


def normalised(flow: Flow, axes: frozenset[int], center: bool) -> Flow | None:
    """The flow of (x − mean)/std (``center``) or x/rms over ``axes``: degree 0 when the scale is removed."""
    if center:
        spread = reduction(flow, axes, "std")
        body = replace(flow, shift=False) if flow.dim not in axes else flow  # the mean took the shift along
    else:
        squares = power(flow, Fraction(2))
        mean_square = None if squares is None else reduction(squares, axes, "mean")
        spread = None if mean_square is None else power(mean_square, Fraction(1, 2))
        body = flow
    return None if spread is None else product(body, spread, sign=-1)


def dropped(flow: Flow | None, axes: frozenset[int]) -> Flow | None:
    """``flow`` once the size-1 ``axes`` of a reduction are removed (``keepdim=False``)."""
    if flow is None or flow.dim is None:
        return flow
    return replace(flow, dim=flow.dim - sum(a < flow.dim for a in axes))


def broadcast(flow: Flow, shape: torch.Size, out_shape: torch.Size) -> Flow | None:
    """``flow`` of a tensor of ``shape`` broadcast to ``out_shape`` (new leading axes; size-1 axes repeated)."""
    if flow.dim is None:
        return flow
    dim = flow.dim + len(out_shape) - len(shape)
    if flow.span is not None and shape[flow.dim] != out_shape[dim]:
        return None
    return replace(flow, dim=dim)


# -- data movements worked out from shapes: reshapes, permutations, broadcasts, basic indexing ---------------
def reshaped(flow: Flow, src: torch.Size, dst: torch.Size) -> Flow | None:
    """The flow of ``x.reshape(dst)`` for ``x`` of shape ``src`` (view, flatten, unflatten, squeeze, ...).

    In the run of axes holding the flow's axis, element f (row-major) has the label ⌊f/q⌋ mod n, with labels
    the positions along the axis (q = the elements per position), or groups of ``step`` positions. A shift
    needs its positions along one axis of the result; groups need their labels along one axis, once and in
    order, else coarser groups are tried (one head of d channels after ``view(..., heads, d)``).
    """
    if flow.dim is None:
        return flow
    _, last, out_first, out_last = _run_of(src, dst, flow.dim)
    inner, size = math.prod(src[flow.dim + 1:last]), src[flow.dim]
    start, stop = flow.span or (0, size)
    block = (stop - start) // flow.groups  # positions per group
    steps = [1] if flow.shift else [block * k for k in range(1, flow.groups + 1) if flow.groups % k == 0]
    for step in (s for s in steps if start % s == 0 and size % s == 0):
        found = _label_axis(dst[out_first:out_last], inner * step, size // step)
        if found is None:
            continue
        axis, once = found[0] + out_first, found[1]
        per_label = inner * step // math.prod(dst[axis + 1:out_last])  # steps of ``axis`` per label
        if once:
            span = None if flow.span is None else (start // step * per_label, stop // step * per_label)
            groups = flow.groups if flow.shift else flow.groups * block // step
            return Flow(axis, groups, flow.degree, flow.shift, span, flow.stat)
        if flow.shift and flow.span is None:  # the axis repeated: a shift still depends on the position alone
            return Flow(axis, 1, flow.degree, shift=True, stat=flow.stat)
        break
    return uniform(flow)


def _label_axis(run: tuple[int, ...] | torch.Size, q: int, n: int) -> tuple[int, bool] | None:
    """The axis of ``run`` (a row-major run of axes) along which ⌊f/q⌋ mod n depends on the position alone, and
    whether it holds each label once, in order; None when there is none.

    With b elements per step of axis a: ⌊f/q⌋ mod n depends on that step alone when b divides q and q·n divides
    b·size_a; it covers the labels once when q·n = b·size_a.
    """
    for axis, size in enumerate(run):
        below = math.prod(run[axis + 1:])
        if size > 1 and q % below == 0 and below * size % (q * n) == 0:
            return axis, below * size == q * n
    return None


def _run_of(src: torch.Size, dst: torch.Size, dim: int) -> tuple[int, int, int, int]:
    """The axes [first, last) of ``src`` around ``dim`` and [out_first, out_last) of ``dst`` holding the same
    elements (the shortest runs with equal products)."""
    i = o = 0
    while i < len(src):
        first, out_first = i, o
        a, i = src[i], i + 1
        b, o = (dst[o], o + 1) if o < len(dst) else (1, o)
        while a != b:
            if a < b:
                a, i = a * src[i], i + 1
            else:
                b, o = b * dst[o], o + 1
        if first <= dim < i:
            return first, i, out_first, o
    raise ValueError(f"no axis {dim} in {tuple(src)}")


def basic_index(index: Any) -> bool:
    """Whether ``x[index]`` is basic indexing: ints, slices, None and Ellipsis only (a view of x)."""
    items = index if isinstance(index, tuple) else (index,)
    return not any(isinstance(i, bool) or not (i is None or i is Ellipsis or isinstance(i, (int, slice)))
                   for i in items)


def indexed(flow: Flow, shape: torch.Size, index: Any) -> Flow | None:
    """The flow of ``x[index]`` for a :func:`basic_index`; NotImplemented when it slices part of the flow's axis."""
    items = list(index) if isinstance(index, tuple) else [index]
    used = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (len(shape) - used)
    items += [slice(None)] * (len(shape) - sum(1 for i in items if i is not None))
    axis_in = axis_out = 0
    for item in items:
        if item is not None and axis_in == flow.dim:
            if isinstance(item, int):  # one position of the flow's axis
                return uniform(flow)
            if item.indices(shape[axis_in]) == (0, shape[axis_in], 1):
                return replace(flow, dim=axis_out)
            return NotImplemented  # part of the axis: which groups and in what order, a probe shows
        axis_out += 0 if isinstance(item, int) else 1
        axis_in += 0 if item is None else 1
    raise ValueError("index misread")


# -- position probes: where a flow's axis goes through a data movement ----------------------------------------
def positions(shape: torch.Size, dim: int, device: torch.device) -> torch.Tensor:
    """A tensor of ``shape`` holding, at each element, its position along ``dim`` (exact up to 2**24)."""
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return torch.arange(shape[dim], dtype=torch.float32, device=device).view(view).expand(shape).contiguous()


def probe(flow: Flow, shape: torch.Size, moved: torch.Tensor) -> Flow | None:
    """The flow of a moved tensor whose elements came from positions ``moved`` along ``flow.dim`` of a tensor of
    ``shape`` (``moved``: the same move applied to :func:`positions`).

    The groups must lie along one axis of the result, in order; where the move splits them over several axes
    (a channel axis viewed as heads × head_dim), the coarser groups that do lie along one axis are followed.
    """
    assert flow.dim is not None, "a flow of the whole weight goes through any move unchanged"
    size = shape[flow.dim]
    group = _group_of(flow, size, moved)
    factors = [1] if flow.shift else [f for f in range(1, flow.groups) if flow.groups % f == 0]
    line = _along_one_axis(moved if flow.shift else group, factors)  # a shift must depend on one axis
    if line is None:
        return uniform(flow)
    axis, values, factor = line
    groups = flow.groups // factor
    run = _ordered_run(_group_of(flow, size, values) if flow.shift else values, groups)
    if run is None:
        complete = bool((group >= 0).all())
        return Flow(axis, 1, flow.degree, shift=True, stat=flow.stat) if flow.shift and complete else uniform(flow)
    span = None if run == (0, values.numel()) else run
    return Flow(axis, groups, flow.degree, flow.shift, span, flow.stat)


def _group_of(flow: Flow, size: int, where: torch.Tensor) -> torch.Tensor:
    """The group index of each position (−1 outside the span)."""
    start, stop = flow.span or (0, size)
    inside = (where >= start) & (where < stop)
    block = (stop - start) // flow.groups
    return torch.where(inside, torch.div(where - start, block, rounding_mode="floor"), -1.0)


def _along_one_axis(label: torch.Tensor, factors: list[int]) -> tuple[int, torch.Tensor, int] | None:
    """``(axis, values, f)`` for the first axis along which ``label`` varies and the smallest f of ``factors`` for
    which ⌊label/f⌋ depends on that axis alone (its ``values`` along it); None when there is none."""
    for axis in range(label.dim()):
        others = tuple(a for a in range(label.dim()) if a != axis)
        low, high = (label.amin(others), label.amax(others)) if others else (label, label)
        if low.numel() < 2 or (bool((low == low[0]).all()) and bool((high == high[0]).all())):
            continue
        for factor in factors:
            values = torch.div(low, factor, rounding_mode="floor")
            if torch.equal(values, torch.div(high, factor, rounding_mode="floor")):
                view = [1] * label.dim()
                view[axis] = -1
                whole = torch.div(label, factor, rounding_mode="floor")
                return (axis, values, factor) if torch.equal(whole, values.view(view).expand_as(label)) else None
        return None
    return None


def _ordered_run(groups_along: torch.Tensor, groups: int) -> tuple[int, int] | None:
    """``(start, stop)`` when the groups 0..G−1 lie in order, in equal runs, on one stretch; else None."""
    inside = (groups_along >= 0).nonzero().flatten()
    if inside.numel() == 0:
        return None
    start, stop = int(inside[0]), int(inside[-1]) + 1
    if stop - start != inside.numel() or (stop - start) % groups:
        return None
    expected = torch.arange(groups, dtype=groups_along.dtype, device=groups_along.device)
    expected = expected.repeat_interleave((stop - start) // groups)
    return (start, stop) if torch.equal(groups_along[start:stop], expected) else None


# -- small helpers ----------------------------------------------------------------------------------------
def _name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # attribute reads: x.T, x.data, x.shape
        return "." + getattr(getattr(func, "__self__", None), "__name__", "")
    return name


def loss_outputs(output: Any) -> Any:
    """The outputs a loss is computed from: all of them, except the key/value cache that a transformers model
    returns for generation (``past_key_values``; some transformers versions flatten it into tensors), which
    holds the values v = x·W_v before any norm and so would count v_proj's scale as reaching the outputs."""
    if isinstance(output, Mapping) and "past_key_values" in output:
        return {key: value for key, value in output.items() if key != "past_key_values"}
    return output


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _axes(dims: Any, ndim: int) -> frozenset[int]:
    """The axes a reduction's ``dim`` argument names (all of them for None or an empty list)."""
    if dims is None or (isinstance(dims, (tuple, list)) and not dims):
        return frozenset(range(ndim))
    dims = dims if isinstance(dims, (tuple, list)) else [dims]
    return frozenset(_norm_dim(int(d), ndim) for d in dims)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1)


@dataclass
class Call:
    """One op the tracer sees: its name, arguments, and the tensors it read and produced."""

    name: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        return _arg(self.args, self.kwargs, index, name, default)


class ScaleTracer(TorchFunctionMode):
    """A torch-function mode that traces weight-rescaling flows through one forward.

    Args:
        resolve: the parameter or buffer a tensor is, looked up when an op sees it (FSDP2 swaps the
            registered tensors for unsharded ones during the forward), or None.
        current_module: returns the qualified name of the innermost module running now (for naming
            functional and hand-written norms that own no parameter or buffer).
    """

    def __init__(self, resolve: Callable[[torch.Tensor], Owned | None], current_module: Callable[[], str]) -> None:
        super().__init__()
        self._resolve = resolve
        self.current_module = current_module
        # by identity (tensors compare elementwise); an entry goes when its tensor is freed
        self._flows: dict[int, tuple[weakref.ref[torch.Tensor], dict[Key, Flow]]] = {}
        self._means: dict[int, tuple[weakref.ref[torch.Tensor], weakref.ref[torch.Tensor], frozenset[int]]] = {}
        self._source_index: dict[str, int] = {}
        self._misused: set[str] = set()  # 1-D parameters read other than as a conv/linear bias
        self.result = TraceResult(sources=[])

    # -- what each tensor carries ------------------------------------------------------------------------
    def flows(self, t: Any) -> dict[Key, Flow]:
        entry = self._flows.get(id(t)) if isinstance(t, torch.Tensor) else None
        return entry[1] if entry is not None and entry[0]() is t else {}

    def _set(self, t: torch.Tensor, flows: dict[Key, Flow]) -> None:
        if not t.is_floating_point():
            return
        if flows:
            key = id(t)
            table = self._flows
            self._flows[key] = (weakref.ref(t, lambda _ref: table.pop(key, None)), flows)
        else:
            self._flows.pop(id(t), None)

    def emit(self, outputs: Iterable[torch.Tensor], flows: dict[Key, Flow | None], norm: str | None = None) -> None:
        """Give ``outputs`` the ``flows`` of an op: None leaks, degree 0 is absorbed (by ``norm``, or the module
        running now)."""
        kept: dict[Key, Flow] = {}
        for key, flow in flows.items():
            if flow is None:
                self.leak([key])
            elif flow.degree == 0:
                self._absorb(key, flow, norm)
            else:
                kept[key] = flow
        for t in outputs:
            self._set(t, kept)

    def _absorb(self, key: Key, flow: Flow, norm: str | None) -> None:
        src = self.result.sources[key[0]]
        channels = src.weight_shape[src.out_axis]
        kind: Granularity = "tensor" if flow.groups == 1 else "channel" if flow.groups == channels else "group"
        name = norm or self.current_module() or "<root>"
        self.result.absorbed.setdefault(key, []).append(Absorption(name, kind, flow.groups))

    def leak(self, keys: Iterable[Key]) -> None:
        self.result.leaked.update(keys)

    def leak_tensors(self, tensors: Iterable[Any]) -> None:
        for t in tensors:
            self.leak(self.flows(t))

    def leak_outputs(self, output: Any) -> None:
        """Flows that reach the model's outputs are not removed by any normalisation."""
        self.leak_tensors(_tensors(loss_outputs(output)))

    def note_mean(self, mean: torch.Tensor, of: torch.Tensor, axes: frozenset[int]) -> None:
        """Remember that ``mean`` is ``of.mean(axes, keepdim=True)``: subtracting it removes a shift along the rest."""
        self._means[id(mean)] = (weakref.ref(mean), weakref.ref(of), axes)

    def mean_axes(self, mean: Any, of: Any) -> frozenset[int] | None:
        """The axes over which ``mean`` is the mean of ``of``, or None when it is not."""
        entry = self._means.get(id(mean))
        return entry[2] if entry is not None and entry[0]() is mean and entry[1]() is of else None

    def negligible(self, constant: Any, statistic: torch.Tensor) -> bool:
        """Whether adding ``constant`` to ``statistic`` is an epsilon: |c| ≤ EPS_RATIO·mean|statistic|.

        Then rescaling moves a normalised output by at most about EPS_RATIO·|1 − r^−2|/2 of itself (0.2% for
        r = 1.25), the order of the numerical confirmation's tolerance.
        """
        if isinstance(constant, torch.Tensor):
            if constant.numel() != 1 or self.flows(constant):
                return False
        elif not isinstance(constant, (int, float)):
            return False
        return abs(float(constant)) <= EPS_RATIO * float(statistic.detach().abs().mean())  # one host sync

    def norm_module(self, *tensors: Any) -> str:
        """The module owning one of ``tensors`` (a norm's weight or running statistics), else the running one."""
        owned = [o.module for t in tensors if isinstance(t, torch.Tensor) and (o := self._resolve(t)) is not None]
        return (owned[0] if owned else self.current_module()) or "<root>"

    def finish(self) -> TraceResult:
        """Close the trace: a source whose bias was also used elsewhere cannot be rescaled with it."""
        for i, src in enumerate(self.result.sources):
            if src.bias_name is not None and src.bias_name in self._misused:
                self.leak([(i, "joint")])
        return self.result

    # -- the mode ----------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._track(func, args, kwargs, out)
        except Exception:  # an op we misread must never break the user's forward: treat it as a leak
            self.leak_tensors(_tensors((args, kwargs)))
            for t in _tensors(out):
                self._set(t, {})
        return out

    def _track(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        name = _name(func)
        outputs = _tensors(out)
        if name in _INERT or (name.startswith(".") and name not in _RULES and not outputs):
            return  # metadata and attribute reads (FSDP2 reads .data of unsharded parameters)
        if name in _SOURCES and (owned := self._param(_arg(args, kwargs, 1, "weight"))) is not None:
            return self._source(name, owned, args, kwargs, out)
        inputs = _tensors((args, kwargs))
        self._read_params(inputs)
        call = Call(name, func, args, kwargs, inputs, outputs)
        if name in _NORMS:
            return _native_norm(self, call)
        if not any(self.flows(t) for t in inputs):
            return self.emit(outputs, {})  # in-place ops on clean tensors and fresh results carry nothing
        rule = _RULES.get(name)
        if rule is None:
            self.leak_tensors(inputs)
            return self.emit(outputs, {})
        return rule(self, call)

    def _param(self, t: Any) -> Owned | None:
        owned = self._resolve(t) if isinstance(t, torch.Tensor) else None
        return owned if owned is not None and owned.is_param else None

    def _read_params(self, inputs: Iterable[Any]) -> None:
        """Parameters an op reads other than as a conv/linear weight: a weight (2-D or more) starts flows of its own
        (a cosine layer normalises it: ``F.linear(x, F.normalize(W))``); a 1-D one is noted (a bias used twice)."""
        for t in inputs:
            owned = self._param(t)
            if owned is None:
                continue
            if t.dim() < 2:
                self._misused.add(owned.name)
            elif not self.flows(t):
                index = self._register(Source(owned.name, None, t.shape, out_axis=0, channelwise=True))
                src = self.result.sources[index]
                flow = Flow(src.out_axis if src.channelwise else None, _groups(src))
                self._set(t, {(index, "joint"): flow, (index, "weight"): flow})

    # -- sources -----------------------------------------------------------------------------------------
    def _source(self, name: str, weight_owned: Owned, args: tuple[Any, ...], kwargs: dict[str, Any],
                out: Any) -> None:
        """A conv/linear with a parameter weight: its output starts the weight's flows."""
        x, weight, bias = (_arg(args, kwargs, i, n) for i, n in enumerate(("input", "weight", "bias")))
        if not isinstance(out, torch.Tensor):
            return
        self._read_params([x])
        # output channels: the last axis of a linear; axis 1 of a batched conv (0 when unbatched)
        dim = out.dim() - 1 if name == "linear" else (1 if x.dim() == weight.dim() else 0)
        bias_owned = self._param(bias)
        transposed, groups = name in _CONV_T, _arg(args, kwargs, 6, "groups", 1)
        index = self._register(Source(weight_owned.name, bias_owned.name if bias_owned else None, weight.shape,
                                      out_axis=1 if transposed else 0, channelwise=not (transposed and groups != 1)))
        src = self.result.sources[index]
        if bias is not None and (bias_owned is None or bias_owned.name != src.bias_name):
            self.leak([(index, "joint")])  # a bias other than the layer's own cannot be rescaled with it
            if bias_owned is not None:
                self._misused.add(bias_owned.name)
        flows: dict[Key, Flow | None] = {(index, "joint"): Flow(dim, _groups(src))}
        if bias is not None:
            flows[(index, "weight")] = Flow(dim, _groups(src), shift=True)
        # the input's own flows pass through a linear map (as the whole weight); a bias breaks homogeneity
        for key, flow in self.flows(x).items():
            through = None if bias is not None else uniform(flow)
            through = replace(through, stat=False) if through is not None else None
            own = flows.get(key)
            flows[key] = through if own is None or through is None else product(own, through)
        self.emit([out], flows)

    def _register(self, source: Source) -> int:
        """The index of the source of ``source.weight_name``, registered at its first use. A weight read first
        by another op and used later by a conv/linear with other output axes cannot be followed: it leaks."""
        index = self._source_index.get(source.weight_name)
        if index is None:
            index = len(self.result.sources)
            self._source_index[source.weight_name] = index
            self.result.sources.append(source)
        known = self.result.sources[index]
        if (known.out_axis, known.channelwise) != (source.out_axis, source.channelwise):
            self.leak([(index, "joint"), (index, "weight")])
        return index


def _groups(src: Source) -> int:
    """The groups a source's flows start with: one per output channel when each depends on its own slice."""
    return src.weight_shape[src.out_axis] if src.channelwise else 1


# -- rules: each gives one kind of op's outputs their flows (called only when an input carries one) -----------
Rule = Callable[[ScaleTracer, Call], None]


def _aligned(t: ScaleTracer, x: Any, out: torch.Tensor) -> dict[Key, Flow | None]:
    """The flows of operand ``x`` broadcast to the shape of ``out``."""
    if not isinstance(x, torch.Tensor):
        return {}
    return {key: broadcast(flow, x.shape, out.shape) for key, flow in t.flows(x).items()}


def _leak_all(t: ScaleTracer, call: Call) -> None:
    t.leak_tensors(call.inputs)
    t.emit(call.outputs, {})


def _elementwise(t: ScaleTracer, call: Call) -> None:
    """relu, dropout, abs, neg: positively homogeneous of degree 1, so r^k·x keeps degree k (a shift survives −x)."""
    x = call.args[0]
    keeps_shift = call.name in _SIGN_FLIPS
    t.leak_tensors(u for u in call.inputs if u is not x)
    t.emit(call.outputs, {key: flow if keeps_shift or not flow.shift else None for key, flow in t.flows(x).items()})


def _copy(t: ScaleTracer, call: Call) -> None:
    """clone, contiguous, to, float, type_as: the values are kept (another tensor argument only gives a dtype)."""
    t.emit(call.outputs, dict(t.flows(call.args[0])))


def _cut(t: ScaleTracer, call: Call) -> None:
    """detach: a constant for autograd, so the gradient sees no scale through it (nor through its uses)."""
    t.emit(call.outputs, {})


def _copy_into(t: ScaleTracer, call: Call) -> None:
    """dst.copy_(src): dst's old values are gone (a partial overwrite leaks both)."""
    dst, src = call.args[0], call.args[1]
    t.leak(t.flows(dst))
    same = isinstance(src, torch.Tensor) and dst.shape == src.shape
    if not same:
        t.leak_tensors([src])
    t.emit([dst], dict(t.flows(src)) if same else {})


def _move(t: ScaleTracer, call: Call) -> None:
    """Reshapes, transposes, indexing, repeats, splits: each output's flows follow the positions, worked out from
    the shapes where that is exact (see :func:`_from_shapes`), else probed."""
    x = call.args[0]
    from_shapes = _from_shapes(call, x)
    moved: dict[int, list[torch.Tensor]] = {}  # one probe per axis, whatever the number of flows along it
    per_output: list[dict[Key, Flow | None]] = [{} for _ in call.outputs]
    for key, flow in t.flows(x).items():
        if flow.dim is None:
            results: list[Flow | None] = [flow] * len(call.outputs)
        elif from_shapes is not None and (result := from_shapes(flow)) is not NotImplemented:
            results = [result]
        else:
            if flow.dim not in moved:
                where = positions(x.shape, flow.dim, x.device)
                moved[flow.dim] = _tensors(call.func(where, *call.args[1:], **call.kwargs))
            results = [probe(flow, x.shape, out) for out in moved[flow.dim]]
        if len(results) != len(call.outputs):
            raise ValueError(f"{call.name}: the probe has {len(results)} outputs, the op {len(call.outputs)}")
        for flows, result in zip(per_output, results):
            flows[key] = result
    for out, flows in zip(call.outputs, per_output):
        t.emit([out], flows)


def _from_shapes(call: Call, x: torch.Tensor) -> Callable[[Flow], Flow | None] | None:
    """Where a flow goes through a one-output reshape, permutation, broadcast or basic indexing, from shapes alone
    (no probe); None for other moves."""
    if len(call.outputs) != 1 or any(isinstance(a, torch.dtype) for a in call.args[1:]):
        return None
    out = call.outputs[0]
    if call.name in _RESHAPES:
        return lambda flow: reshaped(flow, x.shape, out.shape)
    if call.name in _PERMUTATIONS:  # the op on a meta tensor of sizes 2, 3, 4, ... shows the order of the axes
        meta = torch.empty(tuple(range(2, x.dim() + 2)), device="meta")
        order = [size - 2 for size in call.func(meta, *call.args[1:], **call.kwargs).shape]
        return lambda flow: replace(flow, dim=order.index(flow.dim))
    if call.name in ("expand", "expand_as", "broadcast_to"):
        return lambda flow: broadcast(flow, x.shape, out.shape)
    if call.name == "__getitem__" and basic_index(call.args[1]):
        return lambda flow: indexed(flow, x.shape, call.args[1])
    return None


def _reduce(t: ScaleTracer, call: Call) -> None:
    """sum, mean, amax, norms, var, std over axes: a statistic of degree k (2k for var)."""
    x = call.args[0]
    if call.name in ("max", "min") and isinstance(call.arg(1, "dim"), torch.Tensor):
        return _floor(t, call) if call.name == "max" else _leak_all(t, call)  # elementwise max(x, y)
    dim_at, keepdim_at, kind = _REDUCTIONS[call.name]
    if kind == "norm" and call.arg(1, "p", call.kwargs.get("ord", 2)) == 0:
        return _leak_all(t, call)  # the "0-norm" counts non-zeros: degree 0 without normalising anything
    dims = call.arg(dim_at, "dim")
    axes = _axes(None if isinstance(dims, bool) else dims, x.dim())  # var(x, unbiased): the old signature
    keepdim = bool(call.arg(keepdim_at, "keepdim", False))
    value = call.outputs[0]
    kept = [1 if a in axes else s for a, s in enumerate(x.shape)]
    if list(value.shape) != (kept if keepdim else [s for a, s in enumerate(x.shape) if a not in axes]):
        raise ValueError(f"{call.name}: arguments misread (result of shape {tuple(value.shape)})")
    flows = {key: reduction(flow, axes, kind) for key, flow in t.flows(x).items()}
    if not keepdim:
        flows = {key: dropped(flow, axes) for key, flow in flows.items()}
    elif call.name == "mean":
        t.note_mean(value, x, axes)
    t.leak_tensors(u for u in call.inputs if u is not x)
    t.emit([value], flows)


def _add(t: ScaleTracer, call: Call) -> None:
    """a ± b: homogeneous when a weight's degree is the same on both sides; a constant is allowed only as an
    epsilon added to a statistic, or as a per-channel bias (tracked as a shift that a norm may remove)."""
    a, b = call.args[0], call.arg(1, "other")
    if call.name in _REVERSED_SUB:  # rsub(x, y) = y − x
        a, b = b, a
    out = call.outputs[0]
    fa, fb = _aligned(t, a, out), _aligned(t, b, out)
    centered = t.mean_axes(b, a) if call.name in _SUB else None
    flows: dict[Key, Flow | None] = {}
    for key in fa.keys() | fb.keys():
        if key in fa and key in fb:
            flow = total(fa[key], fb[key]) if fa[key] and fb[key] else None
            if flow is not None and flow.shift and centered is not None and flow.dim not in centered:
                flow = replace(flow, shift=False)  # x − mean(x): the bias is constant over the mean's axes
        elif key in fa:
            flow = _plus_constant(t, fa[key], b, a, out)
        else:
            flow = _plus_constant(t, fb[key], a, b, out)
        flows[key] = flow
    t.emit([out], flows)


def _plus_constant(t: ScaleTracer, flow: Flow | None, constant: Any, tensor: torch.Tensor,
                   out: torch.Tensor) -> Flow | None:
    """The flow of ``tensor + constant`` (the constant does not depend on the weight)."""
    if flow is None:
        return None
    if flow.stat and t.negligible(constant, tensor):
        return flow  # var + eps: the statistic's own scale still dominates
    if flow.dim is not None and not t.flows(constant) and _constant_along_all_but(constant, flow.dim, out):
        return replace(flow, shift=True)  # a bias added by hand: BatchNorm still removes it
    return None


def _constant_along_all_but(value: Any, dim: int, out: torch.Tensor) -> bool:
    """Whether ``value``, broadcast to ``out``, is constant along every axis but ``dim``."""
    if not isinstance(value, torch.Tensor):
        return isinstance(value, (int, float))
    shape = (1,) * (out.dim() - value.dim()) + tuple(value.shape)
    return all(s == 1 for i, s in enumerate(shape) if i != dim)


def _scale(t: ScaleTracer, call: Call) -> None:
    """a·b, a/b: a weight's degrees in both add (subtract); a constant factor keeps the degree, c/x negates it."""
    a, b = call.args[0], call.arg(1, "other")
    if call.name in ("__rdiv__", "__rtruediv__"):  # c / x
        a, b = b, a
    if call.kwargs.get("rounding_mode") is not None:
        return _leak_all(t, call)
    divide = call.name in _DIV
    out = call.outputs[0]
    fa, fb = _aligned(t, a, out), _aligned(t, b, out)
    flows: dict[Key, Flow | None] = {}
    for key in fa.keys() | fb.keys():
        if key in fa and key in fb:
            flow = product(fa[key], fb[key], -1 if divide else 1) if fa[key] and fb[key] else None
        elif key in fa:
            flow = fa[key] if fa[key] is None or not fa[key].shift or _is_scalar(b) else None
        elif divide:
            flow = None if fb[key] is None else power(fb[key], Fraction(-1))
        else:
            flow = fb[key] if fb[key] is None or not fb[key].shift or _is_scalar(a) else None
        flows[key] = flow
    t.emit([out], flows)


def _power(t: ScaleTracer, call: Call) -> None:
    """x^p, sqrt, rsqrt, reciprocal, square: the degree times p (½, −½, −1, 2)."""
    base = call.args[0]
    exponent = _EXPONENTS.get(call.name, call.arg(1, "exponent"))
    if isinstance(exponent, torch.Tensor) and exponent.numel() == 1 and not t.flows(exponent):
        exponent = exponent.item()
    if not isinstance(base, torch.Tensor) or isinstance(exponent, bool) or not isinstance(exponent, (int, float)):
        return _leak_all(t, call)  # c ** x, x ** tensor
    p = Fraction(exponent)
    t.emit(call.outputs, {key: power(flow, p) for key, flow in t.flows(base).items()})


def _floor(t: ScaleTracer, call: Call) -> None:
    """clamp(x, min=c), maximum(x, c): ReLU's homogeneity for c = 0; x itself when c is an epsilon below every
    value of a statistic (F.normalize's clamp of the norm)."""
    x = call.args[0]
    clamp = call.name.startswith(("clamp", "clip"))
    floor = call.arg(1, "min" if clamp else "other")
    ceiling = call.arg(2, "max") if clamp else None
    flows = t.flows(x)
    if ceiling is not None or t.flows(floor) or not flows:
        return _leak_all(t, call)
    if _is_scalar(floor) and float(floor) == 0:
        return t.emit(call.outputs, {key: None if flow.shift else flow for key, flow in flows.items()})
    small = t.negligible(floor, x)
    t.emit(call.outputs, {key: flow if flow.stat and small else None for key, flow in flows.items()})


def _normalize(t: ScaleTracer, call: Call) -> None:
    """F.normalize(x, p, dim, eps) = x / max(|x|_p over dim, eps): degree 0 when eps is negligible."""
    x = call.args[0]
    order, dims, eps = call.arg(1, "p", 2.0), call.arg(2, "dim", 1), call.arg(3, "eps", 1e-12)
    if call.arg(4, "out") is not None or order == 0:
        return _leak_all(t, call)
    axes = _axes(dims, x.dim())
    small = t.negligible(eps, torch.linalg.vector_norm(x.detach(), order, tuple(axes), keepdim=True))
    flows: dict[Key, Flow | None] = {}
    for key, flow in t.flows(x).items():
        norm = reduction(flow, axes, "norm") if small else None
        flows[key] = None if norm is None else product(flow, norm, sign=-1)
    t.emit(call.outputs, flows)


def _weight_norm(t: ScaleTracer, call: Call) -> None:
    """torch._weight_norm(v, g, dim) = g·v/|v|, the norm over every axis but ``dim`` (weight_norm's
    parametrisation): v's scale is absorbed slice by slice along ``dim``; g's flows pass only into the product."""
    v, g, dim = call.arg(0, "v"), call.arg(1, "g"), call.arg(2, "dim", 0)
    t.leak_tensors([g])
    kept = () if dim == -1 else (_norm_dim(int(dim), v.dim()),)  # -1: the norm of the whole tensor
    axes = frozenset(a for a in range(v.dim()) if a not in kept)
    flows: dict[Key, Flow | None] = {}
    for key, flow in t.flows(v).items():
        norm = reduction(flow, axes, "norm")
        flows[key] = None if norm is None else product(flow, norm, sign=-1)
    t.emit(call.outputs, flows)


def _native_norm(t: ScaleTracer, call: Call) -> None:
    """batch/instance/group/layer/rms norm: (x − mean)/std or x/rms over their axes when they use the statistics
    of x itself; with running statistics x's scale passes through, so its flows leak."""
    x, batch_stats, owner = _norm_spec(t, call)
    t.leak_tensors(u for u in call.inputs if u is not x)  # affine parameters, running statistics
    flows = t.flows(x)
    absorbs = bool(flows) and batch_stats and t.negligible(_norm_eps(call, x), _norm_spread(call, x))
    t.emit(call.outputs, {key: _norm_flow(call, x, flow) if absorbs else None for key, flow in flows.items()},
           norm=owner)


def _norm_spec(t: ScaleTracer, call: Call) -> tuple[torch.Tensor, bool, str]:
    """The input of a native norm, whether it normalises with batch statistics, and the module owning it."""
    native = not isinstance(call.func, type(F.batch_norm))  # torch.batch_norm & co: other argument orders
    if call.name == "batch_norm":
        # F.batch_norm(input, running_mean, running_var, weight, bias, training, ...)
        # torch.batch_norm(input, weight, bias, running_mean, running_var, training, ...)
        order = (3, 4, 1) if native else (1, 2, 3)
        rmean, rvar, weight = (call.arg(i, n) for i, n in zip(order, ("running_mean", "running_var", "weight")))
        batch_stats = bool(call.arg(5, "training", False)) or (rmean is None and rvar is None)
    elif call.name == "instance_norm":
        # F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, ...)
        # torch.instance_norm(input, weight, bias, running_mean, running_var, use_input_stats, ...)
        rmean, weight = call.arg(3 if native else 1, "running_mean"), call.arg(1 if native else 3, "weight")
        batch_stats = bool(call.arg(5, "use_input_stats", True))
    else:  # group_norm, layer_norm, rms_norm: always the statistics of the input itself
        weight, rmean, batch_stats = call.arg(2, "weight"), None, True
    return call.arg(0, "input"), batch_stats, t.norm_module(weight, rmean)


def _norm_eps(call: Call, x: torch.Tensor) -> float:
    """The epsilon a native norm adds to the variance (mean square for rms_norm)."""
    if call.name == "rms_norm":
        eps = call.arg(3, "eps")
        return torch.finfo(x.dtype).eps if eps is None else eps
    index = {"batch_norm": 7, "instance_norm": 7}.get(call.name, 4)
    return call.arg(index, "eps", 1e-5)


def _norm_spread(call: Call, x: torch.Tensor) -> torch.Tensor:
    """The statistic a native norm divides by, squared: the variance over its axes (rms_norm: the mean square)."""
    x = x.detach()
    if call.name == "group_norm":
        return x.reshape(x.shape[0], int(call.arg(1, "num_groups")), -1).var(dim=2, correction=0)
    if call.name == "batch_norm":
        return x.transpose(0, 1).reshape(x.shape[1], -1).var(dim=1, correction=0)
    if call.name == "instance_norm":
        return x.flatten(2).var(dim=2, correction=0)
    shape = call.arg(1, "normalized_shape")
    axes = tuple(range(x.dim() - (1 if isinstance(shape, int) else len(shape)), x.dim()))
    return x.pow(2).mean(axes) if call.name == "rms_norm" else x.var(dim=axes, correction=0)


def _norm_flow(call: Call, x: torch.Tensor, flow: Flow) -> Flow | None:
    """The flow of a native norm's output (degree 0 where it absorbs ``flow``)."""
    ndim = x.dim()
    if call.name == "group_norm":  # statistics per (sample, group): axis 2 of x.reshape(N, groups, -1)
        groups = int(call.arg(1, "num_groups"))
        if flow.dim is not None:
            where = positions(x.shape, flow.dim, x.device).reshape(x.shape[0], groups, -1)
            flow = probe(flow, x.shape, where)  # type: ignore[assignment]
        return None if flow is None else normalised(flow, frozenset({2}), center=True)
    if call.name == "batch_norm":
        axes = frozenset(a for a in range(ndim) if a != 1)
    elif call.name == "instance_norm":
        axes = frozenset(range(2, ndim))
    else:
        shape = call.arg(1, "normalized_shape")
        axes = frozenset(range(ndim - (1 if isinstance(shape, int) else len(shape)), ndim))
    return normalised(flow, axes, center=call.name != "rms_norm")


def _through_matmul(flow: Flow | None, x: torch.Tensor, out: torch.Tensor, left: bool) -> Flow | None:
    """The flow of operand ``x`` of a matrix product in its result: an axis survives unless it is contracted."""
    if flow is None or flow.shift:
        return None
    contracted = x.dim() - 1 if left else x.dim() - 2
    if flow.dim is None or x.dim() < 2 or out.dim() < 2 or flow.dim == contracted:
        whole = uniform(flow)
        return None if whole is None else replace(whole, stat=False)
    return broadcast(replace(flow, stat=False), x.shape, out.shape)


def _matmul(t: ScaleTracer, call: Call) -> None:
    """a @ b (matmul, mm, bmm): linear in each operand, so a weight's degrees in both add."""
    a, b = call.args[0], call.args[1]
    if call.name == "__rmatmul__":
        a, b = b, a
    out = call.outputs[0]
    fa = {key: _through_matmul(flow, a, out, left=True) for key, flow in t.flows(a).items()}
    fb = {key: _through_matmul(flow, b, out, left=False) for key, flow in t.flows(b).items()}
    flows: dict[Key, Flow | None] = {}
    for key in fa.keys() | fb.keys():
        if key in fa and key in fb:
            both = [uniform(f) if f is not None else None for f in (fa[key], fb[key])]
            flows[key] = product(both[0], both[1]) if both[0] and both[1] else None
        else:
            flows[key] = fa[key] if key in fa else fb[key]
    t.emit([out], flows)


def _linear_map(t: ScaleTracer, call: Call) -> None:
    """F.linear with a computed weight, einsum, bilinear: products summed, followed for the whole weight."""
    bias = call.arg(2, "bias") if call.name == "linear" else None
    flows: dict[Key, Flow | None] = {}
    for tensor in call.inputs:
        if tensor is bias:
            continue
        for key, flow in t.flows(tensor).items():
            whole = uniform(flow)
            whole = None if whole is None or bias is not None else replace(whole, stat=False)
            earlier = flows.get(key, whole)
            flows[key] = whole if key not in flows else (product(earlier, whole) if earlier and whole else None)
    t.leak_tensors([bias])
    t.emit(call.outputs, flows)


def _cat(t: ScaleTracer, call: Call) -> None:
    """cat, stack: equal flows along another axis survive; one tensor's flow among other values covers a span.

    Tensors with no elements add nothing and are left out: cat skips the legacy empty ``torch.tensor([])``
    whatever the shapes of the others (the first ``torch.cat([cache, new], dim=-2)`` of transformers'
    ``DynamicCache``), and an empty part along ``axis`` would make the other's flow a span of the whole axis.
    """
    seq = [s for s in (call.args[0] if call.args else call.kwargs["tensors"])
           if isinstance(s, torch.Tensor) and s.numel()]
    out = call.outputs[0]
    stack = call.name == "stack"
    axis = _norm_dim(int(call.arg(1, "dim", 0)), out.dim())
    sizes = [1 if stack else s.shape[axis] for s in seq]
    starts = [sum(sizes[:i]) for i in range(len(seq))]
    flows: dict[Key, Flow | None] = {}
    for key in {k for s in seq for k in t.flows(s)}:
        present = [(i, t.flows(s)[key]) for i, s in enumerate(seq) if key in t.flows(s)]
        if stack:  # a new axis at ``axis``: the axes from there on move one up
            present = [(i, replace(f, dim=f.dim + 1) if f.dim is not None and f.dim >= axis else f)
                       for i, f in present]
        flows[key] = _joined(present, len(seq), axis, starts, sizes)
    t.emit([out], flows)


def _joined(present: list[tuple[int, Flow]], count: int, axis: int, starts: list[int],
            sizes: list[int]) -> Flow | None:
    """The flow of a concatenation along ``axis`` of ``count`` tensors, ``present`` of them carrying it."""
    first = present[0][1]
    if len(present) == count and all(flow == first for _, flow in present):
        if first.dim != axis:
            return first
        # copies of the groups one after another: only the whole weight (and a shift) can be followed
        if first.shift and first.span is None:
            return Flow(axis, 1, first.degree, shift=True, stat=first.stat)
        return uniform(first)
    if len(present) != 1:
        return None
    index, flow = present[0]
    start, stop = starts[index], starts[index] + sizes[index]
    if flow.dim == axis:
        inner = flow.span or (0, stop - start)
        return replace(flow, span=(start + inner[0], start + inner[1]))
    whole = uniform(flow)
    return None if whole is None else Flow(axis, 1, whole.degree, span=(start, stop), stat=whole.stat)


def _pool(t: ScaleTracer, call: Call) -> None:
    """max and average pooling: homogeneous; a flow along a pooled axis is followed for the whole weight."""
    x = call.args[0]
    first_spatial = x.dim() - int(call.name.split("pool")[1][0])
    zero_padded = (call.name in _POOL_AVG and call.arg(3, "padding", 0) not in (0, (0,), (0, 0), (0, 0, 0))
                   and call.arg(5, "count_include_pad", True))
    flows: dict[Key, Flow | None] = {}
    for key, flow in t.flows(x).items():
        if flow.dim is not None and flow.dim >= first_spatial:
            flows[key] = uniform(flow)
        else:
            flows[key] = None if flow.shift and zero_padded else flow  # a zero-padded average dilutes a bias
    t.leak_tensors(u for u in call.inputs if u is not x)
    t.emit(call.outputs, flows)


def _pad(t: ScaleTracer, call: Call) -> None:
    """F.pad: zeros (or copies of edge values) keep homogeneity; a flow along a padded axis stays whole-weight."""
    x, pad = call.args[0], list(call.arg(1, "pad"))
    mode, value = call.arg(2, "mode", "constant"), call.arg(3, "value", None)
    if mode == "constant" and value not in (None, 0):
        return _leak_all(t, call)
    padded = {x.dim() - 1 - i // 2 for i, amount in enumerate(pad) if amount}
    flows: dict[Key, Flow | None] = {}
    for key, flow in t.flows(x).items():
        if flow.dim in padded:
            flows[key] = uniform(flow)
        else:
            flows[key] = None if flow.shift and mode == "constant" and padded else flow
    t.emit(call.outputs, flows)


def _attention(t: ScaleTracer, call: Call) -> None:
    """scaled_dot_product_attention: softmax(q·kᵀ)·v is homogeneous in v alone; q's and k's flows leak."""
    q, k, v = call.arg(0, "query"), call.arg(1, "key"), call.arg(2, "value")
    t.leak_tensors([q, k, call.arg(3, "attn_mask")])
    dropout = call.arg(4, "dropout_p", 0.0)
    out = call.outputs[0]
    flows: dict[Key, Flow | None] = {}
    for key, flow in t.flows(v).items():
        if flow.dim == v.dim() - 2:  # the key positions, mixed by the attention weights
            flows[key] = uniform(flow)
        elif flow.shift and dropout:
            flows[key] = None  # with dropped weights the rows no longer sum to 1: a bias does not pass
        else:
            flows[key] = broadcast(flow, v.shape, out.shape)  # heads (repeated for GQA) and channels stay
    t.emit([out], flows)


_SOURCES = {"conv1d", "conv2d", "conv3d", "linear", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_CONV_T = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_NORMS = {"batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"}
# results that do not depend on a positive rescaling of their (float) inputs, or are metadata
_INERT = {"size", "dim", "ndimension", "numel", "nelement", "stride", "is_contiguous", "storage_offset",
          "data_ptr", "element_size", "get_device", "is_floating_point", "is_complex", "__len__", "argmax", "argmin",
          "__format__", "__repr__", "__hash__", "untyped_storage", "has_names", ".data", ".grad", "zeros_like",
          "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "new_zeros", "new_ones", "new_empty",
          "new_full"}
_SIGN_FLIPS = {"neg", "neg_", "__neg__", "negative"}
_ELEMENTWISE = {"relu", "relu_", "leaky_relu", "leaky_relu_", "prelu", "abs", "abs_", "dropout", "dropout_",
                "dropout1d", "dropout2d", "dropout3d", "feature_dropout", *_SIGN_FLIPS}
_COPIES = {"clone", "contiguous", "to", "float", "double", "half", "bfloat16", "type_as", "type", "cpu", "cuda",
           "requires_grad_", "__deepcopy__", "positive", "alias"}
_MOVES = {"view", "reshape", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "__getitem__",
          "narrow", "select", "expand", "expand_as", "broadcast_to", "view_as", "reshape_as", "chunk", "split",
          "unbind", "tensor_split", "movedim", "moveaxis", "swapaxes", "swapdims", "transpose", "transpose_", "t",
          "t_", "permute", "repeat", "tile", "repeat_interleave", "flip", "roll", "index_select", ".T", ".mT", ".H",
          ".mH"}
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "view_as",
             "reshape_as"}
_PERMUTATIONS = {"transpose", "transpose_", "t", "t_", "permute", "movedim", "moveaxis", "swapaxes", "swapdims", ".T",
                 ".mT", ".H", ".mH"}
# name: (index of the dim argument, index of keepdim, kind of statistic)
_REDUCTIONS = {**{name: (1, 2, "mean") for name in ("sum", "mean", "nansum", "nanmean", "amax", "amin", "max", "min")},
               **{name: (2, 3, "norm") for name in ("norm", "linalg_vector_norm", "linalg_norm")},
               "var": (1, 3, "var"), "std": (1, 3, "std")}
_SUB = {"sub", "sub_", "__sub__", "__isub__", "subtract", "rsub", "__rsub__"}
_REVERSED_SUB = {"rsub", "__rsub__"}
_ADD = {"add", "add_", "__add__", "__radd__", "__iadd__", *_SUB}
_MUL = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply"}
_DIV = {"div", "div_", "__truediv__", "__itruediv__", "divide", "true_divide", "__rdiv__", "__rtruediv__"}
_EXPONENTS = {"square": 2, "square_": 2, "sqrt": 0.5, "sqrt_": 0.5, "rsqrt": -0.5, "rsqrt_": -0.5, "reciprocal": -1,
              "reciprocal_": -1}
_POOL_MAX = {"max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
             "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
             "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"}
_POOL_AVG = {"avg_pool1d", "avg_pool2d", "avg_pool3d"}

_RULES: dict[str, Rule] = {
    **dict.fromkeys(_ELEMENTWISE, _elementwise), **dict.fromkeys(_COPIES, _copy),
    **dict.fromkeys(("detach", "detach_"), _cut), **dict.fromkeys(_MOVES, _move),
    **dict.fromkeys(_REDUCTIONS, _reduce), **dict.fromkeys(_ADD, _add), **dict.fromkeys(_MUL | _DIV, _scale),
    **dict.fromkeys(("pow", "pow_", *_EXPONENTS), _power),
    **dict.fromkeys(("clamp", "clamp_", "clamp_min", "clamp_min_", "clip", "clip_", "maximum", "fmax"), _floor),
    **dict.fromkeys(("matmul", "__matmul__", "__rmatmul__", "mm", "bmm"), _matmul),
    **dict.fromkeys(("linear", "einsum", "bilinear"), _linear_map),
    **dict.fromkeys(("cat", "concat", "concatenate", "stack"), _cat), **dict.fromkeys(_POOL_MAX | _POOL_AVG, _pool),
    "copy_": _copy_into, "pad": _pad, "normalize": _normalize, "scaled_dot_product_attention": _attention,
    "_weight_norm": _weight_norm,
}
