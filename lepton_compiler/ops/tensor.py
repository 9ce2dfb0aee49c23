"""Data-movement and shape ops: views, and the shape arithmetic that exporters emit."""

from __future__ import annotations

import numpy as np
from onnx import helper as onnx_helper

from ..ir import Dim, Node, Sym, TensorType, dim_factors, make_dim, shape_product
from .registry import OpKind, register, require
from .shapes import broadcast_shapes, dim_of, known_ints, normalize_axis


# -- views ---------------------------------------------------------------------------------
def infer_identity(node: Node) -> list[TensorType]:
    return [node.inputs[0].type]


register("Identity", infer_identity, lambda node, inputs: [inputs[0]], OpKind.VIEW)


def infer_dropout(node: Node) -> list[TensorType]:
    require(node, node.attr("training_mode", 0) == 0, "training mode is not supported")
    x = node.inputs[0].type
    return [x, TensorType("bool", x.shape)][: len(node.outputs)]


def reference_dropout(node: Node, inputs):
    x = inputs[0]
    return [x, np.ones(x.shape, bool)][: len(node.outputs)]


register("Dropout", infer_dropout, reference_dropout, OpKind.VIEW)


def infer_flatten(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    axis = node.attr("axis", 1)
    require(node, -x.rank <= axis <= x.rank, f"axis {axis} is out of range for rank {x.rank}")
    axis = axis % x.rank if axis < 0 else axis
    return [TensorType(x.dtype, (shape_product(x.shape[:axis]), shape_product(x.shape[axis:])))]


def reference_flatten(node: Node, inputs):
    x = inputs[0]
    axis = node.attr("axis", 1) % max(x.ndim, 1) if node.attr("axis", 1) < 0 else node.attr("axis", 1)
    # both sizes explicit: numpy cannot infer a -1 next to a 0 (a zero-size tensor)
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64)))]


register("Flatten", infer_flatten, reference_flatten, OpKind.VIEW)


def reshape_target(node: Node, in_shape, target) -> tuple:
    """Resolve a Reshape target (with 0 = copy and -1 = infer) against the input shape."""
    allowzero = node.attr("allowzero", 0)
    out = []
    for i, t in enumerate(target):
        if isinstance(t, Sym):
            out.append(t.name)
        elif t == 0 and not allowzero:
            require(node, i < len(in_shape), f"target {target} copies dim {i} that the input lacks")
            out.append(in_shape[i])
        else:
            require(node, t >= -1, f"invalid target dim {t}")
            out.append(int(t))
    require(node, out.count(-1) <= 1, f"target {target} has more than one -1")
    in_symbols, in_factor = dim_factors(shape_product(in_shape))
    known_symbols, known_factor = dim_factors(shape_product([d for d in out if d != -1]))
    if -1 in out:
        rest = list(in_symbols)
        for s in known_symbols:
            require(node, s in rest, f"cannot reshape {list(in_shape)} to {target}")
            rest.remove(s)
        require(node, known_factor != 0 and in_factor % known_factor == 0,
                f"cannot reshape {list(in_shape)} to {target}")
        out[out.index(-1)] = make_dim(rest, in_factor // known_factor)
    else:
        require(node, (in_symbols, in_factor) == (known_symbols, known_factor),
                f"cannot reshape {list(in_shape)} to {target}")
    return tuple(out)


def infer_reshape(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    target = known_ints(node, 1, "shape")
    require(node, node.inputs[1].type.rank == 1, f"the shape input must be 1-D, not {node.inputs[1].type}")
    return [TensorType(x.dtype, reshape_target(node, x.shape, target))]


def reference_reshape(node: Node, inputs):
    x, shape = inputs
    shape = [int(s) for s in shape]
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


register("Reshape", infer_reshape, reference_reshape, OpKind.VIEW, static_inputs=(1,))


# -- shape arithmetic ----------------------------------------------------------------------
def _shape_range(node: Node, rank: int) -> slice:
    start, end = node.attr("start", 0), node.attr("end", rank)
    return slice(start, end)


def infer_shape(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    length = len(range(rank := x.rank)[_shape_range(node, rank)])
    return [TensorType("int64", (length,))]


def known_shape(node: Node):
    x = node.inputs[0].type
    dims = [Sym(d) if isinstance(d, str) else d for d in x.shape[_shape_range(node, x.rank)]]
    if all(isinstance(d, int) for d in dims):
        return [np.array(dims, np.int64)]
    return [np.array(dims, dtype=object)]


register("Shape", infer_shape, lambda node, inputs: [np.array(inputs[0].shape[_shape_range(node, inputs[0].ndim)], np.int64)],
         OpKind.SHAPE, known=known_shape)


def infer_gather(node: Node) -> list[TensorType]:
    data, idx = node.inputs[0].type, node.inputs[1].type
    require(node, idx.dtype in ("int64", "int32"), f"indices must be int32/int64, got {idx}")
    axis = normalize_axis(node, node.attr("axis", 0), data.rank)
    return [TensorType(data.dtype, data.shape[:axis] + idx.shape + data.shape[axis + 1:])]


def reference_gather(node: Node, inputs):
    data, idx = inputs
    axis = node.attr("axis", 0) % data.ndim
    size = data.shape[axis]
    idx = np.asarray(idx, np.int64)
    require(node, bool(np.all((idx >= -size) & (idx < size))), f"indices out of range for dim {size}")
    return [np.take(data, np.where(idx < 0, idx + size, idx), axis=axis)]


register("Gather", infer_gather, reference_gather, OpKind.SHAPE)


def infer_concat(node: Node) -> list[TensorType]:
    types = [v.type for v in node.inputs]
    first = types[0]
    axis = normalize_axis(node, node.attr("axis", 0), first.rank)
    require(node, all(t.dtype == first.dtype and t.rank == first.rank for t in types),
            f"inputs differ in dtype or rank: {[str(t) for t in types]}")
    for t in types:
        for i, (a, b) in enumerate(zip(t.shape, first.shape)):
            require(node, i == axis or a == b, f"inputs differ off the concat axis: {[str(t) for t in types]}")
    return [TensorType(first.dtype, first.shape[:axis] + (dim_sum(node, [t.shape[axis] for t in types]),)
                       + first.shape[axis + 1:])]


def dim_sum(node: Node, dims) -> Dim:
    """``N*2 + N`` -> ``N*3``; a symbolic dim plus a static one has no name in the IR."""
    factors = [dim_factors(d) for d in dims]
    symbols = {s for s, _ in factors}
    require(node, len(symbols) == 1, f"cannot add dims {list(dims)}: the result would need a new symbol")
    return make_dim(symbols.pop(), sum(f for _, f in factors))


register("Concat", infer_concat, lambda node, inputs: [np.concatenate(inputs, axis=node.attr("axis", 0))],
         OpKind.SHAPE)


def infer_unsqueeze(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    rank = x.rank + len(axes := known_ints(node, 1, "axes"))
    axes = sorted(normalize_axis(node, a, rank) for a in axes)
    require(node, len(set(axes)) == len(axes), f"repeated axes {axes}")
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return [TensorType(x.dtype, tuple(shape))]


def _sorted_axes(node):
    rank = node.inputs[0].type.rank + len(known_ints(node, 1, "axes"))
    return tuple(sorted(a % rank for a in known_ints(node, 1, "axes")))


register("Unsqueeze", infer_unsqueeze, lambda node, inputs: [np.expand_dims(inputs[0], _sorted_axes(node))],
         OpKind.VIEW, static_inputs=(1,))


def _squeeze_axes(node: Node) -> list[int]:
    x = node.inputs[0].type
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        return sorted(normalize_axis(node, a, x.rank) for a in known_ints(node, 1, "axes"))
    require(node, x.is_static, "Squeeze without axes needs a static input shape")
    return [i for i, d in enumerate(x.shape) if d == 1]


def infer_squeeze(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    axes = _squeeze_axes(node)
    require(node, all(x.shape[a] == 1 for a in axes), f"cannot squeeze axes {axes} of {x}")
    return [TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))]


register("Squeeze", infer_squeeze, lambda node, inputs: [np.squeeze(inputs[0], tuple(_squeeze_axes(node)))],
         OpKind.VIEW, static_inputs=(1,))


def cast_dtype(node: Node) -> str:
    to = node.attr("to")
    try:
        return str(onnx_helper.tensor_dtype_to_np_dtype(to))
    except (KeyError, TypeError, ValueError):
        return f"<onnx type {to}>"


def infer_cast(node: Node) -> list[TensorType]:
    dtype = cast_dtype(node)
    try:
        return [TensorType(dtype, node.inputs[0].type.shape)]
    except ValueError:
        require(node, False, f"casting to {dtype} is not supported")
        raise


def reference_cast(node: Node, inputs):
    x = inputs[0]
    if x.dtype == object:  # symbolic shape values stay symbolic
        return [x]
    return [x.astype(cast_dtype(node))]


register("Cast", infer_cast, reference_cast, OpKind.ELEMENTWISE)


def _slice_params(node: Node, rank: int):
    starts = known_ints(node, 1, "starts")
    ends = known_ints(node, 2, "ends")
    has = lambda i: len(node.inputs) > i and node.inputs[i] is not None  # noqa: E731
    axes = known_ints(node, 3, "axes") if has(3) else list(range(len(starts)))
    steps = known_ints(node, 4, "steps") if has(4) else [1] * len(starts)
    require(node, len(starts) == len(ends) == len(axes) == len(steps), "starts/ends/axes/steps differ in length")
    require(node, all(s != 0 for s in steps), "slice steps must not be 0")
    index = [slice(None)] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[normalize_axis(node, a, rank)] = slice(s, e, st)
    return tuple(index)


def infer_slice(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    index = _slice_params(node, x.rank)
    shape = []
    for d, sl in zip(x.shape, index):
        if sl == slice(None):
            shape.append(d)
        else:
            require(node, isinstance(d, int), f"slicing symbolic dim {d} is not supported")
            shape.append(len(range(d)[sl]))
    return [TensorType(x.dtype, tuple(shape))]


register("Slice", infer_slice, lambda node, inputs: [inputs[0][_slice_params(node, inputs[0].ndim)]],
         OpKind.SHAPE, static_inputs=(1, 2, 3, 4))


def _perm(node: Node, rank: int) -> list[int]:
    perm = node.attr("perm", list(reversed(range(rank))))
    require(node, sorted(perm) == list(range(rank)), f"perm {perm} is not a permutation of {rank} axes")
    return list(perm)


def infer_transpose(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    return [TensorType(x.dtype, tuple(x.shape[p] for p in _perm(node, x.rank)))]


register("Transpose", infer_transpose, lambda node, inputs: [np.transpose(inputs[0], _perm(node, inputs[0].ndim))],
         OpKind.OPAQUE)


# -- Split ---------------------------------------------------------------------------------
def split_sizes(node: Node) -> list[Dim]:
    """The size of each output along the split axis."""
    x = node.inputs[0].type
    axis = normalize_axis(node, node.attr("axis", 0), x.rank)
    dim, count = x.shape[axis], len(node.outputs)
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        sizes = known_ints(node, 1, "split")
        require(node, len(sizes) == count and all(isinstance(s, int) and s >= 0 for s in sizes),
                f"split {sizes} does not give {count} non-negative sizes")
        require(node, isinstance(dim, int), f"splitting the dynamic dim {dim} into sizes {sizes} is not supported")
        require(node, sum(sizes) == dim, f"split {sizes} does not add up to dim {dim}")
        return list(sizes)
    symbols, factor = dim_factors(dim)
    require(node, factor % count == 0, f"dim {dim} does not split into {count} equal parts")
    return [make_dim(symbols, factor // count)] * count


def infer_split(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    axis = normalize_axis(node, node.attr("axis", 0), x.rank)
    return [TensorType(x.dtype, x.shape[:axis] + (size,) + x.shape[axis + 1:]) for size in split_sizes(node)]


def reference_split(node: Node, inputs):
    x = inputs[0]
    axis = normalize_axis(node, node.attr("axis", 0), x.ndim)
    sizes = split_sizes(node)
    if not all(isinstance(s, int) for s in sizes):
        sizes = [x.shape[axis] // len(sizes)] * len(sizes)
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


register("Split", infer_split, reference_split, OpKind.OPAQUE, static_inputs=(1,))


# -- Pad -----------------------------------------------------------------------------------
PAD_MODES = ("constant", "reflect", "edge", "wrap")


def pad_params(node: Node) -> tuple[list[int], list[int], str, float]:
    """(pads at the begin of each axis, pads at the end, mode, constant value)."""
    x = node.inputs[0].type
    pads = known_ints(node, 1, "pads")
    require(node, len(pads) == 2 * x.rank and all(isinstance(p, int) for p in pads),
            f"pads {pads} should hold 2 x {x.rank} ints")
    mode = node.attr("mode", "constant")
    require(node, mode in PAD_MODES, f"unknown mode {mode!r}")
    value = 0.0
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        given = node.inputs[2].known
        require(node, given is not None and given.size <= 1, "constant_value must be a scalar known at compile time")
        value = given.reshape(-1)[0] if given.size else 0.0
    return pads[:x.rank], pads[x.rank:], mode, value


def infer_pad(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    begin, end, mode, _ = pad_params(node)
    shape: list[Dim] = []
    for d, b, e in zip(x.shape, begin, end):
        if b == 0 and e == 0:
            shape.append(d)
            continue
        require(node, isinstance(d, int), f"padding the dynamic dim {d} is not supported")
        require(node, d + b + e >= 0, f"pads {b}, {e} remove more than the dim {d}")
        if mode == "reflect":
            require(node, max(b, e) < d, f"reflect padding {max(b, e)} must be smaller than the dim {d}")
        elif mode in ("edge", "wrap"):
            require(node, d > 0, f"{mode} padding of an empty dim")
        shape.append(d + b + e)
    return [TensorType(x.dtype, tuple(shape))]


def reference_pad(node: Node, inputs):
    x = inputs[0]
    begin, end, mode, value = pad_params(node)
    crop = tuple(slice(max(0, -b), d - max(0, -e)) for d, b, e in zip(x.shape, begin, end))
    widths = [(max(0, b), max(0, e)) for b, e in zip(begin, end)]
    if mode == "constant":
        return [np.pad(x[crop], widths, mode="constant", constant_values=np.asarray(value).astype(x.dtype))]
    return [np.pad(x[crop], widths, mode=mode)]


register("Pad", infer_pad, reference_pad, OpKind.OPAQUE, static_inputs=(1, 2))


# -- Expand, ConstantOfShape, Range ----------------------------------------------------------
def infer_expand(node: Node) -> list[TensorType]:
    x = node.inputs[0].type
    target = tuple(dim_of(d) for d in known_ints(node, 1, "shape"))
    require(node, all(isinstance(d, str) or d >= 0 for d in target), f"invalid shape {list(target)}")
    return [TensorType(x.dtype, broadcast_shapes(node, x.shape, target))]


def reference_expand(node: Node, inputs):
    x, shape = inputs
    return [np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(int(d) for d in shape))).copy()]


register("Expand", infer_expand, reference_expand, OpKind.ELEMENTWISE, static_inputs=(1,))


def fill_value(node: Node) -> np.ndarray:
    value = node.attr("value")
    if value is None:
        return np.zeros((), np.float32)
    value = np.asarray(value)
    require(node, value.size == 1, "value must hold one element")
    return value.reshape(())


def infer_constant_of_shape(node: Node) -> list[TensorType]:
    shape = tuple(dim_of(d) for d in known_ints(node, 0, "shape"))
    require(node, all(isinstance(d, str) or d >= 0 for d in shape), f"invalid shape {list(shape)}")
    return [TensorType(str(fill_value(node).dtype), shape)]


register("ConstantOfShape", infer_constant_of_shape,
         lambda node, inputs: [np.full([int(d) for d in inputs[0]], fill_value(node))], OpKind.SHAPE,
         static_inputs=(0,))


def range_params(node: Node):
    values = []
    for i, what in enumerate(("start", "limit", "delta")):
        v = node.inputs[i].known if node.inputs[i] is not None else None
        require(node, v is not None and v.size == 1 and v.dtype != object, f"{what} must be known at compile time")
        values.append(v.reshape(()))
    require(node, values[2] != 0, "delta must not be 0")
    return values


def range_length(node: Node) -> int:
    start, limit, delta = range_params(node)
    return max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)


def infer_range(node: Node) -> list[TensorType]:
    dtype = node.inputs[0].type.dtype
    require(node, all(v is not None and v.type.dtype == dtype for v in node.inputs[:3]),
            "start, limit and delta must have one dtype")
    return [TensorType(dtype, (range_length(node),))]


def reference_range(node: Node, inputs):
    start, _, delta = (np.asarray(v).reshape(()) for v in inputs)
    dtype = np.asarray(inputs[0]).dtype
    return [(start + np.arange(range_length(node)) * delta).astype(dtype)]


register("Range", infer_range, reference_range, OpKind.SHAPE, static_inputs=(0, 1, 2))
