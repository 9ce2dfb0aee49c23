"""What the Ray integration needs without Ray: recompiling an artifact built for another CPU
(``runtime.artifact.load_or_recompile``), and clear errors where Ray is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import lepton_compiler as lc
from lepton_compiler.backends.llvm.target import host_target
from lepton_compiler.demo import bundled_model_path
from lepton_compiler.errors import ArtifactError
from lepton_compiler.runtime.artifact import MANIFEST, load_or_recompile, manifest_digest
from ray_testing import ABSENT_FEATURE, mnist_images, rewrite_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact") / "mnist.lepton"
    lc.compile(bundled_model_path(), threads=1, opt_level=2).save(path)
    return path


@pytest.fixture(scope="module")
def images():
    return mnist_images()[:64]


def test_runnable_artifact_is_loaded_not_recompiled(artifact, images):
    model, recompiled = load_or_recompile(artifact)
    assert recompiled is None
    np.testing.assert_array_equal(model(images), lc.load(artifact)(images))


def test_missing_cpu_feature_recompiles_with_the_same_options(artifact, images, tmp_path):
    foreign = tmp_path / "foreign.lepton"
    rewrite_target(artifact, foreign)
    with pytest.raises(ArtifactError, match=ABSENT_FEATURE) as refused:
        lc.load(foreign)
    model, recompiled = load_or_recompile(foreign, threads=2)
    assert recompiled == str(refused.value)
    assert model.target == host_target()
    assert model.options["opt_level"] == 2 and model.threads == 2
    np.testing.assert_array_equal(model(images), lc.load(artifact)(images))


def test_unverifiable_cpu_recompiles(artifact, images, tmp_path):
    foreign = tmp_path / "other_cpu.lepton"
    rewrite_target(artifact, foreign, add_feature=None, cpu="lepton-test-cpu")
    model, recompiled = load_or_recompile(foreign)
    assert "lepton-test-cpu" in recompiled
    np.testing.assert_array_equal(model(images), lc.load(artifact)(images))


def test_kept_intermediate_outputs_survive_recompilation(tmp_path, images):
    path = tmp_path / "keep.lepton"
    lc.compile(bundled_model_path(), keep=["/conv2/Conv_output_0"]).save(path)
    rewrite_target(path, tmp_path / "keep_foreign.lepton")
    model, recompiled = load_or_recompile(tmp_path / "keep_foreign.lepton")
    assert recompiled and [o.name for o in model.outputs] == [o.name for o in lc.load(path).outputs]
    for got, want in zip(model.run(None, {"input": images}), lc.load(path).run(None, {"input": images})):
        np.testing.assert_array_equal(got, want)


def test_damaged_artifact_is_refused_not_recompiled(artifact, tmp_path):
    foreign = tmp_path / "damaged.lepton"
    rewrite_target(artifact, foreign)
    with zipfile.ZipFile(foreign) as zin:
        entries = {i.filename: zin.read(i.filename) for i in zin.infolist()}
    manifest = json.loads(entries[MANIFEST])
    manifest["model_sha256"] = "0" * 64
    manifest["manifest_sha256"] = manifest_digest(manifest)
    entries[MANIFEST] = json.dumps(manifest).encode()
    with zipfile.ZipFile(foreign, "w") as zout:
        for name, data in entries.items():
            zout.writestr(name, data)
    with pytest.raises(ArtifactError, match="model checksum does not match"):
        load_or_recompile(foreign)


def test_bad_threads(artifact):
    with pytest.raises(lc.LeptonError, match="threads must be a positive int"):
        load_or_recompile(artifact, threads=0)


BLOCK_RAY = "import sys; sys.modules['ray'] = None\n"


def _python(code: str):
    return subprocess.run([sys.executable, "-c", BLOCK_RAY + code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_without_ray_import_works_and_use_says_what_to_install(artifact):
    proc = _python(f"""
import lepton_compiler, lepton_compiler.ray as lr
for call in (lambda: lr.predict(None, {str(artifact)!r}), lambda: lr.serve({str(artifact)!r}),
             lambda: lr.deployment({str(artifact)!r})):
    try:
        call()
    except lepton_compiler.LeptonError as exc:
        print(exc)
""")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and all("pip install lepton_compiler[ray]" in line for line in lines), proc.stdout


def test_lepton_serve_without_ray_is_one_line(artifact):
    proc = _python(f"from lepton_compiler.cli import main; sys.exit(main(['serve', {str(artifact)!r}]))")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "pip install lepton_compiler[ray]" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
