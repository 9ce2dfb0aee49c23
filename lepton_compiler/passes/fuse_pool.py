"""fuse-pool: a MaxPool of a convolution's output, fused into the conv's epilogue.

    MaxPool[kernel_shape, strides, pads, dilations, ceil_mode](Conv(x, w, b))
        -> FusedConv[pool_kernel, pool_strides, pool_pads, pool_dilations, pool_ceil_mode](x, w, b)

The conv is a Conv or a FusedConv without a pool (its residual and activation come
before the pool, as in ``MaxPool(Act(Add(Conv, r)))``) whose output the MaxPool alone
reads. 1-D and 2-D pools only; no Indices output, ``storage_order`` 0. An ``auto_pad``
of SAME_UPPER, SAME_LOWER or VALID is resolved into explicit pads.
"""

from __future__ import annotations

from ..errors import LeptonError
from ..ir import Graph, Node
from ..ops.nn import pool_window
from .base import Pass, PassOptions, PassResult
from .fusion import Users, fuse, fused_conv_attrs, fused_producer, is_conv, make_node, refuse, run_rules


def pool_attrs(pool: Node) -> dict | None:
    """The FusedConv ``pool_*`` attributes of ``pool``, with explicit pads; None when they
    cannot be expressed (auto_pad on a conv output whose spatial dims are not static)."""
    kernel = list(pool.attr("kernel_shape"))
    nd = len(kernel)
    pads = list(pool.attr("pads", [0] * 2 * nd))
    ceil_mode = int(pool.attr("ceil_mode", 0))
    if pool.attr("auto_pad", "NOTSET") != "NOTSET":
        try:
            win = pool_window(pool)
        except LeptonError:
            return None
        pads, ceil_mode = [*win.pads_begin, *win.pads_end], 0
    return {
        "pool_kernel": kernel,
        "pool_strides": list(pool.attr("strides", [1] * nd)),
        "pool_pads": pads,
        "pool_dilations": list(pool.attr("dilations", [1] * nd)),
        "pool_ceil_mode": ceil_mode,
    }


def fuse_pool_node(g: Graph, node: Node, users: Users) -> bool:
    if node.op != "MaxPool" or node.domain != "":
        return False
    if len(node.outputs) != 1:
        return refuse(node, node.inputs[0], "the MaxPool's Indices output is used")
    if node.attr("storage_order", 0) != 0 or len(node.attr("kernel_shape", [])) not in (1, 2):
        return refuse(node, node.inputs[0], "only 1-D and 2-D pools with storage_order 0 fuse")
    conv = fused_producer(g, node, node.inputs[0], users,
                          lambda n: is_conv(n, activation=True, residual=True))
    attrs = None if conv is None else pool_attrs(node)
    if attrs is None:
        return conv is not None and refuse(node, node.inputs[0], "auto_pad over spatial dims not known at compile time")
    return fuse(g, make_node("FusedConv", conv.name, list(conv.inputs), {**fused_conv_attrs(conv), **attrs}),
                node, [conv])


def fuse_pool(graph: Graph, options: PassOptions) -> PassResult:
    """MaxPool(Conv(x, w, b)) -> FusedConv[pool_kernel=kernel_shape, pool_strides=strides, ...](x, w, b), 1-D/2-D."""
    return run_rules(graph, fuse_pool_node, explain=options.explain, pattern="fuse-pool")


FUSE_POOL = Pass("fuse-pool", fuse_pool)
