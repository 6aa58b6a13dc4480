"""Every use of a private Apache Beam or client-library API, behind one door.

beam_zdl depends on ``apache-beam>=2.77,<3`` and ``google-cloud-storage>=3``;
a minor release may change what is private without notice. Each function
here wraps one such use, says why it is needed, and has a test in
``tests/test_compat.py`` that fails naming the installed version when the
private API changes. Nothing else in beam_zdl touches these internals. Beam
is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

if TYPE_CHECKING:  # imported lazily: storage (and the CLI) use this module without Beam
    from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

__all__ = ["windowed_value", "set_tracker_range", "tracker_last_attempt",
           "tracker_checkpointed", "mark_tracker_checkpointed", "gcs_transient_predicate"]


def windowed_value(value: Any, timestamp_micros: int, windows: Iterable[Any]) -> Any:
    """A ``WindowedValue`` built without ``TimestampedValue`` and window assignment.

    The readers emit every record like this (``apache_beam.utils.windowed_value.create``,
    a Cython fast path): a DoFn that yields a WindowedValue has it passed on as is,
    which costs a third of what ``TimestampedValue`` plus assignment costs per record.
    """
    from apache_beam.utils.windowed_value import create
    return create(value, timestamp_micros, windows)


# OffsetRestrictionTracker keeps its state in private fields; GrowableOffsetRangeTracker
# (beam_zdl.trackers) extends it to an open end and must read and move them.

def set_tracker_range(tracker: OffsetRestrictionTracker, rng: OffsetRange) -> None:
    """Narrow the tracker to ``rng`` (a split's primary)."""
    tracker._range = rng


def tracker_last_attempt(tracker: OffsetRestrictionTracker) -> Optional[int]:
    """The last offset passed to ``try_claim`` (``_last_claim_attempt``), None before any."""
    last: Optional[int] = tracker._last_claim_attempt
    return last


def tracker_checkpointed(tracker: OffsetRestrictionTracker) -> bool:
    """Whether a checkpoint (``try_split(0)``) happened (``_checkpointed``)."""
    return bool(tracker._checkpointed)


def mark_tracker_checkpointed(tracker: OffsetRestrictionTracker) -> None:
    """Record a checkpoint, as ``OffsetRestrictionTracker.try_split(0)`` does."""
    tracker._checkpointed = True


def gcs_transient_predicate() -> Callable[[BaseException], bool]:
    """google-cloud-storage's own test of a retryable error (``DEFAULT_RETRY._predicate``).

    :class:`beam_zdl.storage.GcsStorage` wraps it to learn whether an upload was
    retried: a retried create-once upload that then fails its precondition may
    have succeeded the first time (see ``GcsStorage.create``).
    """
    from google.cloud.storage.retry import DEFAULT_RETRY
    predicate: Callable[[BaseException], bool] = DEFAULT_RETRY._predicate
    return predicate
