"""Scale dataflow of one forward pass: which weights reach the outputs only through a normalisation.

A weight ``W`` is scale-invariant when the model's outputs do not change under ``W → r·W`` (r > 0). The
:class:`ScaleTracer` follows, op by op, how such a rescaling propagates: each tensor carries a set of
*flows*, one per weight whose rescaling multiplies that tensor by r (homogeneity of degree 1). Positively
homogeneous ops (ReLU, pooling, dropout, reshapes, multiplication by constants) carry flows on; a
normalisation that uses batch statistics over the axes the scale acts on *absorbs* them (its output does
not depend on r); anything else (a residual add, a non-homogeneous activation, a norm using running
statistics, reaching the outputs) *leaks* them. A weight is invariant when its flows were absorbed at least
once and never leaked. Unknown ops leak: the analysis can miss an invariant layer, never invent one.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

Granularity = Literal["channel", "group", "tensor"]
Variant = Literal["joint", "weight"]
Key = tuple[int, Variant]  # (source index, variant)


@dataclass(frozen=True)
class Flow:
    """How one weight's rescaling shows up in a tensor.

    ``dim`` is the tensor axis holding the weight's output channels (per-channel rescaling is tracked),
    or None when only a uniform rescaling of the whole weight is tracked. ``shift`` means the tensor is
    homogeneous only up to a per-channel additive constant (a bias that is not rescaled).
    """

    dim: int | None
    shift: bool = False


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


_CONV = {"conv1d", "conv2d", "conv3d"}
_CONV_T = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
# degree-1 positively homogeneous, elementwise: a per-channel shift does not survive them
_HOMOGENEOUS = {"relu", "relu_", "leaky_relu", "leaky_relu_", "dropout", "dropout_", "dropout1d", "dropout2d",
                "dropout3d", "alpha_dropout", "feature_dropout", "feature_alpha_dropout", "neg", "__neg__",
                "neg_", "abs", "abs_", "prelu"}
# value-preserving copies and casts: everything survives
_COPIES = {"clone", "contiguous", "detach", "detach_", "to", "float", "double", "half", "bfloat16", "type_as",
           "type", "cpu", "cuda", "requires_grad_", "__deepcopy__", "positive", "alias", "data"}
_POOL_MAX = {"max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
             "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
             "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"}
_POOL_AVG = {"avg_pool1d", "avg_pool2d", "avg_pool3d"}
_MOVES = {"view", "reshape", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "__getitem__",
          "narrow", "select", "expand", "expand_as", "view_as", "reshape_as", "chunk", "split", "unbind",
          "tensor_split", "movedim", "moveaxis", "swapaxes", "swapdims", "transpose", "transpose_", "t", "t_",
          "permute", "repeat", "pad"}
_REDUCE = {"sum", "mean", "amax", "amin", "max", "min", "nansum", "nanmean"}
_ADD = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__isub__", "subtract"}
_MUL = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply"}
_DIV = {"div", "div_", "__truediv__", "__itruediv__", "divide", "true_divide"}
_MATMUL = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "einsum", "linear", "bilinear"}
_CAT = {"cat", "concat", "concatenate", "stack", "hstack", "vstack"}
# results that do not depend on a positive rescaling of their (float) inputs, or are metadata
_INERT = {"__get__", "size", "dim", "ndimension", "numel", "nelement", "stride", "is_contiguous", "storage_offset",
          "data_ptr", "element_size", "get_device", "is_floating_point", "is_complex", "__len__", "argmax", "argmin",
          "__format__", "__repr__", "__hash__", "untyped_storage", "has_names"}


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__name__", "")


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


class ScaleTracer(TorchFunctionMode):
    """A torch-function mode that traces weight-rescaling flows through one forward.

    Args:
        resolve: the parameter or buffer a tensor is, looked up when an op sees it (FSDP2 swaps the
            registered tensors for unsharded ones during the forward), or None.
        current_module: returns the qualified name of the innermost module running now (for naming
            functional norms that own no parameter or buffer).
    """

    def __init__(self, resolve: Callable[[torch.Tensor], Owned | None], current_module: Callable[[], str]) -> None:
        super().__init__()
        self._resolve = resolve
        self._current_module = current_module
        # by identity (tensors compare elementwise); an entry goes when its tensor is freed
        self._flows: dict[int, tuple[weakref.ref[torch.Tensor], dict[Key, Flow]]] = {}
        self._source_index: dict[str, int] = {}
        self._misused: set[str] = set()  # parameters used other than as a conv/linear weight or bias
        self.result = TraceResult(sources=[])

    # -- bookkeeping -------------------------------------------------------------------------------------
    def flows(self, t: torch.Tensor) -> dict[Key, Flow]:
        entry = self._flows.get(id(t))
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

    def _leak(self, keys: Iterable[Key]) -> None:
        self.result.leaked.update(keys)

    def _leak_inputs(self, inputs: list[torch.Tensor]) -> None:
        for t in inputs:
            self._leak(self.flows(t))

    def leak_outputs(self, output: Any) -> None:
        """Flows that reach the model's outputs are not removed by any normalisation."""
        self._leak_inputs(_tensors(output))

    def finish(self) -> TraceResult:
        """Close the trace: a source whose parameter was used elsewhere leaks."""
        for i, src in enumerate(self.result.sources):
            if src.weight_name in self._misused:
                self._leak([(i, "joint"), (i, "weight")])
            if src.bias_name is not None and src.bias_name in self._misused:
                self._leak([(i, "joint")])
        return self.result

    # -- the mode ----------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = _tensors((args, kwargs))
        try:
            self._track(func, args, kwargs, inputs, out)
        except Exception:  # an op we misread must never break the user's forward: treat it as a leak
            self._leak_inputs(inputs)
            for t in _tensors(out):
                self._set(t, {})
        return out

    def _track(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               inputs: list[torch.Tensor], out: Any) -> None:
        name = _name(func)
        if name in _CONV or name in _CONV_T or name == "linear":
            weight = _arg(args, kwargs, 1, "weight")
            owned = self._param(weight)
            if owned is not None:
                return self._source(name, owned, args, kwargs, out)
        if name in _INERT:  # metadata and attribute reads (FSDP2 reads .data of unsharded parameters)
            return None
        self._note_misuse(inputs)
        tainted = [t for t in inputs if self.flows(t)]
        outputs = _tensors(out)
        if name in ("batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"):
            return self._norm(func, name, args, kwargs, inputs, outputs)
        if not tainted:
            for t in outputs:  # in-place ops on clean tensors and fresh results carry nothing
                self._set(t, {})
            return None
        handler = self._handler(name)
        if handler is None:
            self._leak_inputs(tainted)
            for t in outputs:
                self._set(t, {})
            return None
        return handler(name, args, kwargs, inputs, outputs)

    def _handler(self, name: str) -> Callable[..., None] | None:
        if name in _HOMOGENEOUS:
            return self._elementwise
        if name in _COPIES:
            return self._copy
        if name in _POOL_MAX or name in _POOL_AVG:
            return self._pool
        if name in _MOVES:
            return self._move
        if name in _REDUCE:
            return self._reduce
        if name in _ADD:
            return self._add
        if name in _MUL or name in _DIV:
            return self._scale
        if name in _MATMUL:
            return self._linear_map
        if name in _CAT:
            return self._cat
        if name == "copy_":
            return self._copy_into
        return None

    def _param(self, t: Any) -> Owned | None:
        owned = self._resolve(t) if isinstance(t, torch.Tensor) else None
        return owned if owned is not None and owned.is_param else None

    def _note_misuse(self, inputs: list[torch.Tensor]) -> None:
        for t in inputs:
            owned = self._param(t)
            if owned is not None:
                self._misused.add(owned.name)

    # -- sources -----------------------------------------------------------------------------------------
    def _source(self, name: str, weight_owned: Owned, args: tuple[Any, ...], kwargs: dict[str, Any],
                out: Any) -> None:
        x = _arg(args, kwargs, 0, "input")
        weight = _arg(args, kwargs, 1, "weight")
        bias = _arg(args, kwargs, 2, "bias")
        bias_owned = self._param(bias)
        transposed = name in _CONV_T
        groups = _arg(args, kwargs, 6, "groups", 1) if transposed else 1
        if not isinstance(out, torch.Tensor):
            return
        # output channels: the last axis of a linear; axis 1 of a batched conv (0 when unbatched)
        dim = out.dim() - 1 if name == "linear" else (1 if x.dim() == weight.dim() else 0)
        index = self._source_index.get(weight_owned.name)
        if index is None:
            index = len(self.result.sources)
            self._source_index[weight_owned.name] = index
            self.result.sources.append(Source(weight_owned.name, bias_owned.name if bias_owned else None,
                                              weight.shape, out_axis=1 if transposed else 0,
                                              channelwise=not (transposed and groups != 1)))
        src = self.result.sources[index]
        if bias is not None and (bias_owned is None or bias_owned.name != src.bias_name):
            self._leak([(index, "joint")])  # a bias other than the layer's own cannot be rescaled with it
            if bias_owned is not None:
                self._misused.add(bias_owned.name)
        channel = dim if src.channelwise else None
        flows: dict[Key, Flow] = {(index, "joint"): Flow(channel)}
        if bias is not None:
            flows[(index, "weight")] = Flow(channel, shift=True)
        # the input's own flows pass through a linear map; a bias breaks homogeneity in them
        for key, flow in self.flows(x).items():
            if bias is not None or flow.shift:
                self._leak([key])
            else:
                flows.setdefault(key, Flow(None))
        self._set(out, flows)

    # -- normalisations ----------------------------------------------------------------------------------
    def _norm(self, func: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
              inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        x = args[0] if args else kwargs["input"]
        native = not isinstance(func, type(F.batch_norm))  # torch.batch_norm & co: other argument orders
        if name == "batch_norm":
            # F.batch_norm(input, running_mean, running_var, weight, bias, training, ...)
            # torch.batch_norm(input, weight, bias, running_mean, running_var, training, ...)
            order = (3, 4, 1, 2) if native else (1, 2, 3, 4)
            rmean, rvar, weight, _ = (_arg(args, kwargs, i, n) for i, n in
                                      zip(order, ("running_mean", "running_var", "weight", "bias")))
            training = _arg(args, kwargs, 5, "training", False)
            batch_stats = bool(training) or (rmean is None and rvar is None)
        elif name == "instance_norm":
            # F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, ...)
            # torch.instance_norm(input, weight, bias, running_mean, running_var, use_input_stats, ...)
            rmean = _arg(args, kwargs, 3 if native else 1, "running_mean")
            weight = _arg(args, kwargs, 1 if native else 3, "weight")
            batch_stats = bool(_arg(args, kwargs, 5, "use_input_stats", True))
        else:  # group_norm, layer_norm, rms_norm: always the statistics of the input itself
            weight, rmean, batch_stats = _arg(args, kwargs, 2, "weight"), None, True
        module = self._norm_module(weight, rmean)
        affine = [t for t in inputs if t is not x]
        self._leak_inputs(affine)
        for t in outputs:
            self._set(t, {})
        if not isinstance(x, torch.Tensor):
            return
        for key, flow in self.flows(x).items():
            absorption = self._absorb(name, args, kwargs, x, flow, module) if batch_stats else None
            if absorption is None:
                self._leak([key])
            else:
                self.result.absorbed.setdefault(key, []).append(absorption)

    def _norm_module(self, *tensors: Any) -> str:
        owned = [o.module for t in tensors if isinstance(t, torch.Tensor) and (o := self._resolve(t)) is not None]
        return (owned[0] if owned else self._current_module()) or "<root>"

    def _absorb(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], x: torch.Tensor, flow: Flow,
                module: str) -> Absorption | None:
        """The absorption of ``flow`` by this normalisation, or None when it does not remove the scale."""
        channels = x.shape[1] if x.dim() > 1 else 1
        if name in ("batch_norm", "instance_norm"):  # statistics per channel (axis 1)
            if flow.dim == 1:
                return Absorption(module, "channel", channels)
            return None if flow.shift else Absorption(module, "tensor", 1)
        if flow.shift and name == "rms_norm":
            return None
        if name == "group_norm":
            num_groups = int(_arg(args, kwargs, 1, "num_groups"))
            if flow.shift:
                return None
            if flow.dim == 1:
                return Absorption(module, "group", num_groups)
            return Absorption(module, "tensor", 1)
        shape = _arg(args, kwargs, 1, "normalized_shape")
        n_norm = 1 if isinstance(shape, int) else len(shape)
        first_normed = x.dim() - n_norm
        if flow.dim is not None and flow.dim < first_normed and name == "layer_norm":
            return Absorption(module, "channel", x.shape[flow.dim])  # each channel is its own normalised group
        return None if flow.shift else Absorption(module, "tensor", 1)

    # -- propagation rules -------------------------------------------------------------------------------
    def _elementwise(self, name, args, kwargs, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        src = self._first_tainted(inputs)
        flows = {}
        for key, flow in self.flows(src).items():
            if flow.shift:
                self._leak([key])
            else:
                flows[key] = flow
        self._leak_other_inputs(inputs, src)
        for t in outputs:
            self._set(t, dict(flows))

    def _copy(self, name, args, kwargs, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        src = self._first_tainted(inputs)
        self._leak_other_inputs(inputs, src)
        for t in outputs:
            self._set(t, dict(self.flows(src)))

    def _copy_into(self, name, args, kwargs, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        dst, src = args[0], args[1]
        self._leak(self.flows(dst))  # the overwritten values are gone; treat a partial overwrite as a leak
        self._set(dst, dict(self.flows(src)) if dst.shape == src.shape else {})
        if dst.shape != src.shape:
            self._leak(self.flows(src))

    def _pool(self, name, args, kwargs, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        x = inputs[0]
        spatial = int(name.split("pool")[1][0]) if "pool" in name else 0
        first_spatial = x.dim() - spatial
        padded = name in _POOL_AVG and _arg(args, kwargs, 3, "padding", 0) not in (0, (0,), (0, 0), (0, 0, 0))
        flows = {}
        for key, flow in self.flows(x).items():
            dim = flow.dim if flow.dim is not None and flow.dim < first_spatial else None
            shift = flow.shift and not padded and dim is not None
            if flow.shift and not shift:
                self._leak([key])
                continue
            flows[key] = Flow(dim, shift)
        self._leak_other_inputs(inputs, x)
        for t in outputs:
            self._set(t, dict(flows))

    def _move(self, name, args, kwargs, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        x = inputs[0]
        self._leak_other_inputs(inputs, x)
        for t in outputs:
            flows = {}
            for key, flow in self.flows(x).items():
                dim = self._moved_dim(name, args, kwargs, x, t, flow.dim)
                if flow.shift and dim is None:
                    self._leak([key])
                    continue
                flows[key] = Flow(dim, flow.shift)
            self._set(t, flows)

    @staticmethod
    def _moved_dim(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], x: torch.Tensor,
                   y: torch.Tensor, dim: int | None) -> int | None:
        """Where axis ``dim`` of ``x`` went in ``y`` after a reshape-like op, or None when it is mixed."""
        if dim is None or not isinstance(y, torch.Tensor):
            return None
        if name == "permute":
            order = args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else args[1]
            order = [_norm_dim(int(d), x.dim()) for d in order]
            return order.index(dim) if y.shape[order.index(dim)] == x.shape[dim] else None
        if name in ("transpose", "transpose_", "swapaxes", "swapdims", "t", "t_"):
            a, b = (0, 1) if name.startswith("t") and len(name) <= 2 else (
                _norm_dim(int(args[1]), x.dim()), _norm_dim(int(args[2]), x.dim()))
            return b if dim == a else a if dim == b else dim
        if x.shape[: dim + 1] == y.shape[: dim + 1]:
            return dim
        tail = x.dim() - dim
        if y.dim() >= tail and x.shape[dim:] == y.shape[y.dim() - tail:]:
            return y.dim() - tail
        return None

    def _reduce(self, name, args, kwargs, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        x = inputs[0]
        dims = _arg(args, kwargs, 1, "dim")
        keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
        if isinstance(dims, torch.Tensor):
            dims = None
        reduced = set(range(x.dim())) if dims is None else {
            _norm_dim(int(d), x.dim()) for d in (dims if isinstance(dims, (tuple, list)) else [dims])}
        flows = {}
        for key, flow in self.flows(x).items():
            if flow.dim is None or flow.dim in reduced:
                if flow.shift:
                    self._leak([key])
                    continue
                flows[key] = Flow(None)
            else:
                dim = flow.dim if keepdim else flow.dim - sum(d < flow.dim for d in reduced)
                flows[key] = Flow(dim, flow.shift)
        self._leak_other_inputs(inputs, x)
        for t in outputs:
            if t.is_floating_point():
                self._set(t, dict(flows))

    def _add(self, name, args, kwargs, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        operands = [a for a in args[:2] if isinstance(a, (torch.Tensor, int, float))]
        tensors = [a for a in operands if isinstance(a, torch.Tensor)]
        keys = {k for t in tensors for k in self.flows(t)}
        flows: dict[Key, Flow] = {}
        for key in keys:
            present = [self.flows(t)[key] for t in tensors if key in self.flows(t)]
            others = [a for a in operands if not (isinstance(a, torch.Tensor) and key in self.flows(a))]
            if not others and len(set(present)) == 1:
                flows[key] = present[0]
            elif not others and len({f.dim for f in present}) == 1:
                flows[key] = Flow(present[0].dim, shift=any(f.shift for f in present))
            elif len(present) == 1 and len(others) == 1 and self._per_channel_constant(others[0], present[0], outputs):
                flows[key] = Flow(present[0].dim, shift=True)  # a bias added by hand: BN still removes it
            else:
                self._leak([key])
        for t in outputs:
            self._set(t, dict(flows))

    def _per_channel_constant(self, other: Any, flow: Flow, out: list[torch.Tensor]) -> bool:
        """Whether ``other`` is constant along every axis but the flow's channel axis (a bias)."""
        if flow.dim is None or not isinstance(other, torch.Tensor) or self.flows(other) or not out:
            return False
        shape = (1,) * (out[0].dim() - other.dim()) + tuple(other.shape)
        return all(s == 1 for i, s in enumerate(shape) if i != flow.dim)

    def _scale(self, name, args, kwargs, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
        if name == "__rmul__":
            a, b = b, a
        fa = self.flows(a) if isinstance(a, torch.Tensor) else {}
        fb = self.flows(b) if isinstance(b, torch.Tensor) else {}
        flows: dict[Key, Flow] = {}
        for key in set(fa) | set(fb):
            if key in fa and key in fb:
                self._leak([key])
            elif key in fb and name in _DIV:
                self._leak([key])  # c / x is not homogeneous in x
            else:
                flow = fa.get(key) or fb[key]
                scalar = not isinstance(b if key in fa else a, torch.Tensor)
                if flow.shift and not scalar:
                    self._leak([key])
                    continue
                flows[key] = flow
        for t in outputs:
            self._set(t, dict(flows))

    def _linear_map(self, name, args, kwargs, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        seen: dict[Key, int] = {}
        for t in inputs:
            for key, flow in self.flows(t).items():
                seen[key] = seen.get(key, 0) + 1
                if flow.shift:
                    self._leak([key])
        bias = _arg(args, kwargs, 2, "bias") if name == "linear" else None
        flows = {}
        for key, count in seen.items():
            if count > 1 or bias is not None:
                self._leak([key])
            elif key not in self.result.leaked:
                flows[key] = Flow(None)
        for t in outputs:
            self._set(t, dict(flows))

    def _cat(self, name, args, kwargs, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
        seq = list(args[0]) if args else list(kwargs["tensors"])
        dim = _arg(args, kwargs, 1, "dim", 0)
        stack = name == "stack"
        keys = {k for t in seq if isinstance(t, torch.Tensor) for k in self.flows(t)}
        flows = {}
        for key in keys:
            present = [self.flows(t).get(key) for t in seq]
            flow = next(f for f in present if f is not None)
            ndim = seq[0].dim() + (1 if stack else 0)
            d = _norm_dim(int(dim), ndim) if name in ("cat", "concat", "concatenate", "stack") else None
            if all(f == flow for f in present) and d is not None:
                shifted = flow.dim if (flow.dim is None or not stack or d > flow.dim) else flow.dim + 1
                flows[key] = Flow(shifted, flow.shift)
            elif flow.dim is not None and not stack and d == flow.dim and all(f in (None, flow) for f in present):
                flows[key] = flow  # channels of other tensors appended along the channel axis
            else:
                self._leak([key])
        for t in outputs:
            self._set(t, dict(flows))

    # -- helpers -----------------------------------------------------------------------------------------
    def _first_tainted(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return next(t for t in inputs if self.flows(t))

    def _leak_other_inputs(self, inputs: list[torch.Tensor], keep: torch.Tensor) -> None:
        for t in inputs:
            if t is not keep:
                self._leak(self.flows(t))
