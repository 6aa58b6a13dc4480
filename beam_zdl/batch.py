"""Batch: what ``build_fn`` learns about the micro-batch it builds a pipeline for.

A neutral module below both the micro-batch driver, which makes batches and builds
their pipelines, and the transforms that key their output by the batch being built
(``WriteToKafka``): neither has to import the other.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator, Optional

from beam_zdl.ranges import PartitionRange

__all__ = ["Batch", "current_batch", "building"]


@dataclass(frozen=True)
class Batch:
    """What ``build_fn`` learns about the batch it builds a pipeline for.

    Attributes:
        batch_id: increasing from 0; a replayed batch keeps its id, so a sink
            keyed by it is idempotent.
        ranges: the offset ranges the batch reads, ``[start, stop)`` each.
        replay: True when this run repeats a batch planned before a crash.
        segments: WAL mode: the URIs of the sealed segments the batch reads (its
            ``ranges`` then span each partition's offsets in them); empty in
            direct mode.
    """
    batch_id: int
    ranges: tuple[PartitionRange, ...]
    replay: bool = False
    segments: tuple[str, ...] = ()

    @property
    def planned_records(self) -> int:
        """Offsets covered by the ranges (an upper bound where offsets have gaps)."""
        return sum(r.stop - r.start for r in self.ranges)


_BUILDING: contextvars.ContextVar[Optional[Batch]] = contextvars.ContextVar(
    "beam_zdl_building_batch", default=None)


def current_batch() -> Optional[Batch]:
    """The batch whose pipeline ``build_fn`` is building right now, else None.

    Lets a sink built inside ``build_fn`` (``WriteToKafka``) key its output by the
    batch without being handed it.
    """
    return _BUILDING.get()


@contextlib.contextmanager
def building(batch: Batch) -> Iterator[Batch]:
    """While the driver runs ``build_fn`` for ``batch``: :func:`current_batch` is it."""
    token = _BUILDING.set(batch)
    try:
        yield batch
    finally:
        _BUILDING.reset(token)
