"""The ``onnx.backend`` interface, so ONNX's backend test suite can drive the compiler.

    import lepton_compiler as lc
    rep = lc.backend.prepare(model, device="CPU")
    outputs = rep.run([x])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from .api import compile as _compile
from .errors import LeptonError


class LeptonRep(BackendRep):
    def __init__(self, model):
        self.model = model

    def run(self, inputs: Any, **kwargs) -> tuple:
        names = [i.name for i in self.model.inputs]
        if isinstance(inputs, dict):
            feed = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feed = dict(zip(names, inputs))
        return tuple(self.model.run(None, feed))


class LeptonBackend(Backend):
    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().startswith("CPU")

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> LeptonRep:
        if not cls.supports_device(device):
            raise LeptonError(f"device {device!r} is not supported; lepton's backend runs on CPU")
        return LeptonRep(_compile(model, **kwargs))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs) -> tuple:
        return cls.prepare(model, device, **kwargs).run(inputs)


prepare = LeptonBackend.prepare
run_model = LeptonBackend.run_model
supports_device = LeptonBackend.supports_device
