"""Serving a compiled model over HTTP with Ray Serve, with dynamic batching.

The HTTP contract (paths are below the route prefix, ``/`` by default):

* ``POST /`` with JSON ``{"inputs": {NAME: nested list, ...}}``: answers
  ``{"outputs": {NAME: nested list, ...}}``. Numbers are converted to the input's dtype where numpy
  casts them within their kind (ints to floats, float64 to float32); any other dtype reaches the
  model's checks as it is.
* ``POST /`` with a ``.npy`` body (single-input models): answers a ``.npy`` array (one output) or an
  ``.npz`` archive (several). ``Accept: application/json`` asks for JSON instead.
* A request that fails the model's input checks is ``400 {"error": MESSAGE}`` with the
  ``InputError`` message ``model.run`` raises for the same feed; bodies that are neither JSON nor
  ``.npy`` are 400 too. Other failures are 500; a bad request never takes the replica down.
* Every answer of a run carries ``X-Lepton-Batch-Size``: how many requests ran together.
* ``GET /health``: ``{"status": "ok", ...}`` with the signature, CPU and settings.
  ``GET /stats``: this replica's counts (requests, errors, batch sizes).

Concurrent requests are gathered by ``serve.batch`` (up to ``max_batch_size`` requests, waiting at
most ``batch_wait_ms`` after the first) and run as one batch, concatenated along the batch
dimension; each request is checked on its own first, so one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
from collections import Counter
from typing import Optional

import numpy as np

from ..errors import InputError, LeptonError
from ._common import ArtifactBytes, check_threads, require

NPY_MAGIC = b"\x93NUMPY"
NPY_TYPE, NPZ_TYPE, JSON_TYPE = "application/x-npy", "application/x-npz", "application/json"


def batch_axes(model) -> Optional[tuple[list[int], list[int]]]:
    """The batch dimension of every input and output, if each has exactly one dim named by the
    batch symbol and no other symbolic dim; None otherwise (requests then run one at a time)."""
    symbol = model.batch_symbol
    if not symbol:
        return None
    axes = []
    for infos in (model.inputs, model.outputs):
        found = []
        for info in infos:
            symbolic = [i for i, d in enumerate(info.shape) if isinstance(d, str)]
            if len(symbolic) != 1 or info.shape[symbolic[0]] != symbol:
                return None
            found.append(symbolic[0])
        axes.append(found)
    return axes[0], axes[1]


def _json_feed(body: bytes, model) -> dict:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"the request body is neither JSON nor a .npy array ({exc}); send "
                         '{"inputs": {NAME: nested list, ...}} or, for a single-input model, a .npy array') from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise InputError('the JSON body must be an object {"inputs": {NAME: nested list, ...}}')
    dtypes = {info.name: np.dtype(info.dtype) for info in model.inputs}
    feed = {}
    for name, value in doc["inputs"].items():
        try:
            array = np.asarray(value)
        except ValueError:
            array = None  # ragged lists
        if array is None or array.dtype.kind not in "biuf":
            raise InputError(f"input '{name}' must be a nested list of numbers with one shape")
        want = dtypes.get(name)
        if want is not None and np.can_cast(array.dtype, want, "same_kind"):
            array = array.astype(want)
        feed[name] = array
    return feed


def _npy_feed(body: bytes, model) -> dict:
    names = [info.name for info in model.inputs]
    if len(names) != 1:
        raise InputError(f"a .npy body is one array, for a single-input model; this model takes {len(names)} "
                         f"inputs ({', '.join(names)}): send JSON")
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"the .npy body cannot be read: {exc}") from None
    return {names[0]: array}


def _encode(names: list[str], outputs: list[np.ndarray], as_json: bool) -> tuple[bytes, str]:
    if as_json:
        return json.dumps({"outputs": {n: o.tolist() for n, o in zip(names, outputs)}}).encode(), JSON_TYPE
    buffer = io.BytesIO()
    if len(outputs) == 1:
        np.save(buffer, outputs[0], allow_pickle=False)
        return buffer.getvalue(), NPY_TYPE
    np.savez(buffer, **dict(zip(names, outputs)))
    return buffer.getvalue(), NPZ_TYPE


class LeptonServer:
    """One replica: the model, loaded once (or recompiled for this CPU), and its HTTP handler.
    ``deployment()`` makes it a Ray Serve deployment; it is a plain class so that importing this
    module does not import Ray."""

    def __init__(self, artifact: ArtifactBytes, max_batch_size: int, batch_wait_s: float, threads: int):
        serve = require("ray.serve")
        self.model, self.recompiled = artifact.load(threads=threads)
        self.name = artifact.name
        self.settings = {"max_batch_size": max_batch_size, "batch_wait_ms": batch_wait_s * 1e3, "threads": threads}
        self.axes = batch_axes(self.model)
        self.input_names = [i.name for i in self.model.inputs]
        self.output_names = [o.name for o in self.model.outputs]
        self.counts = Counter()
        self.batch_sizes = Counter()
        self._batched = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s)(self._run_batch)

    # -- HTTP ---------------------------------------------------------------------------------------
    async def __call__(self, request):
        scope = request.scope
        path, root = scope.get("path", "/"), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        path = "/" + path.strip("/")
        routes = {"/": ("POST", self._predict), "/health": ("GET", self._health), "/stats": ("GET", self._stats)}
        if path not in routes:
            return self._error(404, f"no route {path}; the routes are POST /, GET /health, GET /stats")
        method, handler = routes[path]
        if request.method != method:
            return self._error(405, f"{path} takes {method}, not {request.method}")
        try:
            return await handler(request)
        except InputError as exc:
            self.counts["errors"] += 1
            return self._error(400, str(exc))
        except LeptonError as exc:
            self.counts["errors"] += 1
            return self._error(500, str(exc))
        except Exception as exc:  # a replica answers every request; nothing escapes to take it down
            self.counts["errors"] += 1
            return self._error(500, f"internal error: {type(exc).__name__}: {exc}")

    @staticmethod
    def _error(status: int, message: str):
        from starlette.responses import Response
        return Response(json.dumps({"error": message}), status_code=status, media_type=JSON_TYPE)

    async def _health(self, request):
        from starlette.responses import Response
        body = {"status": "ok", "model": self.name, "inputs": [i.to_json() for i in self.model.inputs],
                "outputs": [o.to_json() for o in self.model.outputs],
                "cpu": getattr(getattr(self.model, "target", None), "cpu", None), "recompiled": self.recompiled,
                "pid": os.getpid(), **self.settings}
        return Response(json.dumps(body), media_type=JSON_TYPE)

    async def _stats(self, request):
        from starlette.responses import Response
        body = {"requests": self.counts["requests"], "errors": self.counts["errors"],
                "batches": sum(self.batch_sizes.values()),
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}}
        return Response(json.dumps(body), media_type=JSON_TYPE)

    async def _predict(self, request):
        from starlette.responses import Response

        self.counts["requests"] += 1
        body = await request.body()
        is_npy = body.startswith(NPY_MAGIC)
        feed = _npy_feed(body, self.model) if is_npy else _json_feed(body, self.model)
        arrays, _ = self.model._check_feed(feed)  # the model's own checks and messages, before batching
        result = await self._batched(arrays)
        if isinstance(result, Exception):
            raise result
        outputs, together = result
        accept = request.headers.get("accept", "")
        as_json = JSON_TYPE in accept or (not is_npy and NPY_TYPE not in accept)
        content, media_type = _encode(self.output_names, outputs, as_json)
        return Response(content, media_type=media_type, headers={"X-Lepton-Batch-Size": str(together)})

    # -- batching -----------------------------------------------------------------------------------
    async def _run_batch(self, requests: list) -> list:
        """``serve.batch`` calls this with the checked inputs of up to ``max_batch_size`` requests;
        the model runs on a worker thread, so the replica keeps answering (health, new requests)."""
        self.batch_sizes[len(requests)] += 1
        return await asyncio.to_thread(self._compute, requests)

    def _compute(self, requests: list) -> list:
        """Per request: ``(outputs, requests run together)`` or the exception it raised."""
        if self.axes is not None and len(requests) > 1:
            in_axes, out_axes = self.axes
            sizes = [arrays[0].shape[in_axes[0]] for arrays in requests]
            try:
                joined = {name: np.concatenate([arrays[i] for arrays in requests], axis=axis)
                          for i, (name, axis) in enumerate(zip(self.input_names, in_axes))}
                outputs = self.model.run(None, joined)
            except InputError:
                pass  # the combined batch is over the memory limit or refused by a kernel: one at a time
            else:
                cuts = np.cumsum(sizes)[:-1]
                parts = [np.split(out, cuts, axis=axis) for out, axis in zip(outputs, out_axes)]
                return [([p[k] for p in parts], len(requests)) for k in range(len(requests))]
        results = []
        for arrays in requests:
            try:
                results.append((self.model.run(None, dict(zip(self.input_names, arrays))), 1))
            except Exception as exc:
                results.append(exc)
        return results


def _positive(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LeptonError(f"{what} must be a positive int, not {value!r}")


def deployment(artifact, *, replicas: int = 1, max_batch_size: int = 16, batch_wait_ms: float = 5.0,
               threads: int = 1, name: str = "lepton"):
    """The Ray Serve application for ``artifact`` (a path or bytes; its bytes go to every replica),
    to pass to ``ray.serve.run`` yourself; ``serve()`` does that. Each replica reserves ``threads``
    CPUs and runs with that many threads."""
    serve = require("ray.serve")
    blob = ArtifactBytes.of(artifact)
    blob.signature()
    _positive(replicas, "replicas")
    _positive(max_batch_size, "max_batch_size")
    check_threads(threads)
    if isinstance(batch_wait_ms, bool) or not isinstance(batch_wait_ms, (int, float)) or not batch_wait_ms >= 0:
        raise LeptonError(f"batch_wait_ms must be a number >= 0, not {batch_wait_ms!r}")
    import inspect
    options = {"name": name, "num_replicas": replicas, "ray_actor_options": {"num_cpus": threads}}
    # A replica must be sent at least a full batch of requests at once (Ray's default is lower).
    limit = "max_ongoing_requests" if "max_ongoing_requests" in inspect.signature(serve.deployment).parameters \
        else "max_concurrent_queries"
    options[limit] = max(2 * max_batch_size, 16)
    return serve.deployment(LeptonServer, **options).bind(blob, max_batch_size, batch_wait_ms / 1e3, threads)


def _check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on before starting Ray (its proxy would only log it)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise LeptonError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(artifact, *, replicas: int = 1, max_batch_size: int = 16, batch_wait_ms: float = 5.0, threads: int = 1,
          host: str = "127.0.0.1", port: int = 8000, name: str = "lepton", route_prefix: str = "/",
          blocking: bool = False, address: Optional[str] = None) -> str:
    """Serve ``artifact`` over HTTP on ``host:port`` and return its URL. Runs on the cluster of
    ``ray.init`` if called, else joins ``address`` or ``$RAY_ADDRESS``, else starts a local one.
    ``blocking=True`` waits until interrupted. ``ray.serve.delete(name)`` stops this application,
    ``ray.serve.shutdown()`` Serve itself. The other arguments are those of ``deployment``."""
    ray = require("ray")
    ray_serve = require("ray.serve")
    app = deployment(artifact, replicas=replicas, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                     threads=threads, name=name)
    if not ray.is_initialized():
        if address == "local" or not (address or os.environ.get("RAY_ADDRESS")):
            _check_port(host, port)  # a fresh local cluster: nothing of ours listens there yet
        ray.init(address=address)
    ray_serve.start(http_options={"host": host, "port": port})
    ray_serve.run(app, name=name, route_prefix=route_prefix, blocking=blocking)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}/"
