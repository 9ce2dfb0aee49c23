"""Post-training static quantization to int8 (``lc.compile(model, quantize="int8", calibration=...)``).

``calibration.py`` reads the data and chooses activation ranges (minmax, percentile, entropy);
``rewrite.py`` turns the optimized fp32 graph into QuantizeLinear -> QConv/QGemm chains;
``accuracy.py`` returns layers to fp32 until an accuracy bound holds; ``report.py`` tabulates
the per-layer error; ``driver.py`` runs them in order; ``compile.py`` lowers the result (with the
compile cache); ``cli.py`` holds the ``--quantize`` options of ``lepton compile``.
"""

from .accuracy import AccuracySearch
from .calibration import METHODS, Calibration, Histogram, load_calibration
from .driver import Quantization, check_request, quantize_graph_with
from .report import QuantizationReport
from .rewrite import MIN_MACS, LayerDecision, QuantizedGraph, quantize_graph

__all__ = ["AccuracySearch", "Calibration", "Histogram", "LayerDecision", "METHODS", "MIN_MACS", "Quantization",
           "QuantizationReport", "QuantizedGraph", "check_request", "load_calibration", "quantize_graph",
           "quantize_graph_with"]
