"""Serving on a real local Ray cluster (Ray Serve): real HTTP on loopback, dynamic batching,
400 with the model's InputError messages, and a replica that keeps serving."""

from __future__ import annotations

import io
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
requests = pytest.importorskip("requests")

import lepton_compiler as lc  # noqa: E402
from lepton_compiler.demo import bundled_model_path  # noqa: E402
from lepton_compiler.errors import InputError  # noqa: E402
from lepton_compiler.ray import serve as lepton_serve  # noqa: E402
from ray_testing import mnist_images  # noqa: E402

MAX_BATCH = 4
BATCH_WAIT_MS = 1500   # long, so that concurrent requests surely meet in one batch
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, seconds: float = 60, proc=None) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"lepton serve exited {proc.returncode}")
        try:
            r = requests.get(url + "health", timeout=5)
            if r.status_code == 200:
                return r.json()
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url}health did not answer within {seconds} s")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray_serve") / "mnist.lepton"
    lc.compile(bundled_model_path(), threads=1).save(path)
    return path


@pytest.fixture(scope="module")
def model(artifact):
    return lc.load(artifact)


@pytest.fixture(scope="module")
def images():
    return mnist_images()[:32]


@pytest.fixture(scope="module")
def url(artifact):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = lepton_serve(artifact, max_batch_size=MAX_BATCH, batch_wait_ms=BATCH_WAIT_MS,
                               host="127.0.0.1", port=free_port())
        wait_healthy(address)
        yield address
    finally:
        from ray import serve
        serve.shutdown()
        ray.shutdown()


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def post_json(url, array):
    return requests.post(url, json={"inputs": {"input": array.tolist()}}, timeout=60)


def message_of(model, feed) -> str:
    """The InputError message model.run raises for ``feed`` in this process."""
    with pytest.raises(InputError) as raised:
        model.run(None, feed)
    return str(raised.value)


def test_health(url, model):
    health = requests.get(url + "health", timeout=10).json()
    assert health["status"] == "ok" and health["recompiled"] is None
    assert health["inputs"] == [i.to_json() for i in model.inputs]
    assert health["outputs"] == [o.to_json() for o in model.outputs]
    assert health["max_batch_size"] == MAX_BATCH and health["threads"] == 1


def test_json_request_equals_single_process(url, model, images):
    r = post_json(url, images[:3])
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    got = np.array(r.json()["outputs"]["probabilities"], dtype=np.float32)
    np.testing.assert_array_equal(got, model(images[:3]))


def test_npy_request_answers_npy(url, model, images):
    r = requests.post(url, data=npy(images[3:5]), timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), model(images[3:5]))


def test_concurrent_requests_are_batched(url, model, images):
    """Ten concurrent requests of 1 to 3 images: serve.batch runs them in batches of at most
    MAX_BATCH requests, each answer is exactly its own rows, and the batch sizes each answer reports
    agree with the counts of the replica."""
    before = requests.get(url + "stats", timeout=10).json()
    slices = [(i * 3, i * 3 + 1 + i % 3) for i in range(10)]

    def call(bounds):
        lo, hi = bounds
        return post_json(url, images[lo:hi])

    with ThreadPoolExecutor(len(slices)) as pool:
        answers = list(pool.map(call, slices))
    sizes = []
    for (lo, hi), r in zip(slices, answers):
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(np.array(r.json()["outputs"]["probabilities"], np.float32),
                                      model(images[lo:hi]))
        sizes.append(int(r.headers["x-lepton-batch-size"]))
    assert max(sizes) > 1 and all(1 <= s <= MAX_BATCH for s in sizes), sizes
    for s in set(sizes):   # a batch of s requests gives s answers that say s
        assert sizes.count(s) % s == 0, sizes
    after = requests.get(url + "stats", timeout=10).json()
    seen = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    assert {k: v for k, v in seen.items() if v} == {s: sizes.count(s) // s for s in set(sizes)}
    assert after["requests"] - before["requests"] == len(slices)


def _bad_requests(model, images):
    """(name, request body, the expected error message)."""
    wrong_shape = images[:2, 0]
    wrong_dtype = images[:2].astype(np.float64)
    return [
        ("wrong shape", json.dumps({"inputs": {"input": wrong_shape.tolist()}}),
         message_of(model, {"input": wrong_shape})),
        ("wrong dtype", npy(wrong_dtype), message_of(model, {"input": wrong_dtype})),
        ("missing input", json.dumps({"inputs": {}}), message_of(model, {})),
        ("unknown input", json.dumps({"inputs": {"input": images[:1].tolist(), "extra": [1.0]}}),
         message_of(model, {"input": images[:1], "extra": np.ones(1, np.float32)})),
        ("not JSON", b"this is not json",
         "the request body is neither JSON nor a .npy array (Expecting value: line 1 column 1 (char 0)); send "
         '{"inputs": {NAME: nested list, ...}} or, for a single-input model, a .npy array'),
        ("no inputs object", json.dumps([1, 2]), 'the JSON body must be an object {"inputs": {NAME: nested list, ...}}'),
        ("not numbers", json.dumps({"inputs": {"input": [["a", "b"]]}}),
         "input 'input' must be a nested list of numbers with one shape"),
        ("ragged", json.dumps({"inputs": {"input": [[1.0], [1.0, 2.0]]}}),
         "input 'input' must be a nested list of numbers with one shape"),
        ("empty batch", npy(np.zeros((0, 1, 28, 28), np.float32)),
         message_of(model, {"input": np.zeros((0, 1, 28, 28), np.float32)})),
    ]


def test_bad_requests_are_400_with_the_input_error_and_serving_goes_on(url, model, images):
    pid = requests.get(url + "health", timeout=10).json()["pid"]
    for name, body, message in _bad_requests(model, images):
        r = requests.post(url, data=body, timeout=60)
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert r.json() == {"error": message}, name
    r = post_json(url, images[:1])
    assert r.status_code == 200
    np.testing.assert_array_equal(np.array(r.json()["outputs"]["probabilities"], np.float32), model(images[:1]))
    assert requests.get(url + "health", timeout=10).json()["pid"] == pid   # the same replica, never restarted


def test_routes_and_methods(url):
    r = requests.get(url + "nowhere", timeout=10)
    assert r.status_code == 404 and "GET /health" in r.json()["error"]
    r = requests.get(url, timeout=10)
    assert r.status_code == 405 and r.json() == {"error": "/ takes POST, not GET"}


def _read_line(proc, prefix: str, seconds: float) -> str:
    """The first line of ``proc``'s stdout that starts with ``prefix``, waiting at most ``seconds``."""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                line = proc.stdout.readline()
                if line.startswith(prefix):
                    return line
                if not line:
                    break
    raise AssertionError(f"lepton serve printed no '{prefix}' line (exit {proc.poll()})")


def test_lepton_serve_command(artifact, images, model, tmp_path):
    """`lepton serve` in a process of its own, on a new local cluster (--address local), stopped
    with Ctrl-C."""
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "stderr.txt", "w")   # Ray logs a lot there: a file, not a pipe that could fill
    proc = subprocess.Popen([sys.executable, "-m", "lepton_compiler.cli", "serve", str(artifact), "--port", str(port),
                             "--max-batch-size", "2", "--batch-wait-ms", "20", "--address", "local"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        address = f"http://127.0.0.1:{port}/"
        ready = _read_line(proc, "serving ", 180)   # printed once the application runs (slow on a loaded machine)
        assert f"at {address}" in ready
        assert wait_healthy(address, 30, proc)["max_batch_size"] == 2
        r = requests.post(address, data=npy(images[:2]), timeout=60)
        np.testing.assert_array_equal(np.load(io.BytesIO(r.content)), model(images[:2]))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)   # deleting the app and stopping the local cluster
        assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_lepton_serve_refuses_a_busy_port(artifact):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "lepton_compiler.cli", "serve", str(artifact), "--port", str(port)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
