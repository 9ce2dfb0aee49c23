"""Code generators: ``llvm`` (native CPU code)."""
