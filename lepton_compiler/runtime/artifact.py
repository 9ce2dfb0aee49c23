"""The artifact format: a zip of a JSON manifest, the native object, the weights and the model.

Nothing is pickled. The manifest records the format version, the sha256 of the
ONNX model and of every payload file, the target (triple, CPU, features) and
the input/output signature; ``load`` checks all of it before any code runs.

The manifest's ``backend`` says what runs the model: ``"cpu"`` (native code;
manifests written before the field existed are cpu) or ``"ort"`` (the optimized
ONNX in ``optimized.onnx``, run by ONNX Runtime with the provider request in
``ort``, resolved again on load).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tempfile
import zipfile
import zlib

import numpy as np

from .. import __version__
from ..backends.llvm.compiler import NativeCode
from ..backends.llvm.target import Target, check_runnable
from ..errors import ArtifactError, LeptonError
from .limits import format_bytes, limit_source, resolve_limit
from .model import CompiledModel, TensorInfo

FORMAT = "lepton-artifact"
VERSION = 1
MANIFEST = "manifest.json"
OBJECT, WEIGHTS, MODEL, LLVM_IR = "native.o", "weights.bin", "model.onnx", "model.ll"
OPTIMIZED_ONNX = "optimized.onnx"
ALIGN = 64


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pack_weights(arrays) -> tuple[bytes, list[dict]]:
    blob = io.BytesIO()
    table = []
    for array in arrays:
        blob.write(b"\0" * ((-blob.tell()) % ALIGN))
        offset = blob.tell()
        data = np.ascontiguousarray(array).tobytes()
        blob.write(data)
        table.append({"dtype": str(array.dtype), "shape": list(array.shape), "offset": offset, "nbytes": len(data)})
    return blob.getvalue(), table


def save(model, path) -> None:
    """Write ``model`` (a CompiledModel or an OrtModel) atomically to ``path``."""
    backend = getattr(model, "backend", "cpu")
    if backend not in BACKENDS:
        raise LeptonError(f"cannot save a model of backend {backend!r}")
    manifest, payload = BACKENDS[backend][0](model)
    _write(manifest, payload, path)


def _cpu_contents(model: CompiledModel) -> tuple[dict, dict[str, bytes]]:
    weights, table = _pack_weights(model.constants)
    for entry, name in zip(table, model.constant_names):
        entry["name"] = name
    payload = {OBJECT: model.native.obj, WEIGHTS: weights, MODEL: model.model_bytes,
               LLVM_IR: model.native.llvm_ir.encode()}
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "backend": "cpu",
        "lepton_version": __version__,
        "model_sha256": _sha256(model.model_bytes),
        "target": model.target.to_json(),
        "inputs": [i.to_json() for i in model.inputs],
        "outputs": [o.to_json() for o in model.outputs],
        "batch_symbol": model.batch_symbol,
        "workspace": list(model.workspace),
        "constants": table,
        "options": model.options,
        "summary": model.summary,
        "payload": {name: _sha256(data) for name, data in payload.items()},
    }
    return manifest, payload


def _ort_contents(model) -> tuple[dict, dict[str, bytes]]:
    import onnxruntime

    payload = {OPTIMIZED_ONNX: model.onnx_bytes, MODEL: model.model_bytes}
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "backend": "ort",
        "lepton_version": __version__,
        "model_sha256": _sha256(model.model_bytes),
        "ort": {"request": model.request.to_json(), "settings": model.settings.to_json(),
                "built_with": {"onnxruntime": onnxruntime.__version__, "providers": model.providers}},
        "inputs": [i.to_json() for i in model.inputs],
        "outputs": [o.to_json() for o in model.outputs],
        "batch_symbol": model.batch_symbol,
        "options": model.options,
        "summary": model.summary,
        "payload": {name: _sha256(data) for name, data in payload.items()},
    }
    return manifest, payload


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _write(manifest: dict, payload: dict[str, bytes], path) -> None:
    """Write to a temporary file beside the destination, flushed to disk, then rename it over the
    destination: a failure or a crash at any point leaves the old file whole (or no file), never a
    partial one. A symbolic link is followed (its target is replaced); the file keeps the mode of the
    one it replaces, or gets the umask's default."""
    manifest["manifest_sha256"] = manifest_digest(manifest)
    path = os.fspath(path)
    destination = os.path.realpath(path)
    directory = os.path.dirname(destination)
    try:
        mode = stat.S_IMODE(os.stat(destination).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lepton-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise LeptonError(f"cannot write '{path}': {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
                for name, data in payload.items():
                    zf.writestr(name, data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp, mode)
        os.replace(tmp, destination)  # the old file stays whole until the new one is
        _sync_directory(directory)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise LeptonError(f"cannot write '{path}': {exc.strerror or exc}") from None
        raise


def _sync_directory(directory: str) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without this field: damage to the manifest
    itself (sizes, shapes) is caught before it can mislead native code."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


MANIFEST_LIMIT = 64 << 20
"""Largest manifest read (bytes, uncompressed); a real one is a few kilobytes to a few hundred."""


def _read(path) -> tuple[dict, dict[str, bytes]]:
    """The manifest and the payload files it lists (nothing else is read). Sizes are checked from the
    zip's directory before anything is decompressed, so a damaged or hostile archive that claims
    gigabytes is refused instead of exhausting memory."""
    where = os.fspath(path)
    try:
        with zipfile.ZipFile(where) as zf:
            infos = {info.filename: info for info in zf.infolist()}
            if MANIFEST not in infos:
                raise ArtifactError(f"'{where}' has no manifest; it is not a lepton artifact")
            if infos[MANIFEST].file_size > MANIFEST_LIMIT:
                raise ArtifactError(f"'{where}' is damaged: its manifest claims {infos[MANIFEST].file_size:,} bytes")
            try:
                manifest = json.loads(zf.read(MANIFEST))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ArtifactError(f"the manifest of '{where}' is not valid JSON: {exc}") from None
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ArtifactError(f"'{where}' is not a lepton artifact")
            listed = manifest.get("payload")
            wanted = [name for name in listed if name in infos] if isinstance(listed, dict) else []
            total = sum(infos[name].file_size for name in wanted)
            limit = resolve_limit(None)
            if total > limit:
                raise ArtifactError(f"'{where}' would take {format_bytes(total)} to load, more than the memory "
                                    f"limit of {format_bytes(limit)} ({limit_source(None)}): it is damaged, or "
                                    "too large for this machine")
            files = {name: zf.read(name) for name in wanted}
    except FileNotFoundError:
        raise ArtifactError(f"no such artifact: '{where}'") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError, OSError,
            NotImplementedError, RuntimeError) as exc:
        raise ArtifactError(f"'{where}' is not a lepton artifact or is damaged: {exc}") from None
    return manifest, files


def load(path):
    """Load a saved artifact, refusing a damaged one or one this host cannot run."""
    manifest, files = _read(path)
    where = os.fspath(path)
    if manifest.get("version") != VERSION:
        raise ArtifactError(f"'{where}' has artifact format version {manifest.get('version')}; "
                            f"this lepton reads version {VERSION}: recompile the model")
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise ArtifactError(f"'{where}' is damaged: the manifest checksum does not match")
    backend = manifest.get("backend", "cpu")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ArtifactError(f"'{where}' is for backend {backend!r}, which this lepton does not know "
                            f"(it knows {', '.join(BACKENDS)}): recompile the model")
    try:
        for name, digest in manifest["payload"].items():
            if name not in files:
                raise ArtifactError(f"'{where}' is missing {name}")
            if _sha256(files[name]) != digest:
                raise ArtifactError(f"'{where}' is damaged: the checksum of {name} does not match its manifest")
        if _sha256(files[MODEL]) != manifest["model_sha256"]:
            raise ArtifactError(f"'{where}' is damaged: the model checksum does not match")
        return BACKENDS[backend][1](manifest, files, where)
    except LeptonError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError) as exc:
        raise ArtifactError(f"the manifest of '{where}' is malformed: {exc!r}") from None


def _load_cpu(manifest: dict, files: dict[str, bytes], where: str) -> CompiledModel:
    target = Target.from_json(manifest["target"])
    check_runnable(target)
    constants = _unpack_weights(files[WEIGHTS], manifest["constants"], where)
    inputs = [TensorInfo.from_json(d) for d in manifest["inputs"]]
    outputs = [TensorInfo.from_json(d) for d in manifest["outputs"]]
    per_batch, fixed = (int(x) for x in manifest["workspace"])
    if per_batch < 0 or fixed < 0:
        raise ArtifactError(f"'{where}' is damaged: negative workspace size")
    return CompiledModel(
        inputs=inputs, outputs=outputs,
        native=NativeCode(target, files[LLVM_IR].decode(), files[OBJECT]),
        constants=constants, constant_names=[c["name"] for c in manifest["constants"]],
        workspace=(per_batch, fixed), batch_symbol=manifest["batch_symbol"],
        model_bytes=files[MODEL], options=manifest.get("options", {}), summary=manifest.get("summary", {}))


def _load_ort(manifest: dict, files: dict[str, bytes], where: str):
    from ..backends.ort import ProviderRequest, SessionSettings
    from .ort_model import OrtModel

    if OPTIMIZED_ONNX not in manifest["payload"]:
        raise ArtifactError(f"'{where}' is missing {OPTIMIZED_ONNX}")
    ort = manifest["ort"]
    return OrtModel(
        inputs=[TensorInfo.from_json(d) for d in manifest["inputs"]],
        outputs=[TensorInfo.from_json(d) for d in manifest["outputs"]],
        batch_symbol=manifest["batch_symbol"], onnx_bytes=files[OPTIMIZED_ONNX], model_bytes=files[MODEL],
        request=ProviderRequest.from_json(ort["request"]), settings=SessionSettings.from_json(ort["settings"]),
        options=manifest.get("options", {}), summary=manifest.get("summary", {}))


BACKENDS = {"cpu": (_cpu_contents, _load_cpu), "ort": (_ort_contents, _load_ort)}
"""backend name -> (what to save: manifest and payload, how to load)."""


def _unpack_weights(blob: bytes, table: list, where: str) -> list[np.ndarray]:
    arrays = []
    for entry in table:
        dtype = np.dtype(entry["dtype"])
        shape = tuple(int(d) for d in entry["shape"])
        offset, nbytes = int(entry["offset"]), int(entry["nbytes"])
        if dtype.hasobject or offset < 0 or nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize \
                or offset + nbytes > len(blob):
            raise ArtifactError(f"'{where}' is damaged: constant '{entry.get('name')}' does not fit the weights")
        array = np.frombuffer(blob, dtype, count=int(np.prod(shape, dtype=np.int64)), offset=offset).reshape(shape)
        arrays.append(array)
    return arrays


def load_or_recompile(path, threads=None):
    """``load(path)``, except that an artifact whose native code this CPU cannot run (features it
    lacks, another CPU model) is compiled again from its embedded ONNX model for this CPU, with the
    options it was compiled with (``mcpu`` aside). For a heterogeneous cluster, where one artifact
    reaches workers on different CPUs (or architectures). Every other refusal (damage, format
    version, unknown backend) is raised as ``load`` raises it.

    ``threads``: threads each run may use (None keeps the artifact's setting). Returns
    ``(model, recompiled)``; ``recompiled`` is the reason in words, or None when the artifact loaded.
    """
    try:
        model, recompiled = load(path), None
    except ArtifactError as exc:
        reason = _foreign_cpu(path, str(exc))
        if reason is None:
            raise
        model, recompiled = _recompile(path), reason
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise LeptonError(f"threads must be a positive int or None, not {threads!r}")
        model.threads = threads
        model.options = {**model.options, "threads": threads}
    return model, recompiled


def _foreign_cpu(path, message: str):
    """The reason, when ``message`` is exactly the refusal of ``check_runnable`` for the artifact's
    target (every checksum had passed by then: ``load`` checks the CPU last); None otherwise."""
    try:
        manifest, _ = _read(path)
        if manifest.get("backend", "cpu") != "cpu":
            return None
        check_runnable(Target.from_json(manifest["target"]))
    except ArtifactError as exc:
        return str(exc) if str(exc) == message else None
    except (LeptonError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return None


def _recompile(path) -> CompiledModel:
    """Compile the embedded model of a (checked) cpu artifact for this host with its options."""
    import inspect

    from ..api import compile as compile_model
    from ..frontends.onnx import load_onnx

    manifest, files = _read(path)
    options = dict(manifest.get("options") or {})
    accepted = inspect.signature(compile_model).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted and k not in ("mcpu", "model", "target")}
    originals = {o.name for o in load_onnx(files[MODEL]).graph.output}
    kept = [o["name"] for o in manifest["outputs"] if o["name"] not in originals]
    if kept:
        kwargs["keep"] = kept
    model = compile_model(files[MODEL], **kwargs)
    if [i.to_json() for i in model.inputs] != manifest["inputs"] or \
            [o.to_json() for o in model.outputs] != manifest["outputs"]:
        raise ArtifactError(f"'{os.fspath(path)}' could not be recompiled for this CPU: the recompiled "
                            "model's signature differs from the artifact's")
    return model
