"""Helpers for the Ray tests and the artifact-recompilation tests: the MNIST data and artifacts
whose manifest names a CPU this host is not (a heterogeneous cluster, simulated)."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from lepton_compiler.demo import bundled_model_path
from lepton_compiler.runtime.artifact import MANIFEST, manifest_digest

ABSENT_FEATURE = "lepton-test-feature-no-cpu-has"


def mnist_images() -> np.ndarray:
    """The 1000 bundled MNIST test images as the model takes them: float32 [1000, 1, 28, 28] in [0, 1]."""
    path = os.path.join(os.path.dirname(bundled_model_path()), "mnist_test1000.npz")
    with np.load(path) as data:
        return data["x"].astype(np.float32) / np.float32(255)


def rewrite_target(src, dst, *, add_feature: str = ABSENT_FEATURE, cpu: str = None) -> None:
    """Copy the artifact ``src`` to ``dst`` with its manifest's target naming ``add_feature`` (and
    ``cpu`` if given), the manifest checksum made valid again: an artifact built on another CPU."""
    with zipfile.ZipFile(src) as zin:
        entries = {info.filename: zin.read(info.filename) for info in zin.infolist()}
    manifest = json.loads(entries[MANIFEST])
    target = manifest["target"]
    if add_feature:
        target["features"] = sorted(set(target["features"]) | {add_feature})
    if cpu:
        target["cpu"] = cpu
    manifest["manifest_sha256"] = manifest_digest(manifest)
    entries[MANIFEST] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in entries.items():
            zout.writestr(name, data)
