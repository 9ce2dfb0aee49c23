"""Batch inference with Ray Data: a compiled model applied to every batch of a dataset.

``predict(dataset, "model.lepton", input_column="image")`` returns the dataset with the model's
outputs added as columns. It runs ``LeptonPredictor``, a callable class that can also be given to
``Dataset.map_batches`` directly. Ray Data starts ``num_workers`` actors; each loads the artifact
once (recompiling the embedded model when its CPU cannot run the artifact's code, see
``runtime.artifact.load_or_recompile``) and runs every batch it gets with ``threads`` threads.
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import numpy as np

from ..errors import InputError, LeptonError
from ._common import ArtifactBytes, check_threads, require

Columns = Union[None, str, Mapping[str, str]]


def column_map(spec: Columns, names: list[str], what: str) -> dict[str, str]:
    """Model tensor name -> dataset column. None: the columns are named after the tensors; a
    string: the one tensor's column (a model with several needs a dict); a dict: as given."""
    if spec is None:
        return {name: name for name in names}
    if isinstance(spec, str):
        if len(names) != 1:
            raise LeptonError(f"{what}={spec!r} names one column, but the model has {len(names)} "
                              f"{'inputs' if what == 'input_column' else 'outputs'} ({', '.join(names)}): "
                              f"give a dict of name -> column")
        return {names[0]: spec}
    if isinstance(spec, Mapping):
        unknown = [k for k in spec if k not in names]
        if unknown:
            raise LeptonError(f"{what} names '{unknown[0]}', which is not one of the model's "
                              f"{'inputs' if what == 'input_column' else 'outputs'}: {', '.join(names)}")
        if what == "input_column" and len(spec) != len(names):
            missing = [n for n in names if n not in spec]
            raise LeptonError(f"input_column gives no column for input '{missing[0]}'")
        if not spec or not all(isinstance(v, str) for v in spec.values()):
            raise LeptonError(f"{what} must map names to column names")
        return dict(spec)
    raise LeptonError(f"{what} must be None, a column name or a dict, not {type(spec).__name__}")


def _column(batch, column: str) -> np.ndarray:
    """A tensor column of a batch as one array (Ray gives ragged or pandas columns as objects)."""
    try:
        value = batch[column]
    except KeyError:
        raise InputError(f"the batch has no column '{column}'; its columns are: "
                         + ", ".join(map(str, batch.keys()))) from None
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value
    try:
        return np.stack([np.asarray(v) for v in value])
    except ValueError as exc:
        raise InputError(f"column '{column}' does not hold tensors of one shape: {exc}") from None


class LeptonPredictor:
    """A compiled model for ``Dataset.map_batches``, loaded once per actor::

        ds.map_batches(LeptonPredictor, batch_format="numpy", batch_size=256,
                       compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1,
                       fn_constructor_kwargs={"artifact": "model.lepton", "input_column": "image"})

    ``artifact``: a path (it must exist on every node) or the artifact's bytes (shipped to each
    actor; ``predict`` does this). ``input_column`` / ``output_column``: see ``column_map``.
    ``threads``: threads per run in this actor; give the actor as many CPUs (``num_cpus``).
    Each batch (a dict of numpy arrays) comes back with the outputs added as columns; with
    ``keep_input_columns=False`` without the columns the model read (less data to move).
    ``recompiled`` says why the actor recompiled the model (None: it ran the artifact's code).
    """

    def __init__(self, artifact, input_column: Columns = None, output_column: Columns = None, threads: int = 1,
                 keep_input_columns: bool = True):
        self.keep_input_columns = bool(keep_input_columns)
        self.model, self.recompiled = ArtifactBytes.of(artifact).load(threads=check_threads(threads))
        self.input_columns = column_map(input_column, [i.name for i in self.model.inputs], "input_column")
        self.output_columns = column_map(output_column, [o.name for o in self.model.outputs], "output_column")

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: _column(batch, column) for name, column in self.input_columns.items()}
        outputs = self.model.run(list(self.output_columns), feed)
        dropped = () if self.keep_input_columns else set(self.input_columns.values())
        result = {key: batch[key] for key in batch.keys() if key not in dropped}
        result.update(zip(self.output_columns.values(), outputs))
        return result


def predict(dataset, artifact, *, input_column: Columns = None, output_column: Columns = None,
            batch_size: Optional[int] = 256, num_workers: int = 1, threads: int = 1, keep_input_columns: bool = True,
            **map_batches_args):
    """``dataset`` with the outputs of the compiled model in ``artifact`` (a path or bytes) added
    as columns; lazy, like every Ray Data transformation.

    ``num_workers`` actors, each reserving ``threads`` CPUs and running with ``threads`` threads,
    take batches of ``batch_size`` rows. The artifact is read here, on the driver, and its bytes go
    to every actor, so it need not exist on the other nodes of a cluster. Other keywords go to
    ``Dataset.map_batches`` (``memory=``, ``resources=``, ...). ``keep_input_columns=False`` leaves
    the columns the model read out of the result.
    """
    data = require("ray.data")
    blob = ArtifactBytes.of(artifact)
    inputs, outputs = blob.signature()
    column_map(input_column, inputs, "input_column")       # refused here rather than in every actor
    column_map(output_column, outputs, "output_column")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise LeptonError(f"num_workers must be a positive int, not {num_workers!r}")
    check_threads(threads)
    kwargs = {"batch_format": "numpy", "compute": data.ActorPoolStrategy(size=num_workers), "num_cpus": threads,
              **map_batches_args}
    return dataset.map_batches(
        LeptonPredictor, batch_size=batch_size,
        fn_constructor_kwargs={"artifact": blob, "input_column": input_column, "output_column": output_column,
                               "threads": threads, "keep_input_columns": keep_input_columns},
        **kwargs)
