"""Restriction trackers Beam's Python SDK lacks: an open offset range, and a group of ranges.

GrowableOffsetRangeTracker: an offset range whose end is open.

Python Beam has ``OffsetRestrictionTracker`` for ``[start, stop)`` but nothing
for a range that grows while it is read, like a Kafka partition. This is the
Python counterpart of Java's ``GrowableOffsetRangeTracker``: the range is
``[start, OPEN_END)`` and a *range end estimator* (for Kafka: the partition's
high watermark) stands in for the end wherever a size is needed.

* ``try_claim`` — as ``OffsetRestrictionTracker``: strictly increasing; any
  offset at or above ``start`` and below ``OPEN_END`` can be claimed.
* ``try_split(0)`` — a checkpoint: the primary becomes ``[start, last + 1)``,
  the residual ``[last + 1, OPEN_END)``, and no further split is allowed.
* ``try_split(f)``, ``0 < f <= 1`` — the split point is
  ``last + max(1, (estimate - last) * f)`` with exact rational arithmetic;
  no split when it lands beyond the estimated end.
* ``current_progress`` — completed: offsets ``[start, last]``; remaining:
  ``[last + 1, estimate)`` (never negative).

Once the end is closed (by a split) the tracker behaves exactly like
``OffsetRestrictionTracker``.

RangeGroupTracker: offset ranges of several partitions, read at once.

The restriction is a tuple of ``OffsetRange``, one per range of a group (direct
mode reads many small ranges under one consumer assignment). Records of the
partitions arrive interleaved, so each range is claimed on its own:

* ``try_claim((i, offset))`` — as ``OffsetRestrictionTracker`` for range ``i``:
  strictly increasing within the range; False at or above its stop.
* ``try_split(f)`` — every range is split as ``OffsetRestrictionTracker`` would
  split it alone: at ``cur + max(1, remaining * f)`` (``f = 0``: at ``cur``, a
  checkpoint), ``cur`` being the offset after its last attempted claim. The
  primary and the residual are groups of the same length; ranges left empty
  are ``OffsetRange(stop, stop)``. No split when every residual range is empty.
* ``check_done`` — every range was claimed (or attempted) up to its stop.
* ``current_progress`` — the sums over the ranges.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from typing import TYPE_CHECKING, Callable, Optional, Tuple, cast

from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

import beam_zdl.compat as compat

__all__ = ["OPEN_END", "GrowableOffsetRangeTracker", "RangeGroupTracker", "Spans"]

_LOGGER = logging.getLogger(__name__)

# What try_split returns: (primary, residual), or None when no split is possible.
_Split = Optional[Tuple[OffsetRange, OffsetRange]]

# The end of an open range: Java's Long.MAX_VALUE, so the restriction means
# the same to a runner that reads it as a Java OffsetRange.
OPEN_END = 2 ** 63 - 1


class GrowableOffsetRangeTracker(OffsetRestrictionTracker):
    """Tracks ``[start, OPEN_END)``; ``range_end_estimator()`` estimates the real end.

    Args:
        offset_range: the restriction; its ``stop`` is ``OPEN_END`` while the
            range is open (any other stop makes this a plain offset tracker).
        range_end_estimator: returns the offset after the last one that
            exists now (the high watermark). Called on splits and progress,
            from the runner's threads; it should be cheap and may be stale.
    """

    def __init__(self, offset_range: OffsetRange,
                 range_end_estimator: Callable[[], int]) -> None:
        super().__init__(offset_range)
        self._estimator = range_end_estimator

    if TYPE_CHECKING:
        # Beam leaves the inherited accessor unannotated; declared here so this
        # class's own calls are checked against the OffsetRange it returns.
        def current_restriction(self) -> OffsetRange: ...

    def _open(self) -> bool:
        rng = self.current_restriction()
        return bool(rng.stop == OPEN_END and rng.start != rng.stop)

    def _estimate(self, floor: int) -> int:
        """The estimated end, never below ``floor``; a failing estimator gives ``floor``."""
        try:
            return max(int(self._estimator()), floor)
        except Exception as exc:  # a size estimate must not fail the bundle
            _LOGGER.debug("range end estimator failed (%s); using %d", exc, floor)
            return floor

    def last_attempted(self) -> int | None:
        """The last offset passed to ``try_claim``, None before the first."""
        return compat.tracker_last_attempt(self)

    def try_split(self, fraction_of_remainder: float) -> _Split:
        if not self._open():
            # Beam's try_split is unannotated, and reached through super() mypy's
            # untyped_calls_exclude cannot tell it is Beam's.
            return cast(Callable[[float], _Split], super().try_split)(fraction_of_remainder)
        if compat.tracker_checkpointed(self):
            return None
        last = compat.tracker_last_attempt(self)
        if last is not None and last >= OPEN_END - 1:
            return None
        rng = self.current_restriction()
        cur = rng.start - 1 if last is None else last
        if fraction_of_remainder == 0:
            split = cur + 1
        else:
            end = self._estimate(cur + 1)
            step = max(Fraction(1), (end - cur) * Fraction(fraction_of_remainder))
            split = int(cur + step)  # floor: cur + step > cur, so split >= cur + 1
            if split > end:
                return None
        if split < rng.start or split >= rng.stop:
            return None
        if fraction_of_remainder == 0:
            compat.mark_tracker_checkpointed(self)
        primary, residual = rng.split_at(split)
        compat.set_tracker_range(self, primary)
        return primary, residual

    def current_progress(self) -> RestrictionProgress:
        if not self._open():
            return super().current_progress()
        start = self.current_restriction().start
        last = compat.tracker_last_attempt(self)
        if last is None:
            end = self._estimate(start)
            return RestrictionProgress(completed=0, remaining=end - start)
        end = self._estimate(last + 1)
        return RestrictionProgress(completed=last - start + 1, remaining=end - last - 1)

    def is_bounded(self) -> bool:
        return bool(self.current_restriction().stop != OPEN_END)


# A RangeGroupTracker's restriction: one offset range per range of the group.
Spans = Tuple[OffsetRange, ...]


class RangeGroupTracker(RestrictionTracker):
    """Tracks the offset ranges of a group of partitions, each claimed on its own."""

    def __init__(self, spans: Spans) -> None:
        self._spans = list(spans)
        # Per range, the last offset a claim was tried for (start - 1 before the first).
        self._attempted = [s.start - 1 for s in spans]

    def current_restriction(self) -> Spans:
        return tuple(self._spans)

    def try_claim(self, position: Tuple[int, int]) -> bool:
        index, offset = position
        span = self._spans[index]
        if offset <= self._attempted[index]:
            raise ValueError(f"range {index}: offset {offset} claimed after "
                             f"{self._attempted[index]}; claims must increase")
        if offset < span.start:
            raise ValueError(f"range {index}: offset {offset} is below its start {span.start}")
        self._attempted[index] = offset
        stop: int = span.stop
        return offset < stop

    def try_split(self, fraction_of_remainder: float) -> Optional[Tuple[Spans, Spans]]:
        primary, residual = [], []
        for span, attempted in zip(self._spans, self._attempted):
            cur = max(span.start, attempted + 1)
            split = cur
            if fraction_of_remainder > 0:
                split = cur + int(max(1, (span.stop - cur) * fraction_of_remainder))
            if split >= span.stop:
                primary.append(span)
                residual.append(OffsetRange(span.stop, span.stop))
            else:
                primary.append(OffsetRange(span.start, split))
                residual.append(OffsetRange(split, span.stop))
        if all(r.start == r.stop for r in residual):
            return None
        self._spans = primary
        return tuple(primary), tuple(residual)

    def check_done(self) -> None:
        for index, (span, attempted) in enumerate(zip(self._spans, self._attempted)):
            if span.start < span.stop and attempted < span.stop - 1:
                raise ValueError(f"range {index}: offsets [{max(span.start, attempted + 1)}, "
                                 f"{span.stop}) were never claimed")

    def current_progress(self) -> RestrictionProgress:
        done = left = 0
        for span, attempted in zip(self._spans, self._attempted):
            cur = min(span.stop, max(span.start, attempted + 1))
            done += cur - span.start
            left += span.stop - cur
        return RestrictionProgress(completed=done, remaining=left)

    def is_bounded(self) -> bool:
        return True
