"""The ``onnx.backend`` interface, so ONNX's backend test suite can drive the compiler.

    import lepton_compiler as lc
    rep = lc.backend.prepare(model, device="CPU")
    outputs = rep.run([x])

Inputs the compiler needs the values of (a Reshape's target shape, Slice's starts,
Clip's bounds given as graph inputs: ``frontends.onnx.compile_time_inputs``) are
bound when ``run`` sees them: the model is compiled for those values, as constants,
once per distinct set of values. Everything else runs in the compiled code.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.backend.base import Backend, BackendRep

from .api import compile as _compile
from .errors import InputError, LeptonError
from .frontends.onnx import compile_time_inputs


class LeptonRep(BackendRep):
    """A prepared model: compiled now, or at the first ``run`` when it has compile-time inputs."""

    def __init__(self, proto: onnx.ModelProto, options: Optional[dict] = None):
        self.proto = proto
        self.options = dict(options or {})
        inits = {i.name for i in proto.graph.initializer}
        self.input_names = [i.name for i in proto.graph.input if i.name not in inits]
        self.bound = compile_time_inputs(proto)
        self._compiled: dict[tuple, Any] = {}
        self.model = None if self.bound else _compile(proto, **self.options)

    def run(self, inputs: Any, **kwargs) -> tuple:
        feed = self._feed(inputs)
        model = self.model if self.model is not None else self._specialized(feed)
        feed = {k: v for k, v in feed.items() if k not in self.bound}
        return tuple(model.run(None, feed))

    def _feed(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, dict):
            return dict(inputs)
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        inputs = list(inputs)
        if len(inputs) > len(self.input_names):
            raise InputError(f"the model takes {len(self.input_names)} inputs, got {len(inputs)}")
        return dict(zip(self.input_names, inputs))

    def _specialized(self, feed: dict[str, np.ndarray]):
        missing = [n for n in self.bound if n not in feed]
        if missing:
            raise InputError(f"missing input '{missing[0]}'")
        values = [np.asarray(feed[n]) for n in self.bound]
        key = tuple((v.dtype.str, v.shape, v.tobytes()) for v in values)
        if key not in self._compiled:
            self._compiled[key] = _compile(bind_inputs(self.proto, dict(zip(self.bound, values))), **self.options)
        return self._compiled[key]


def bind_inputs(proto: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``proto`` whose named graph inputs are initializers holding ``values``."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    kept = [i for i in model.graph.input if i.name not in values]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    for name, array in values.items():
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    return model


class LeptonBackend(Backend):
    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().startswith("CPU")

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> LeptonRep:
        if not cls.supports_device(device):
            raise LeptonError(f"device {device!r} is not supported; lepton's backend runs on CPU")
        return LeptonRep(model, kwargs)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs) -> tuple:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Sequence[np.ndarray], device: str = "CPU",
                 outputs_info: Optional[Sequence[tuple]] = None, opset: int = 17, **kwargs) -> tuple:
        """One node on the given inputs (static shapes): a one-node model, compiled and run."""
        arrays = [np.asarray(x) for x in inputs]
        names = [name for name in node.input if name][:len(arrays)]
        graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
                        for n, a in zip(names, arrays)]
        graph_outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
        graph = helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        return cls.prepare(model, device, **kwargs).run(dict(zip(names, arrays)))


prepare = LeptonBackend.prepare
run_model = LeptonBackend.run_model
run_node = LeptonBackend.run_node
supports_device = LeptonBackend.supports_device
