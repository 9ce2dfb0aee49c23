"""The cuda backend: the optimized IR lowered through LLVM's NVPTX target to PTX, one kernel per fused node.

* ``target.py``    GPU names, IR -> PTX, ``ptxas``
* ``kernel.py``    the kernel builder: phases, barriers, shared memory; device and host emission
* ``math.py``      exp and the activations in plain arithmetic
* ``conv.py``      FusedConv / Conv (bias, residual, activation, max pool fused; weights tiled in shared memory)
* ``dense.py``     FusedGemm / Gemm / MatMul (A and B tiled in shared memory; activation, softmax fused)
* ``elementwise.py`` FusedElementwise, activations, broadcast binary ops
* ``module.py``    the launch plan (memory planned by ``backends/llvm/plan.py``) and the PTX module
* ``emulate.py``   the same kernels run on the CPU (tests without a GPU)

The runtime that loads the PTX on a GPU is ``runtime/cuda_model.py``.
"""

from .module import GpuPlan, Launch, build_ptx, plan_gpu
from .target import DEFAULT_GPU, find_ptxas, normalize_gpu, run_ptxas

__all__ = ["DEFAULT_GPU", "GpuPlan", "Launch", "build_ptx", "find_ptxas", "normalize_gpu", "plan_gpu", "run_ptxas"]
