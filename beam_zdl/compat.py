"""Every use of a private Apache Beam or client-library API, behind one door.

beam_zdl depends on ``apache-beam>=2.77,<3`` and ``google-cloud-storage>=3``;
a minor release may change what is private without notice. Each function
here wraps one such use, says why it is needed, and has a test in
``tests/test_compat.py`` that fails naming the installed version when the
private API changes. Nothing else in beam_zdl touches these internals. Beam
is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import threading
import types
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

if TYPE_CHECKING:  # imported lazily: storage (and the CLI) use this module without Beam
    from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

__all__ = ["windowed_value_maker", "set_tracker_range", "tracker_last_attempt",
           "tracker_checkpointed", "mark_tracker_checkpointed", "gcs_transient_predicate",
           "cached_dofn_specs"]


def windowed_value_maker() -> Callable[[Any, int, Iterable[Any]], Any]:
    """``make(value, timestamp_micros, windows)``: a ``WindowedValue`` built without
    ``TimestampedValue`` and window assignment.

    The readers emit every record like this (``apache_beam.utils.windowed_value.create``,
    a Cython fast path): a DoFn that yields a WindowedValue has it passed on as is,
    which costs a third of what ``TimestampedValue`` plus assignment costs per record.
    Readers take the function once per range and call it per record: an import
    statement inside a per-record call cost 1.8 us, more than the rest of the record.
    """
    from apache_beam.utils.windowed_value import create
    make: Callable[[Any, int, Iterable[Any]], Any] = create
    return make


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


# Beam's userstate.get_dofn_specs inspects the signature of every method of a DoFn, and
# is called for every DoFn several times per pipeline (construction, to_runner_api, each
# bundle processor): ~90 calls and ~2,900 inspect.signature calls per micro-batch, 40 % of
# a small batch's fixed cost. Its answer depends only on the class's methods, unless the
# instance holds bound methods of its own (CallableWrapperDoFn of ``Map(obj.method)``).
_specs_lock = threading.Lock()
_specs_users = 0
_specs_original: Any = None
_specs_cache: "weakref.WeakKeyDictionary[type, tuple[frozenset[Any], frozenset[Any]]]" = (
    weakref.WeakKeyDictionary())


def _cached_get_dofn_specs(dofn: Any) -> tuple[set[Any], set[Any]]:
    own = getattr(dofn, "__dict__", None)
    if own is None or any(isinstance(v, types.MethodType) for v in own.values()):
        specs: tuple[set[Any], set[Any]] = _specs_original(dofn)
        return specs
    cls = type(dofn)
    cached = _specs_cache.get(cls)
    if cached is None:
        state, timers = _specs_original(dofn)  # raises, uncached, for an invalid DoFn
        cached = _specs_cache[cls] = (frozenset(state), frozenset(timers))
    return set(cached[0]), set(cached[1])


@contextlib.contextmanager
def cached_dofn_specs() -> Iterator[None]:
    """Inside the block, Beam's ``userstate.get_dofn_specs`` answers once per DoFn class.

    Patches the module function Beam's callers look up (``is_stateful_dofn``,
    ``validate_stateful_dofn``, ``ParDo.to_runner_api_parameter``); restored when the
    last user leaves the block. The cache holds classes weakly (a batch's DoFn classes
    unpickled by value come and go).
    """
    global _specs_users, _specs_original
    from apache_beam.transforms import userstate
    with _specs_lock:
        if _specs_users == 0:
            _specs_original = userstate.get_dofn_specs
            userstate.get_dofn_specs = _cached_get_dofn_specs
        _specs_users += 1
    try:
        yield
    finally:
        with _specs_lock:
            _specs_users -= 1
            if _specs_users == 0:
                userstate.get_dofn_specs = _specs_original
