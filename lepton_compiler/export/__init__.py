"""Ways out of Python: a model as a shared library with a C header (``clib``)."""
