"""BatchProgress: what one micro-batch did, and the listeners that are told.

One :class:`BatchProgress` per completed batch (Spark's ``StreamingQueryProgress``):
its input per partition (start, end and latest offsets, the lag left after it),
totals and rates, how long each Step took (see :mod:`beam_zdl.microbatch.loop`),
and every metric of the batch's pipeline — beam_zdl's own, the user's, the
sink's — by namespace and name, summed over the steps that reported it.

Field names (also in ``docs/monitoring.md``):

===========================  ================================================================
``batch_id``                 the batch's id (a replay keeps it)
``mode``                     ``direct`` or ``wal``
``replay``                   True when the batch re-ran a plan made before a crash
``trigger_ms``               wall-clock time (epoch ms) when the batch's Step 2 (plan) began
``partitions``               per partition: ``topic``, ``partition``, ``start_offset``,
                             ``end_offset`` (exclusive), ``latest_offset`` (the end offset the
                             run knew of, None if unknown), ``records`` (offsets in
                             ``[start, end)``; transaction markers count), ``lag`` (latest minus
                             end; None if latest is unknown)
``records``                  records the batch's read counted (``beam_zdl/records``)
``bytes``                    key and value bytes read (``beam_zdl/bytes``)
``input_rows_per_s``         records over the time from the previous batch's trigger to this
                             one's (over ``durations_s.total`` for a run's first batch)
``processed_rows_per_s``     records over the run Step
``durations_s``              seconds per Step: ``plan`` (0 for a replay), ``run``, ``complete``,
                             ``commit`` (Step 5 as the loop waits for it: direct mode's Kafka
                             commit runs beside the next batch, so this is mostly retention),
                             and ``total``
``counters``                 ``{namespace: {name: int}}``, every counter of the pipeline
``distributions``            ``{namespace: {name: {count, sum, min, max}}}``
``gauges``                   ``{namespace: {name: int}}`` (the newest value of each)
``dead_letter_records``      ``beam_zdl/dead_letter_records`` (0 when no DecodeRecords)
``data_loss_records``        ``beam_zdl/data_loss_records``
``wal_segments``             WAL mode: segments the batch read; 0 in direct mode
``receiver_buffered_bytes``  WAL mode: bytes the driver's receiver held unsealed when the
                             batch completed (its last status, at most 1 s old); None in
                             direct mode
``receiver_lag``             WAL mode: offsets the receiver had not yet appended, up to the
                             latest end offsets known, over the partitions it held; None in
                             direct mode
``lag``                      sum of the partitions' lags (None when no latest is known)
===========================  ================================================================

Listeners (:class:`ProgressListener`) run on a thread of their own, in order: one
that raises is logged and the run goes on; a slow one delays no batch (the run
waits at most ``_END_WAIT_S`` at its end for events still queued).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

__all__ = ["BatchProgress", "PartitionProgress", "ProgressListener", "ListenerBus",
           "pipeline_metrics", "merge_counters", "merge_distributions"]

_LOGGER = logging.getLogger(__name__)

_END_WAIT_S = 30.0

Counters = dict[str, dict[str, int]]
Distributions = dict[str, dict[str, dict[str, int]]]


@dataclass(frozen=True)
class PartitionProgress:
    """One partition's part of a batch (see the module doc's table)."""
    topic: str
    partition: int
    start_offset: int
    end_offset: int
    latest_offset: Optional[int]
    records: int
    lag: Optional[int]


@dataclass(frozen=True)
class BatchProgress:
    """What one batch did (field names in the module doc). Build none yourself: the loop
    makes one per completed batch and hands it to listeners."""
    batch_id: int
    mode: str
    replay: bool
    trigger_ms: int
    partitions: tuple[PartitionProgress, ...]
    records: int
    bytes: int
    input_rows_per_s: float
    processed_rows_per_s: float
    durations_s: dict[str, float]
    counters: Counters = field(default_factory=dict)
    distributions: Distributions = field(default_factory=dict)
    gauges: Counters = field(default_factory=dict)
    dead_letter_records: int = 0
    data_loss_records: int = 0
    wal_segments: int = 0
    lag: Optional[int] = None
    receiver_buffered_bytes: Optional[int] = None
    receiver_lag: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of JSON types (partitions as a list of dicts), sharing nothing
        mutable with this progress.

        Built field by field: ``dataclasses.asdict`` deep-copies recursively, ~1 ms per
        40 partitions, which a batch of 256 partitions paid twice.
        """
        doc = dict(vars(self))
        doc["partitions"] = [dict(vars(p)) for p in self.partitions]
        doc["durations_s"] = dict(self.durations_s)
        doc["counters"] = {ns: dict(names) for ns, names in self.counters.items()}
        doc["gauges"] = {ns: dict(names) for ns, names in self.gauges.items()}
        doc["distributions"] = {ns: {name: dict(d) for name, d in names.items()}
                                for ns, names in self.distributions.items()}
        return doc

    def to_json(self, indent: Optional[int] = None) -> str:
        """The progress as a JSON object (field names as in the module doc)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "BatchProgress":
        """The inverse of :meth:`to_dict` (unknown keys are ignored, missing ones default).

        Raises:
            KeyError, TypeError, ValueError: ``doc`` is not a BatchProgress document.
        """
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        known["partitions"] = tuple(PartitionProgress(**p) for p in doc["partitions"])
        return cls(**known)


class ProgressListener:
    """Told about a run as it goes; override what you need (every method does nothing).

    Methods run on the listener thread, in the order of the events. An exception is
    logged and the run continues.
    """

    def on_start(self, checkpoint_dir: str, epoch: int) -> None:
        """The checkpoint is claimed (Step 0); batches follow."""

    def on_progress(self, progress: BatchProgress) -> None:
        """A batch completed (after its Step 5)."""

    def on_idle(self) -> None:
        """A check for new input found nothing (a continuous run waits, then checks again)."""

    def on_end(self, summary: Any, error: Optional[BaseException]) -> None:
        """The run ended: ``summary`` is its :class:`~beam_zdl.RunSummary` (so far, when it
        failed), ``error`` what it raised, None when it ended cleanly."""


class ListenerBus:
    """Delivers events to listeners on one thread, in order (see the module doc)."""

    def __init__(self, listeners: Sequence[ProgressListener]) -> None:
        self._listeners = list(listeners)
        self._queue: "queue.Queue[Optional[tuple[str, tuple[Any, ...]]]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        if self._listeners:
            self._thread = threading.Thread(target=self._deliver, name="beam-zdl-listeners",
                                            daemon=True)
            self._thread.start()

    def post(self, method: str, *args: Any) -> None:
        """Queue ``listener.method(*args)`` for every listener."""
        if self._thread is not None:
            self._queue.put((method, args))

    def close(self, timeout_s: float = _END_WAIT_S) -> None:
        """Deliver what is queued (waiting at most ``timeout_s``), then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            _LOGGER.warning("a progress listener is still busy after %.0f s; the run ends "
                            "without waiting for it", timeout_s)
        self._thread = None

    def _deliver(self) -> None:
        while (event := self._queue.get()) is not None:
            method, args = event
            for listener in self._listeners:
                try:
                    getattr(listener, method)(*args)
                except Exception:  # a listener's bug must never fail the run
                    _LOGGER.exception("progress listener %s.%s raised; the run goes on",
                                      type(listener).__name__, method)


def _value(result: Any) -> Any:
    committed = getattr(result, "committed", None)
    return committed if committed is not None else getattr(result, "attempted", None)


def pipeline_metrics(query: Mapping[str, Iterable[Any]]) -> tuple[Counters, Distributions,
                                                                  Counters]:
    """Beam's ``result.metrics().query()`` summed by namespace and name over steps.

    Counters are summed, distributions merged (counts and sums added, min of the
    minimums, max of the maximums), gauges take the newest value.

    Returns:
        ``(counters, distributions, gauges)``, each ``{namespace: {name: ...}}``.
    """
    counters: Counters = {}
    for result in query.get("counters", ()):
        value = _value(result)
        if value is None:
            continue
        ns = counters.setdefault(result.key.metric.namespace, {})
        name = result.key.metric.name
        ns[name] = ns.get(name, 0) + int(value)
    distributions: Distributions = {}
    for result in query.get("distributions", ()):
        value = _value(result)
        if value is None or not value.count:
            continue
        merge_distributions(distributions, {result.key.metric.namespace: {
            result.key.metric.name: {"count": int(value.count), "sum": int(value.sum),
                                     "min": int(value.min), "max": int(value.max)}}})
    gauges: Counters = {}
    stamps: dict[tuple[str, str], Any] = {}
    for result in query.get("gauges", ()):
        value = _value(result)
        if value is None or value.value is None:
            continue
        key = (result.key.metric.namespace, result.key.metric.name)
        if key in stamps and stamps[key] is not None and value.timestamp is not None \
                and value.timestamp < stamps[key]:
            continue
        stamps[key] = value.timestamp
        gauges.setdefault(key[0], {})[key[1]] = int(value.value)
    return counters, distributions, gauges


def merge_counters(into: Counters, more: Counters) -> None:
    """Add ``more``'s counters to ``into`` (in place)."""
    for ns, names in more.items():
        target = into.setdefault(ns, {})
        for name, value in names.items():
            target[name] = target.get(name, 0) + value


def merge_distributions(into: Distributions, more: Distributions) -> None:
    """Merge ``more``'s distributions into ``into`` (in place)."""
    for ns, names in more.items():
        target = into.setdefault(ns, {})
        for name, d in names.items():
            have = target.get(name)
            if have is None:
                target[name] = dict(d)
            else:
                have["count"] += d["count"]
                have["sum"] += d["sum"]
                have["min"] = min(have["min"], d["min"])
                have["max"] = max(have["max"], d["max"])
