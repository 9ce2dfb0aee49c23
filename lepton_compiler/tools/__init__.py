"""Tools that explain a compilation: one module per tool, each with a function the ``lepton``
command calls.

* ``inspect``        what a model holds and what lepton makes of it (``lepton inspect``)
* ``profile``        time per compiled kernel next to ONNX Runtime's per-op profile (``lepton profile``)
* ``bisect``         the first pass and layer where lepton's outputs leave ONNX Runtime's (``lepton bisect``)
* ``intermediates``  named values of the original graph kept as outputs (``compile(keep=[...])``)
* ``report``         where each fusion pattern fired and why it did not (``lepton compile --report``)
* ``graph``          the graph before and after optimization, as a picture (``lepton graph``)
* ``lineage``        which ONNX nodes each optimized node covers (shared by the others)
"""
