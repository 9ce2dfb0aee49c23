"""The run contract every runtime model shares: its signature, ``__call__`` and input validation.

``CompiledModel`` (native code) and ``OrtModel`` (an ONNX Runtime session) both
inherit ``ModelSignature``, so a feed is checked the same way, with the same
messages, whichever backend runs it.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError
from .limits import ADDRESSABLE, Size, format_bytes, limit_source, linear_bytes, resolve_limit


def _shape_str(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


class ModelSignature:
    """Mixin: subclasses set ``_inputs`` and ``_outputs`` (tuples of ``TensorInfo``), ``batch_symbol``,
    and define ``run(output_names, feed)``; they may add checks on the batch size in ``_check_batch``."""

    _inputs: tuple
    _outputs: tuple
    batch_symbol: Optional[str] = None

    @property
    def inputs(self) -> list:
        return list(self._inputs)

    @property
    def outputs(self) -> list:
        return list(self._outputs)

    def run(self, output_names: Optional[Sequence[str]], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def __call__(self, *args: np.ndarray, **kwargs: np.ndarray):
        """``model(x)`` or ``model(input=x)``: one output as an array, several as a list."""
        if len(args) > len(self._inputs):
            raise InputError(f"the model takes {len(self._inputs)} inputs, got {len(args)}")
        feed = {info.name: a for info, a in zip(self._inputs, args)}
        for name, value in kwargs.items():
            if name in feed:
                raise InputError(f"input '{name}' is given twice")
            feed[name] = value
        outs = self.run(None, feed)
        return outs[0] if len(outs) == 1 else outs

    def _select_outputs(self, names: Optional[Sequence[str]]) -> list[int]:
        if names is None:
            return list(range(len(self._outputs)))
        try:
            names = None if isinstance(names, (str, bytes)) else list(names)
        except TypeError:
            names = None
        if names is None or not all(isinstance(n, str) for n in names):
            raise InputError("output_names must be a list of names or None")
        index = {info.name: i for i, info in enumerate(self._outputs)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise InputError(f"unknown output '{unknown[0]}'; the model's outputs are: "
                             + ", ".join(info.name for info in self._outputs))
        return [index[n] for n in names]

    def _check_feed(self, feed: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], int]:
        """Validate every input before the backend sees it; return contiguous arrays and the batch."""
        fast = self._fast_feed(feed)
        if fast is not None:
            self._check_batch(fast[1])
            self._check_memory(fast[1])
            return fast
        return self._full_check_feed(feed)

    def _fast_feed(self, feed) -> Optional[tuple[list[np.ndarray], int]]:
        """The usual feed (a dict of contiguous arrays of the right dtypes and shapes) in a few
        operations; None for anything else, which the full check then explains."""
        specs = self.__dict__.get("_feed_specs")
        if specs is None:
            symbols = {d for info in self._inputs for d in info.shape if isinstance(d, str)}
            specs = self._feed_specs = [] if len(symbols) > 1 else [
                (info.name, np.dtype(info.dtype), tuple(None if isinstance(d, str) else d for d in info.shape))
                for info in self._inputs]
        if not specs or type(feed) is not dict or len(feed) != len(specs):
            return None
        arrays, batch = [], None
        for name, dtype, pattern in specs:
            array = feed.get(name)
            if type(array) is not np.ndarray or array.dtype != dtype or len(array.shape) != len(pattern) \
                    or not array.flags.c_contiguous or not array.flags.aligned:
                return None
            for want, got in zip(pattern, array.shape):
                if want is None:
                    if got < 1 or (batch is not None and got != batch):
                        return None
                    batch = got
                elif want != got:
                    return None
            arrays.append(array)
        return arrays, 1 if batch is None else batch

    def _full_check_feed(self, feed: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], int]:
        if not isinstance(feed, Mapping):
            raise InputError(f"feed must be a dict of input name -> numpy array, got {type(feed).__name__}")
        names = [info.name for info in self._inputs]
        extra = [k for k in feed if k not in names]
        if extra:
            raise InputError(f"unknown input '{extra[0]}'; the model's inputs are: {', '.join(names)}")
        missing = [n for n in names if n not in feed]
        if missing:
            raise InputError(f"missing input '{missing[0]}'; the model's inputs are: {', '.join(names)}")
        sizes: dict[str, int] = {}   # symbolic dim -> its size in this feed (the cpu backend allows one)
        arrays = []
        for info in self._inputs:
            array = feed[info.name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"input '{info.name}' must be a numpy array, got {type(array).__name__}")
            if array.dtype != np.dtype(info.dtype):
                raise InputError(f"input '{info.name}' has dtype {array.dtype}; the model expects {info.dtype}")
            if array.ndim != len(info.shape):
                raise InputError(f"input '{info.name}' has shape {_shape_str(array.shape)} (rank {array.ndim}); "
                                 f"the model expects rank {len(info.shape)}: {_shape_str(info.shape)}")
            for axis, (want, got) in enumerate(zip(info.shape, array.shape)):
                if isinstance(want, str):
                    if got < 1:
                        raise InputError(f"input '{info.name}' has {want}={got} in dim {axis}; it must be at least 1")
                    if want in sizes and got != sizes[want]:
                        raise InputError(f"input '{info.name}' has {want}={got} in dim {axis}, but another "
                                         f"input has {want}={sizes[want]}")
                    sizes[want] = got
                elif want != got:
                    raise InputError(f"input '{info.name}' has shape {_shape_str(array.shape)}; dim {axis} must be "
                                     f"{want} (the model expects {_shape_str(info.shape)})")
            arrays.append(array)
        batch = sizes.get(self.batch_symbol, next(iter(sizes.values()), 1))
        self._check_batch(batch)
        # a view (np.broadcast_to, a stride of 0) can stand for a huge batch in a few bytes: its
        # contiguous copy and the run's own memory are counted before anything is allocated
        copies = sum(int(a.nbytes) for a in arrays if not (a.flags.c_contiguous and a.flags.aligned))
        self._check_memory(batch, copies)
        return [np.require(a, requirements="CA") for a in arrays], batch

    def _check_batch(self, batch: int) -> None:
        """Backend-specific limits on the batch size (raise ``InputError``); none by default."""

    # -- the memory limit (runtime/limits.py) ----------------------------------------------------------
    @property
    def max_memory(self) -> int:
        """The memory limit in bytes that runs are checked against: weights plus one run's workspace,
        outputs and input copies (``max_memory=`` at compile time, else ``$LEPTON_MAX_MEMORY``, else the
        physical memory). Assign bytes (or a string such as ``"2G"``, or None for the default) to change it."""
        return self._memory_rule()[2]

    @max_memory.setter
    def max_memory(self, value: Size) -> None:
        resolve_limit(value)  # a LeptonError for a bad value, before anything changes
        self.options = {**getattr(self, "options", {}), "max_memory": value}
        self._memory_cache = None

    def _run_bytes(self) -> tuple[int, int]:
        """Bytes one run holds besides its inputs, as ``(per_batch, fixed)``: the outputs by default."""
        return linear_bytes(self._outputs)

    def _memory_rule(self) -> tuple[int, int, int]:
        rule = self.__dict__.get("_memory_cache")
        if rule is None:
            per_batch, fixed = self._run_bytes()
            rule = self._memory_cache = (per_batch, fixed,
                                         resolve_limit(getattr(self, "options", {}).get("max_memory")))
        return rule

    def _check_memory(self, batch: int, copies: int = 0) -> None:
        """Refuse (``InputError``) a run that would need more than the memory limit, before allocating."""
        per_batch, fixed, limit = self._memory_rule()
        need = per_batch * batch + fixed + copies
        if need > limit or need > ADDRESSABLE:
            what = "weights, workspace and outputs" if not copies else \
                "weights, workspace, outputs and a contiguous copy of the inputs"
            raise InputError(f"{self.batch_symbol or 'the batch'}={batch} would need {format_bytes(need)} for the "
                             f"{what}; the memory limit is {format_bytes(limit)} "
                             f"({limit_source(getattr(self, 'options', {}).get('max_memory'))}): "
                             "run it in smaller batches")
