"""Shape helpers shared by type rules, reference kernels and lowerings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..ir import Dim, Node, Sym, TensorType
from .inference import MAX_ELEMENTS
from .registry import require


def normalize_axis(node: Node, axis: int, rank: int) -> int:
    require(node, -rank <= axis < rank, f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def broadcast_shapes(node: Node, *shapes: Sequence[Dim]) -> tuple[Dim, ...]:
    """Numpy (multidirectional) broadcasting of shapes that may hold symbols."""
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for axis in range(rank):
        dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        chosen: Dim = 1
        for d in dims:
            if d == 1:
                continue
            if chosen == 1:
                chosen = d
            elif isinstance(chosen, int) and isinstance(d, int):
                require(node, chosen == d, f"shapes {[list(s) for s in shapes]} do not broadcast")
            elif isinstance(chosen, str) and isinstance(d, int):
                chosen = d
        out.append(chosen)
    return tuple(out)


def known_ints(node: Node, index: int, what: str) -> list[int]:
    """The compile-time value of input ``index`` as ints (for shapes, axes, pads)."""
    value = node.inputs[index] if index < len(node.inputs) else None
    require(node, value is not None, f"{what} input is missing")
    require(node, value.known is not None, f"{what} must be known at compile time")
    flat = value.known.ravel().tolist()
    return [x if isinstance(x, Sym) else int(x) for x in flat]


def dim_of(x) -> Dim:
    """A known shape element as a type dim (symbols become their names)."""
    return x.name if isinstance(x, Sym) else int(x)


def static_dims(node: Node, t: TensorType, axes: Sequence[int], what: str) -> list[int]:
    dims = [t.shape[a] for a in axes]
    require(node, all(isinstance(d, int) for d in dims), f"{what} dims {dims} must be static")
    return dims  # type: ignore[return-value]


@dataclass(frozen=True)
class Window:
    """Geometry of a sliding-window op (Conv, pooling) over the spatial dims."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    out: tuple[int, ...]


def window(node: Node, spatial: Sequence[int], kernel: Sequence[int], ceil_mode: bool = False) -> Window:
    """Resolve strides, dilations, pads and auto_pad into explicit pads and output sizes."""
    nd = len(spatial)
    strides = tuple(node.attr("strides", [1] * nd))
    dilations = tuple(node.attr("dilations", [1] * nd))
    pads = list(node.attr("pads", [0] * (2 * nd)))
    auto_pad = node.attr("auto_pad", "NOTSET")
    require(node, len(kernel) == nd, f"kernel rank {len(kernel)} does not match {nd} spatial dims")
    require(node, len(strides) == nd and all(s >= 1 for s in strides), f"invalid strides {list(strides)}")
    require(node, len(dilations) == nd and all(d >= 1 for d in dilations), f"invalid dilations {list(dilations)}")
    require(node, all(k >= 1 for k in kernel), f"invalid kernel shape {list(kernel)}")
    require(node, len(pads) == 2 * nd and all(p >= 0 for p in pads), f"invalid pads {pads}")
    require(node, max([*kernel, *strides, *dilations, *pads]) <= MAX_ELEMENTS,
            f"kernel {list(kernel)}, strides {list(strides)}, dilations {list(dilations)} or pads {pads} "
            f"exceed {MAX_ELEMENTS:,}")
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [math.ceil(i / s) for i, s in zip(spatial, strides)]
        total = [max(0, (o - 1) * s + k - i) for o, s, k, i in zip(out, strides, span, spatial)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return Window(tuple(kernel), strides, dilations, tuple(begin), tuple(end), tuple(out))
    if auto_pad == "VALID":
        pads = [0] * (2 * nd)
    else:
        require(node, auto_pad == "NOTSET", f"unknown auto_pad {auto_pad!r}")
    begin, end = pads[:nd], pads[nd:]
    for axis, (i, k, b, e) in enumerate(zip(spatial, span, begin, end)):
        # Outputs beyond the input and a whole window read nothing but padding; such pads come from a
        # malformed model (and would make code generation, which unrolls the border, unbounded).
        require(node, isinstance(i, str) or (b < i + k and e < i + k),
                f"pads {pads} reach beyond the input ({i}) and the kernel extent ({k}) in spatial dim {axis}")
    out = []
    for i, s, k, b, e in zip(spatial, strides, span, begin, end):
        room = i + b + e - k
        require(node, room >= 0, f"kernel extent {k} is larger than the padded input {i + b + e}")
        o = (math.ceil(room / s) if ceil_mode else room // s) + 1
        if ceil_mode and (o - 1) * s >= i + b:
            o -= 1  # the last window would start inside the end padding
        out.append(o)
    return Window(tuple(kernel), strides, dilations, tuple(begin), tuple(end), tuple(out))


def sliding_views(x: np.ndarray, win: Window, pad_value: float) -> tuple[np.ndarray, list[tuple]]:
    """Pad ``x`` ([N, C, *spatial]) and return it with one index tuple per kernel offset.

    ``padded[idx]`` is the [N, C, *out] input that the kernel offset ``idx`` reads.
    """
    nd = len(win.kernel)
    # Pad enough at the end that ceil_mode's last partial window is in range.
    need = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip(win.out, win.strides, win.dilations, win.kernel)]
    end = [max(e, n - (i + b)) for e, n, i, b in zip(win.pads_end, need, x.shape[2:], win.pads_begin)]
    padded = np.pad(x, [(0, 0), (0, 0)] + list(zip(win.pads_begin, end)), constant_values=pad_value)
    views = []
    for offset in np.ndindex(*win.kernel):
        idx = [slice(None), slice(None)]
        for a in range(nd):
            start = offset[a] * win.dilations[a]
            idx.append(slice(start, start + (win.out[a] - 1) * win.strides[a] + 1, win.strides[a]))
        views.append((offset, tuple(idx)))
    return padded, views
