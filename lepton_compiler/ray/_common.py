"""What batch inference and serving share: importing Ray, shipping an artifact to workers, loading it."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

from ..errors import LeptonError

INSTALL_HINT = "pip install lepton_compiler[ray]"


def require(module: str = "ray"):
    """Import ``ray`` (or ``ray.data``, ``ray.serve``) or raise a LeptonError saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LeptonError(f"{module} is not available ({exc}): {INSTALL_HINT}") from None


@dataclass(frozen=True)
class ArtifactBytes:
    """An artifact's bytes and the name it had. Workers get the bytes, not a path: a path on the
    driver's disk need not exist on another node of the cluster."""

    data: bytes
    name: str

    @classmethod
    def of(cls, artifact) -> "ArtifactBytes":
        """From a path, bytes, or an ``ArtifactBytes``; a missing file is a LeptonError here, on the
        driver, rather than in every worker."""
        if isinstance(artifact, ArtifactBytes):
            return artifact
        if isinstance(artifact, (bytes, bytearray, memoryview)):
            return cls(bytes(artifact), "<artifact bytes>")
        try:
            path = os.fspath(artifact)
        except TypeError:
            raise LeptonError(f"artifact must be a path to a .lepton file or its bytes, not "
                              f"{type(artifact).__name__}") from None
        try:
            with open(path, "rb") as f:
                return cls(f.read(), path)
        except OSError as exc:
            raise LeptonError(f"cannot read artifact '{path}': {exc.strerror or exc}") from None

    def load(self, threads=None):
        """``load_or_recompile`` of these bytes (through a temporary file, which is removed):
        returns ``(model, recompiled reason or None)``."""
        from ..runtime.artifact import load_or_recompile

        fd, tmp = tempfile.mkstemp(prefix="lepton-worker-", suffix=".lepton")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.data)
            model, recompiled = load_or_recompile(tmp, threads=threads)
        except LeptonError as exc:
            if tmp not in str(exc):
                raise
            raise type(exc)(str(exc).replace(tmp, self.name)) from None  # the name the user gave
        finally:
            os.unlink(tmp)
        if recompiled:
            logging.getLogger("lepton_compiler").warning(
                "%s: recompiled for this worker's CPU: %s", self.name, recompiled.replace(tmp, self.name))
            recompiled = recompiled.replace(tmp, self.name)
        return model, recompiled

    def signature(self) -> tuple[list[str], list[str]]:
        """The model's input and output names from the manifest, without loading native code (the
        driver may run on a CPU that cannot run it)."""
        import io
        import json
        import zipfile

        try:
            with zipfile.ZipFile(io.BytesIO(self.data)) as zf:
                manifest = json.loads(zf.read("manifest.json"))
            return [i["name"] for i in manifest["inputs"]], [o["name"] for o in manifest["outputs"]]
        except (zipfile.BadZipFile, KeyError, TypeError, ValueError) as exc:
            raise LeptonError(f"'{self.name}' is not a lepton artifact or is damaged: {exc}") from None


def check_threads(threads) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise LeptonError(f"threads must be a positive int, not {threads!r}")
    return threads
