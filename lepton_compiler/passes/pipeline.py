"""Opt levels -> ordered pass lists, and the driver that runs them."""

from __future__ import annotations

import time
from typing import Callable, Optional

from ..errors import LeptonError
from ..ir import Graph
from ..ir.verifier import verify
from .base import Pass, PassOptions
from .canonicalize_reshape import CANONICALIZE_RESHAPE
from .cse import CSE
from .dead_code import DEAD_CODE
from .fold_batchnorm import FOLD_BATCHNORM
from .fold_channel_affine import FOLD_CHANNEL_AFFINE
from .fold_constants import FOLD_CONSTANTS
from .fuse_activation import FUSE_ACTIVATION
from .fuse_dynamic_quant import FUSE_DYNAMIC_QUANT
from .fuse_elementwise import FUSE_ELEMENTWISE
from .fuse_pool import FUSE_POOL
from .fuse_qdq import FUSE_QDQ
from .fuse_residual import FUSE_RESIDUAL
from .fuse_softmax import FUSE_SOFTMAX
from .identity import REMOVE_IDENTITY
from .lower_qlinear import LOWER_QLINEAR
from .matmul_add_to_gemm import MATMUL_ADD_TO_GEMM
from .transpose import TRANSPOSE_CANCEL

CLEANUP = [REMOVE_IDENTITY, FOLD_CONSTANTS, CANONICALIZE_RESHAPE, TRANSPOSE_CANCEL, CSE, DEAD_CODE]
"""-O1: the graph the user wrote, without dead weight (what ONNX Runtime's basic level does)."""

QUANT = [FUSE_DYNAMIC_QUANT, LOWER_QLINEAR, FUSE_QDQ, DEAD_CODE]
"""-O2: a model quantized elsewhere (QOperator ops, or QDQ pairs around float layers) onto lepton's int8
kernels (QConv, QGemm). First in -O2 so the algebra and fusion passes see the result; after CLEANUP,
whose fold-constants leaves DequantizeLinear alone (fuse-qdq reads the int8 weights behind it)."""

ALGEBRA = [FOLD_BATCHNORM, FOLD_CHANNEL_AFFINE, MATMUL_ADD_TO_GEMM, DEAD_CODE]
"""-O2: fold constant arithmetic into weights (the results differ only by float rounding)."""

FUSION = [FUSE_RESIDUAL, FUSE_ACTIVATION, FUSE_POOL, FUSE_SOFTMAX, FUSE_ELEMENTWISE, DEAD_CODE]
"""-O3: one kernel per fused group, no intermediate buffers between the fused ops."""

LEVELS: dict[int, list[Pass]] = {
    0: [],
    1: CLEANUP,
    2: CLEANUP + QUANT + ALGEBRA,
    3: CLEANUP + QUANT + ALGEBRA + FUSION,
}

AfterPass = Callable[[Pass, Graph, float], None]


def passes_for_level(opt_level: int) -> list[Pass]:
    if opt_level not in LEVELS:
        raise LeptonError(f"opt_level must be 0, 1, 2 or 3, not {opt_level!r}")
    return list(LEVELS[opt_level])


def optimize_graph(graph: Graph, opt_level: int = 3, options: Optional[PassOptions] = None,
                   after_pass: Optional[AfterPass] = None) -> Graph:
    """Run the passes of ``opt_level``; ``after_pass(pass, graph, seconds)`` sees each result."""
    options = options or PassOptions()
    for p in passes_for_level(opt_level):
        start = time.perf_counter()
        graph = p.run(graph, options).graph
        elapsed = time.perf_counter() - start
        if options.verify:
            verify(graph)
        if after_pass is not None:
            after_pass(p, graph, elapsed)
    return graph
