"""The garbage collector while the monitor runs: young collections deferred (see
:func:`young_collections_deferred`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["YOUNG_COLLECTION_THRESHOLD", "young_collections_deferred"]

#: monitor runs; Python's default is 700.
YOUNG_COLLECTION_THRESHOLD = 50_000


@contextmanager
def young_collections_deferred() -> Iterator[None]:
    """Run the block with the garbage collector's young generation collected every
    :data:`YOUNG_COLLECTION_THRESHOLD` allocations instead of every 700.

    The monitor's records, dicts and alerts hold no reference cycles and are freed by their
    reference counts; but a batch holds thousands of records at once, and at 700 the collector
    kept scanning them and promoting them to older generations, whose collections then scan
    every long-lived object: 0.82 s of a 3.2 s read of a million one-metric steps, 0.12 s of
    2 s at ten metrics a step (0.14 and 0.02 s now). Cyclic garbage, which only a collection
    frees, waits for at most that many allocations. The threshold is put back afterwards.
    """
    young, *older = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_COLLECTION_THRESHOLD), *older)
    try:
        yield
    finally:
        gc.set_threshold(young, *older)
