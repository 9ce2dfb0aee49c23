"""The compiled-code cache: the same model, target, settings and lepton source give the same code.

Off unless ``LEPTON_CACHE_DIR`` names a folder: then compiled models are kept
there as ordinary artifacts (so a second process skips compilation) and in
memory (the last ``MEMORY_ENTRIES`` of this process; an identical compile
returns the same ``CompiledModel``). The key is the sha256 of the ONNX bytes,
the target (triple, CPU, features), every compile setting, and a fingerprint of
lepton's own source files, so a changed compiler never reuses stale code. A quantized
compile's settings also hold the digest of its calibration data (``arrays_digest``:
each array's name, dtype, shape and bytes, in order), its method and every quantization
option, so that a hit skips calibration too.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Callable, Iterable, Optional

import numpy as np

from ..errors import LeptonError

MEMORY_ENTRIES = 16
_lock = threading.Lock()
_memory: "OrderedDict[str, object]" = OrderedDict()


@lru_cache(maxsize=None)
def source_fingerprint() -> str:
    """sha256 of every Python file of the package (paths and contents)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def cache_enabled() -> bool:
    return bool(os.environ.get("LEPTON_CACHE_DIR"))


def cache_key(model_bytes: bytes, target: dict, settings: dict) -> str:
    digest = hashlib.sha256(model_bytes)
    digest.update(json.dumps({"target": target, "settings": settings, "lepton": source_fingerprint()},
                             sort_keys=True, default=str).encode())
    return digest.hexdigest()


def arrays_digest(arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    """sha256 of named arrays, in the order given: each one's name, dtype, shape and bytes (C order)."""
    digest = hashlib.sha256()
    for name, array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.reshape(-1).view(np.uint8) if array.size else b"")
    return digest.hexdigest()


def cached(key: str, build: Callable[[], object], load: Callable[[str], object],
           save: Callable[[object, str], None]) -> object:
    """The entry for ``key``: from memory, from ``LEPTON_CACHE_DIR``, or built (and stored)."""
    with _lock:
        if key in _memory:
            _memory.move_to_end(key)
            return _memory[key]
    path = _disk_path(key)
    entry = None
    if path and os.path.exists(path):
        try:
            entry = load(path)
        except LeptonError:
            entry = None  # a damaged or foreign entry is rebuilt (and overwritten) below
    if entry is None:
        entry = build()
        if path:
            try:
                save(entry, path)
            except LeptonError:
                pass  # an unwritable cache folder only costs the next process a compile
    with _lock:
        _memory[key] = entry
        while len(_memory) > MEMORY_ENTRIES:
            _memory.popitem(last=False)
    return entry


def clear_memory() -> None:
    with _lock:
        _memory.clear()


def _disk_path(key: str) -> Optional[str]:
    folder = os.environ.get("LEPTON_CACHE_DIR")
    if not folder:
        return None
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{key}.lepton")
