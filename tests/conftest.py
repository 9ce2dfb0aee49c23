"""Shared test helpers: build small ONNX models, run them with ONNX Runtime, compare."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

Shape = Optional[Sequence[Union[int, str, None]]]
IOSpec = Union[onnx.ValueInfoProto, tuple]


def _value_info(spec: IOSpec) -> onnx.ValueInfoProto:
    """``(name, shape)`` or ``(name, shape, elem_type)`` -> ValueInfoProto (float32 by default).

    ``shape`` may hold ints, symbolic names ("N") or None (unknown dim); ``shape=None``
    leaves the rank unknown.
    """
    if isinstance(spec, onnx.ValueInfoProto):
        return spec
    name, shape, *rest = spec
    elem = rest[0] if rest else TensorProto.FLOAT
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def make_model(nodes: Iterable[onnx.NodeProto], inputs: Sequence[IOSpec], outputs: Sequence[IOSpec],
               initializers: Union[Mapping[str, np.ndarray], Sequence[TensorProto], None] = None,
               opset: int = 17, *, name: str = "test", extra_opsets: Optional[Mapping[str, int]] = None,
               ir_version: Optional[int] = None) -> onnx.ModelProto:
    """A ModelProto from nodes, ``(name, shape)`` inputs/outputs and ``{name: array}`` initializers."""
    if initializers is None:
        inits = []
    elif isinstance(initializers, Mapping):
        inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers.items()]
    else:
        inits = list(initializers)
    graph = helper.make_graph(list(nodes), name, [_value_info(i) for i in inputs],
                              [_value_info(o) for o in outputs], inits)
    opsets = [helper.make_opsetid("", opset)]
    opsets += [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="lepton-tests")
    # An IR version that every onnxruntime we support can read.
    model.ir_version = ir_version if ir_version is not None else 8
    return model


def random_feeds(model: onnx.ModelProto, rng: np.random.Generator, batches: Sequence[int],
                 draw=None) -> list[dict[str, np.ndarray]]:
    """One feed per batch size, symbolic dims set to the batch: ``draw(rng, name, shape)`` for each
    input in order (default: standard normal), as float32."""
    feeds = []
    for batch in batches:
        feed = {}
        for info in model.graph.input:
            dims = info.type.tensor_type.shape.dim
            shape = [d.dim_value if d.HasField("dim_value") else batch for d in dims]
            x = rng.standard_normal(shape) if draw is None else draw(rng, info.name, shape)
            feed[info.name] = np.asarray(x, np.float32)
        feeds.append(feed)
    return feeds


def ort_run(model: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` with ONNX Runtime on the CPU (all graph optimizations off, for a faithful reference)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(feed))


def assert_matches_ort(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]],
                       rtol: float = 1e-5, atol: float = 1e-5, compiled=None):
    """Compile ``model`` once and check each feed's outputs against ONNX Runtime's.

    Returns the compiled model (so callers can run more checks without recompiling).
    """
    import lepton_compiler as lc

    compiled = compiled if compiled is not None else lc.compile(model)
    for feed in feeds:
        expected = ort_run(model, feed)
        got = compiled.run(None, feed)
        assert len(got) == len(expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            what = f"output {i} ({model.graph.output[i].name}) for inputs " + \
                   ", ".join(f"{k}{list(v.shape)}" for k, v in feed.items())
            assert g.shape == e.shape, f"{what}: shape {g.shape} != ORT's {e.shape}"
            assert g.dtype == e.dtype, f"{what}: dtype {g.dtype} != ORT's {e.dtype}"
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=what)
    return compiled


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
