"""The memory limit: how many bytes a model may hold for its weights plus one run's workspace and outputs.

``lc.compile(..., max_memory=...)`` sets it (bytes, or a string such as ``"512M"``, ``"4G"``); without
it, the environment variable ``LEPTON_MAX_MEMORY`` (same forms), else the machine's physical memory.
A model over the limit is refused at compile time (``ResourceError``), and a run whose batch would go
over it is refused before anything is allocated (``InputError``), with the figures. Sizes are linear in
the batch: ``bytes(batch) = per_batch * batch + fixed``.
"""

from __future__ import annotations

import numbers
import os
import re
from typing import Optional, Union

from ..errors import LeptonError

ENV = "LEPTON_MAX_MEMORY"
ADDRESSABLE = 1 << 62
"""No run may need more than this, whatever the limit: index arithmetic in native code is 64-bit."""

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
Size = Union[int, str, None]


def parse_size(value: Size, what: str = "max_memory") -> Optional[int]:
    """Bytes from an int or a string like ``"1500000"``, ``"512M"``, ``"4GiB"``; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        raise LeptonError(f"{what} must be a number of bytes (int) or a string like '4G', not {value!r}")
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", value, re.IGNORECASE)
        if not match:
            raise LeptonError(f"{what} must be a number of bytes or a string like '512M' or '4G', not {value!r}")
        value = int(match.group(1)) * _UNITS[match.group(2).upper()]
    value = int(value)
    if value < 1:
        raise LeptonError(f"{what} must be at least 1 byte, not {value}")
    return min(value, ADDRESSABLE)


def physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def resolve_limit(requested: Size) -> int:
    """The limit in bytes: ``requested``, else ``$LEPTON_MAX_MEMORY``, else the physical memory."""
    if requested is not None:
        return parse_size(requested)
    env = os.environ.get(ENV)
    if env:
        return parse_size(env, ENV)
    return min(physical_memory() or ADDRESSABLE, ADDRESSABLE)


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n:,} bytes)"
    return f"{n:,} bytes"


def limit_source(requested: Size) -> str:
    if requested is not None:
        return "max_memory="
    if os.environ.get(ENV):
        return ENV
    return "the physical memory; set max_memory= or " + ENV


def linear_bytes(infos) -> tuple[int, int]:
    """Bytes of tensors with shapes linear in the batch (``TensorInfo``, ``Value`` or ``(dtype, shape)``)
    as ``(per_batch, fixed)``."""
    import numpy as np

    from ..ir import dim_factors, shape_product

    per_batch = fixed = 0
    for info in infos:
        dtype, shape = (info.type.dtype, info.type.shape) if hasattr(info, "type") else (info.dtype, info.shape)
        symbols, factor = dim_factors(shape_product(shape))
        size = factor * np.dtype(dtype).itemsize
        if symbols:
            per_batch += size
        else:
            fixed += size
    return per_batch, fixed


def check_initializers(proto, requested: Size) -> None:
    """Refuse a model whose weights alone exceed the limit, from their declared dims, before they are
    decoded (``ResourceError``)."""
    from onnx import helper

    from ..errors import ResourceError

    total = 0
    for init in proto.graph.initializer:
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        except (KeyError, ValueError, TypeError):
            continue  # the import says what is wrong with it
        count = 1
        for d in init.dims:
            count *= max(int(d), 0)
        total += count * itemsize
    limit = resolve_limit(requested)
    if total > limit:
        raise ResourceError(f"the model's weights take {format_bytes(total)}, more than the memory limit of "
                            f"{format_bytes(limit)} ({limit_source(requested)})")


def check_plan(plan, requested: Size) -> None:
    """Refuse (``ResourceError``) a planned model whose weights, workspace and outputs for one run at
    batch 1 (or its static shapes) exceed the limit; before any code is generated or memory reserved."""
    from ..errors import ResourceError

    weights = sum(int(c.nbytes) for c in plan.constants)
    ws_per_batch, ws_fixed = plan.workspace
    out_per_batch, out_fixed = linear_bytes(plan.graph.outputs)
    workspace = ws_per_batch + ws_fixed
    outputs = out_per_batch + out_fixed
    need = weights + workspace + outputs
    limit = resolve_limit(requested)
    if need > limit:
        at = f" at {plan.batch_symbol}=1" if plan.batch_symbol else ""
        raise ResourceError(f"the model needs {format_bytes(need)}{at}: weights {format_bytes(weights)}, workspace "
                            f"{format_bytes(workspace)}, outputs {format_bytes(outputs)}; more than the memory "
                            f"limit of {format_bytes(limit)} ({limit_source(requested)})")
