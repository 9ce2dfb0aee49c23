"""Running compiled models on Ray: batch inference with Ray Data, serving with Ray Serve.

Ray is imported only when these are used (``pip install lepton_compiler[ray]``); without it they
raise ``LeptonError``. The same code runs on a local cluster (``ray.init()``, or none: Ray starts
one) and on a multi-node one (``ray.init(address=...)`` or ``RAY_ADDRESS``); see docs/ray.md.
"""

from .data import LeptonPredictor, predict
from .serve import LeptonServer, deployment, serve

__all__ = ["predict", "LeptonPredictor", "serve", "deployment", "LeptonServer"]
