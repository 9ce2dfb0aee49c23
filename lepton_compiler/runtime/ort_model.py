"""``OrtModel``: lepton's optimized graph as ONNX, run by an ONNX Runtime session (``target="ort"``).

The same contract as ``CompiledModel``: ``run(output_names, feed)``, ``model(x)``, ``inputs``,
``outputs``, ``save`` (and ``lc.load``), and the same input checks, done before onnxruntime sees the
feed. ``providers`` reports the execution providers the session really uses.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from ..backends.ort import DEVICES, ProviderRequest, SessionSettings, create_session
from ..errors import LeptonError
from .model import TensorInfo
from .signature import ModelSignature


class OrtModel(ModelSignature):
    """An ONNX Runtime session over lepton's optimized ONNX. Safe to ``run`` from several threads."""

    backend = "ort"

    def __init__(self, *, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], batch_symbol: Optional[str],
                 onnx_bytes: bytes, model_bytes: bytes, request: ProviderRequest, settings: SessionSettings,
                 options: Mapping, summary: Optional[Mapping] = None):
        self._inputs = tuple(inputs)
        self._outputs = tuple(outputs)
        self.batch_symbol = batch_symbol
        self.onnx_bytes = onnx_bytes
        """The optimized model as standard ONNX (what the session runs)."""
        self.model_bytes = model_bytes
        """The ONNX model it was compiled from."""
        self.request = request
        self.settings = settings
        self.options = dict(options)
        self.summary = dict(summary or {})
        self.session = create_session(onnx_bytes, request, settings)

    # -- description -------------------------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        """The execution providers the session uses, in priority order."""
        return list(self.session.get_providers())

    @property
    def provider_options(self) -> dict:
        return dict(self.session.get_provider_options())

    def onnx_model(self):
        """The optimized model as an ``onnx.ModelProto``."""
        import onnx
        return onnx.load_from_string(self.onnx_bytes)

    def __repr__(self) -> str:
        ins = ", ".join(map(str, self._inputs))
        outs = ", ".join(map(str, self._outputs))
        return f"<OrtModel ({ins}) -> ({outs}) on {', '.join(self.providers)}>"

    # -- running -----------------------------------------------------------------------------------
    def run(self, output_names: Optional[Sequence[str]], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """ONNX Runtime's signature: ``run(None, {"input": x})`` returns every output as a list."""
        names = [self._outputs[i].name for i in self._select_outputs(output_names)]
        arrays, _ = self._check_feed(feed)
        if not names:
            return []
        try:
            return list(self.session.run(names, {info.name: a for info, a in zip(self._inputs, arrays)}))
        except Exception as exc:  # onnxruntime's own error types
            raise self._run_error(exc) from None

    def run_on_device(self, output_names: Optional[Sequence[str]], feed: Mapping[str, np.ndarray],
                      device: str = "cuda", device_id: int = 0) -> list:
        """Run with IO binding, leaving the outputs on ``device`` ("cuda" or "cpu") as
        ``onnxruntime.OrtValue``s (``.numpy()`` copies one to the host). Inputs are numpy arrays,
        checked as in ``run``; onnxruntime copies them to the device."""
        if device not in DEVICES:
            raise LeptonError(f"device must be one of {', '.join(map(repr, DEVICES))}, not {device!r}")
        if not any(p in self.providers for p in DEVICES[device]):
            raise LeptonError(f"outputs cannot be left on '{device}': the session runs on "
                              f"{', '.join(self.providers)}")
        names = [self._outputs[i].name for i in self._select_outputs(output_names)]
        arrays, _ = self._check_feed(feed)
        if not names:
            return []
        binding = self.session.io_binding()
        try:
            for info, array in zip(self._inputs, arrays):
                binding.bind_cpu_input(info.name, array)
            for name in names:
                binding.bind_output(name, device, device_id)
            self.session.run_with_iobinding(binding)
            return list(binding.get_outputs())
        except Exception as exc:
            raise self._run_error(exc) from None

    @staticmethod
    def _run_error(exc: Exception) -> LeptonError:
        message = str(exc).strip() or type(exc).__name__
        return LeptonError(f"onnxruntime failed to run the model: {message}")

    # -- saving ------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the artifact (optimized ONNX, original model, provider request, manifest) to ``path``."""
        from .artifact import save
        save(self, path)
