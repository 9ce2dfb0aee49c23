"""Batch inference on a real local Ray cluster (Ray Data): the same results as one process."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import lepton_compiler as lc  # noqa: E402
from lepton_compiler.demo import bundled_model_path  # noqa: E402
from lepton_compiler.ray import LeptonPredictor, predict  # noqa: E402
from ray_testing import ABSENT_FEATURE, mnist_images, rewrite_target  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray_data") / "mnist.lepton"
    lc.compile(bundled_model_path(), threads=1).save(path)
    return path


@pytest.fixture(scope="module")
def images():
    return mnist_images()


@pytest.fixture(scope="module")
def expected(artifact, images):
    """The single-process result: the artifact loaded here, all 1000 images in one run."""
    return lc.load(artifact).run(None, {"input": images})[0]


@pytest.fixture(scope="module")
def dataset(cluster, images):
    return ray.data.from_items([{"id": i, "image": images[i]} for i in range(len(images))])


def _by_id(rows, column):
    rows = sorted(rows, key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(len(rows)))
    return np.stack([r[column] for r in rows])


@pytest.mark.parametrize("workers", [1, 2])
def test_predict_equals_single_process(dataset, artifact, expected, workers):
    out = predict(dataset, artifact, input_column="image", output_column="probs", batch_size=128,
                  num_workers=workers)
    rows = out.take_all()
    assert len(rows) == 1000 and set(rows[0]) == {"id", "image", "probs"}
    got = _by_id(rows, "probs")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_heterogeneous_cpu_workers_recompile(dataset, artifact, expected, tmp_path):
    """An artifact whose manifest names a CPU feature this host lacks: every worker recompiles the
    embedded model for its own CPU and gives the same results."""
    foreign = tmp_path / "foreign.lepton"
    rewrite_target(artifact, foreign)
    with pytest.raises(lc.LeptonError, match=ABSENT_FEATURE):
        lc.load(foreign)
    rows = predict(dataset, foreign, input_column="image", output_column="probs", batch_size=250,
                   num_workers=2).take_all()
    np.testing.assert_array_equal(_by_id(rows, "probs"), expected)


def test_callable_class_with_map_batches_and_two_threads(dataset, artifact, expected):
    """The documented direct use: LeptonPredictor in map_batches, one actor with two threads; the
    output column defaults to the model's output name."""
    out = dataset.map_batches(LeptonPredictor, batch_format="numpy", batch_size=100,
                              compute=ray.data.ActorPoolStrategy(size=1), num_cpus=2,
                              fn_constructor_kwargs={"artifact": str(artifact), "input_column": "image",
                                                     "threads": 2})
    np.testing.assert_array_equal(_by_id(out.take_all(), "probabilities"), expected)


def test_predictor_reports_recompilation_in_process(artifact, images, expected, tmp_path):
    foreign = tmp_path / "foreign.lepton"
    rewrite_target(artifact, foreign)
    predictor = LeptonPredictor(foreign.read_bytes(), input_column="image")
    assert ABSENT_FEATURE in predictor.recompiled
    batch = predictor({"image": images[:10], "id": np.arange(10)})
    np.testing.assert_array_equal(batch["probabilities"], expected[:10])
    np.testing.assert_array_equal(batch["id"], np.arange(10))
    lean = LeptonPredictor(foreign.read_bytes(), input_column="image", output_column="p", keep_input_columns=False)
    assert set(lean({"image": images[:2], "id": np.arange(2)})) == {"id", "p"}


def test_column_errors(dataset, artifact):
    with pytest.raises(lc.LeptonError, match="'nope', which is not one of the model's outputs"):
        predict(dataset, artifact, input_column="image", output_column={"nope": "x"})
    with pytest.raises(lc.LeptonError, match="num_workers must be a positive int"):
        predict(dataset, artifact, input_column="image", num_workers=0)
    with pytest.raises(Exception, match="the batch has no column 'pixels'; its columns are: id, image"):
        predict(dataset.limit(10), artifact, input_column="pixels").take_all()


def test_missing_artifact_is_refused_on_the_driver(dataset, tmp_path):
    with pytest.raises(lc.LeptonError, match="cannot read artifact"):
        predict(dataset, tmp_path / "missing.lepton")
