"""Direct mode: a splittable DoFn that reads exact Kafka offset ranges.

Each input element is a :class:`PartitionRange` — one topic-partition and a
half-open offset range ``[start, stop)`` planned (and recorded) before the run.
The DoFn reads exactly the records of that range, no more and no fewer.

Initial Restriction
    ``OffsetRange(start, stop)`` of the element. An empty range completes at once.

Splitting
    A range of more than ``2 * MIN_SPLIT_RECORDS`` offsets is split up front
    into at most ``SPLITS_PER_RANGE`` chunks so several workers can share one
    partition; the tracker (Beam's ``OffsetRestrictionTracker``) also supports
    dynamic splits by the runner.

Checkpoint and Resume
    A range is bounded and never self-checkpoints; a runner's split leaves a
    residual ``[split, stop)`` that another bundle reads by seeking there.

Gaps
    Offsets may skip (compacted topics, transaction markers, aborted records).
    Only offsets of real records are claimed; once the consumer's position
    reaches ``stop`` the restriction is finished by claiming ``stop`` itself,
    so a range whose last offsets are markers still completes.

Data loss
    A range starting below the partition's log start offset (retention deleted
    it) raises :class:`~beam_zdl.errors.DataLossError` naming the topic,
    partition and missing offsets. With ``fail_on_data_loss=False`` the gap is
    skipped, counted in the ``beam_zdl/data_loss_records`` counter and logged.

Progress and Size
    ``restriction_size`` is the number of offsets left; the tracker reports
    progress from its claims.

Timestamps and metrics
    Records carry their Kafka timestamp as the element timestamp. Counters
    ``records`` and ``bytes``, and a gauge ``lag/<topic>/<partition>``
    (end offset minus next offset) in namespace ``beam_zdl``.

Consumers are assigned (never subscribed: no group membership), created in
``setup`` and reused across the bundles a DoFn instance processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue

from beam_zdl.errors import DataLossError, ZdlError
from beam_zdl.records import KafkaHeader, KafkaRecord

__all__ = ["PartitionRange", "ReadSettings", "OffsetRangeProvider", "ReadOffsetRangesFn",
           "MIN_SPLIT_RECORDS", "SPLITS_PER_RANGE"]

_LOGGER = logging.getLogger(__name__)

_NAMESPACE = "beam_zdl"
_POLL_TIMEOUT_S = 1.0
# How long a range may see no progress before the read fails, naming it.
_STALL_TIMEOUT_S = 120.0
MIN_SPLIT_RECORDS = 50_000
SPLITS_PER_RANGE = 4


class PartitionRange(NamedTuple):
    """Offsets ``[start, stop)`` of one topic-partition: one batch's share of it."""
    topic: str
    partition: int
    start: int
    stop: int


@dataclass(frozen=True)
class ReadSettings:
    """What a reading worker needs: where Kafka is and how strict to be."""
    bootstrap_servers: str
    consumer_group: str
    consumer_config: dict = field(default_factory=dict)
    fail_on_data_loss: bool = True
    poll_batch: int = 10_000


class OffsetRangeProvider(RestrictionProvider):
    """Restrictions are ``OffsetRange``s of a PartitionRange's offsets."""

    def initial_restriction(self, element: PartitionRange) -> OffsetRange:
        return OffsetRange(element.start, element.stop)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def split(self, element: PartitionRange, restriction: OffsetRange):
        size = restriction.size()
        if size <= 2 * MIN_SPLIT_RECORDS:
            yield restriction
            return
        chunk = max(MIN_SPLIT_RECORDS, -(-size // SPLITS_PER_RANGE))
        yield from restriction.split(chunk, MIN_SPLIT_RECORDS // 2)

    def restriction_size(self, element: PartitionRange, restriction: OffsetRange) -> int:
        return restriction.size()


class ReadOffsetRangesFn(beam.DoFn):
    """Reads exactly the offsets of each PartitionRange as KafkaRecords."""

    def __init__(self, settings: ReadSettings) -> None:
        self._settings = settings
        self._consumer = None
        self._records = Metrics.counter(_NAMESPACE, "records")
        self._bytes = Metrics.counter(_NAMESPACE, "bytes")
        self._lost = Metrics.counter(_NAMESPACE, "data_loss_records")

    def setup(self) -> None:
        from beam_zdl.kafka import new_consumer
        s = self._settings
        self._consumer = new_consumer(s.bootstrap_servers, s.consumer_group, s.consumer_config)

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def process(
        self,
        element: PartitionRange,
        tracker: OffsetRestrictionTracker = beam.DoFn.RestrictionParam(OffsetRangeProvider()),
    ) -> Iterator[TimestampedValue]:
        from confluent_kafka import KafkaError, KafkaException, TopicPartition
        import time

        rng = tracker.current_restriction()
        if rng.start >= rng.stop:
            return
        topic, partition = element.topic, element.partition
        consumer = self._consumer
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=30, cached=False)
        start = rng.start
        if start < low:
            start = self._on_missing(tracker, topic, partition, start, min(low, rng.stop))
            if start >= rng.stop:
                return
        consumer.assign([TopicPartition(topic, partition, start)])
        lag = Metrics.gauge(_NAMESPACE, f"lag/{topic}/{partition}")
        stop = rng.stop
        next_offset = start
        last_progress = time.monotonic()
        try:
            while next_offset < stop:
                # Ask for no more than the range holds: consume() waits for a full batch.
                messages = consumer.consume(
                    min(self._settings.poll_batch, stop - next_offset), _POLL_TIMEOUT_S)
                if not messages:
                    position = consumer.position([TopicPartition(topic, partition)])[0].offset
                    if position >= stop:
                        break  # only markers or removed records were left
                    if time.monotonic() - last_progress > _STALL_TIMEOUT_S:
                        raise ZdlError(
                            f"reading {topic}[{partition}] offsets [{next_offset}, {stop}) made "
                            f"no progress for {_STALL_TIMEOUT_S:.0f} s (consumer position "
                            f"{position}); is the broker up and does it still hold them?")
                    continue
                last_progress = time.monotonic()
                nbytes = 0
                count = 0
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._OFFSET_OUT_OF_RANGE:
                            raise KafkaException(err)
                        low, _ = consumer.get_watermark_offsets(
                            TopicPartition(topic, partition), timeout=30, cached=False)
                        next_offset = self._on_missing(
                            tracker, topic, partition, next_offset, min(low, stop))
                        consumer.assign([TopicPartition(topic, partition, next_offset)])
                        break
                    offset = msg.offset()
                    if offset >= stop:
                        next_offset = stop
                        break
                    if not tracker.try_claim(offset):
                        # Split off: the residual belongs to another bundle.
                        return
                    next_offset = offset + 1
                    key = msg.key()
                    value = msg.value()
                    headers = msg.headers()
                    nbytes += (len(value) if value else 0) + (len(key) if key else 0)
                    count += 1
                    record = KafkaRecord(
                        topic, partition, offset, key, value, msg.timestamp()[1],
                        [KafkaHeader(k, v) for k, v in headers] if headers else [])
                    yield TimestampedValue(record, record.timestamp_ms / 1000.0)
                self._records.inc(count)
                self._bytes.inc(nbytes)
                lag.set(max(0, high - next_offset))
            # Claiming stop finishes a range whose last offsets held no records.
            tracker.try_claim(stop)
        finally:
            consumer.unassign()

    def _on_missing(self, tracker: OffsetRestrictionTracker, topic: str, partition: int,
                    first_missing: int, resume_at: int) -> int:
        """Report offsets [first_missing, resume_at) as lost; return where to resume."""
        what = (f"{topic}[{partition}] offsets [{first_missing}, {resume_at}) no longer exist "
                f"(the partition's log now starts at {resume_at}; retention or truncation "
                "removed them before they were read)")
        if self._settings.fail_on_data_loss:
            raise DataLossError(
                what + ". Nothing was skipped. To skip lost records instead, run with "
                "--fail_on_data_loss=false (they are then counted in the "
                "beam_zdl/data_loss_records metric).")
        _LOGGER.warning("DATA LOSS (skipped, --fail_on_data_loss=false): %s", what)
        self._lost.inc(resume_at - first_missing)
        return resume_at
