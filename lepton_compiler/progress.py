"""Progress bars for long compiles (tqdm): on a terminal only, and only once a compile has
taken longer than ``DELAY`` seconds, so small models and pipes stay quiet."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, TextIO

from tqdm import tqdm

DELAY = 1.0


@contextmanager
def progress(total: int, description: str, stream: Optional[TextIO] = None,
             force: bool = False) -> Iterator[Callable[[str], None]]:
    """Yields ``step(label)``: one unit done, ``label`` shown as what runs next."""
    stream = stream or sys.stderr
    enabled = force or (hasattr(stream, "isatty") and stream.isatty())
    with tqdm(total=total, desc=description, file=stream, disable=not enabled, delay=0 if force else DELAY,
              mininterval=0 if force else 0.1, leave=False, unit="step", dynamic_ncols=True) as bar:
        def step(label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update(1)
        yield step
