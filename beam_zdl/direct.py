"""Direct mode: a splittable DoFn that reads exact Kafka offset ranges.

Each input element is a :class:`PartitionRange` — one topic-partition and a
half-open offset range ``[start, stop)`` planned (and recorded) before the run.
The DoFn reads exactly the records of that range, no more and no fewer.

Initial Restriction
    ``OffsetRange(start, stop)`` of the element. An empty range completes at once.

Splitting
    A range of more than ``2 * MIN_SPLIT_RECORDS`` offsets is cut into at most
    ``SPLITS_PER_RANGE`` chunks (:func:`split_range`). ``ReadFromKafka`` emits
    the chunks as elements and reshuffles them, so a runner hands them to all
    its workers; the initial split of a restriction makes the same cut. Every
    chunk costs a new assignment and a prefetch that overruns its end, so
    chunks are large (``MIN_SPLIT_RECORDS`` = 500k by default; both knobs can
    be set for tuning with ``$BEAM_ZDL_MIN_SPLIT_RECORDS`` and
    ``$BEAM_ZDL_SPLITS_PER_RANGE``). The tracker
    (Beam's ``OffsetRestrictionTracker``) also supports dynamic splits by the
    runner.

Checkpoint and Resume
    A range is bounded and never self-checkpoints; a runner's split leaves a
    residual ``[split, stop)`` that another bundle reads by seeking there.

Gaps
    Offsets may skip (compacted topics, transaction markers, aborted records).
    Only offsets of real records are claimed; once the consumer's position
    reaches ``stop`` the restriction is finished by claiming ``stop`` itself,
    so a range whose last offsets are markers still completes.

Claiming
    Each poll is claimed at once by claiming its last offset (which claims
    every offset below it) before any of its records is emitted. When that
    claim fails, the runner split the range after our last claim: the records
    below the new end are still ours and are emitted (claims may not go back
    down, so they are not claimed one by one), and reading stops there.
    A poll that runs past the range's end is claimed record by record.

Data loss
    A range starting below the partition's log start offset (retention deleted
    it) comes back from ``consume`` as an out-of-range error (the consumer runs
    with ``auto.offset.reset=error``); the reader then raises
    :class:`~beam_zdl.errors.DataLossError` naming the topic, partition and
    missing offsets. With ``fail_on_data_loss=False`` the gap is skipped,
    counted in the ``beam_zdl/data_loss_records`` counter and logged. Belt and
    braces: whenever a record comes above the offset asked for, the gap is
    compared with the partition's log start (from the fetch response,
    :func:`~beam_zdl.kafka.check_gap`), so no consumer setting can turn a
    retention gap into a silent skip; a gap above the log start (markers,
    compaction) is fine.

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
import operator
import os
from dataclasses import dataclass
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.windowed_value import WindowedValue

import beam_zdl.compat as compat
import beam_zdl.metrics as metrics
import beam_zdl.records as records
from beam_zdl.errors import DataLossError, ZdlError
from beam_zdl.kafka import (BOUNDED_READER_CONFIG, KafkaSettings, check_gap,
                            is_out_of_range, lost_offsets)
from beam_zdl.ranges import PartitionRange

__all__ = ["ReadSettings", "OffsetRangeProvider", "ReadOffsetRangesFn",
           "MIN_SPLIT_RECORDS", "SPLITS_PER_RANGE", "split_range"]

_LOGGER = logging.getLogger(__name__)

_POLL_TIMEOUT_S = 1.0
# How long a range may see no progress before the read fails, naming it.
_STALL_TIMEOUT_S = 120.0
# Its consumer settings: beam_zdl.kafka.BOUNDED_READER_CONFIG (why each, measured, there).
_READER_CONFIG = BOUNDED_READER_CONFIG
MIN_SPLIT_RECORDS = int(os.environ.get("BEAM_ZDL_MIN_SPLIT_RECORDS", 500_000))
SPLITS_PER_RANGE = int(os.environ.get("BEAM_ZDL_SPLITS_PER_RANGE", 4))


@dataclass(frozen=True)
class ReadSettings(KafkaSettings):
    """What a reading worker needs: Kafka's settings and how much one poll takes."""
    poll_batch: int = 2_000  # records per consume(): larger polls only held more memory


def _split_offsets(restriction: OffsetRange) -> Iterator[OffsetRange]:
    size = restriction.size()
    if size <= 2 * MIN_SPLIT_RECORDS:
        yield restriction
        return
    chunk = max(MIN_SPLIT_RECORDS, -(-size // SPLITS_PER_RANGE))
    yield from restriction.split(chunk, MIN_SPLIT_RECORDS // 2)


def split_range(rng: PartitionRange) -> list[PartitionRange]:
    """``rng`` in the chunks of the initial split (see Splitting), as PartitionRanges.

    Reading chunks as separate elements lets a runner hand them to different
    workers; the SDF does not split a chunk further.
    """
    return [PartitionRange(rng.topic, rng.partition, r.start, r.stop)
            for r in _split_offsets(OffsetRange(rng.start, rng.stop))]


class OffsetRangeProvider(RestrictionProvider):
    """Restrictions are ``OffsetRange``s of a PartitionRange's offsets."""

    def initial_restriction(self, element: PartitionRange) -> OffsetRange:
        return OffsetRange(element.start, element.stop)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def split(self, element: PartitionRange, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield from _split_offsets(restriction)

    def restriction_size(self, element: PartitionRange, restriction: OffsetRange) -> int:
        size: int = restriction.size()
        return size


class Poll(list[WindowedValue]):
    """The records of one poll, as WindowedValues: what the SDF emits (see UnbatchFn)."""


class _PollCoder(beam.coders.Coder):
    """Pickles a Poll (it normally never leaves its fused stage); sizes it cheaply.

    The runner samples element sizes; the default coder would pickle a whole poll
    to learn its size.
    """

    def encode(self, value: Poll) -> bytes:
        import pickle
        return pickle.dumps(list(value), protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> Poll:
        import pickle
        return Poll(pickle.loads(encoded))

    def estimate_size(self, value: Poll) -> int:
        if not value:
            return 0
        first = value[0].value
        return len(value) * (64 + len(first.value or b"") + len(first.key or b""))

    def is_deterministic(self) -> bool:
        return False


beam.coders.registry.register_coder(Poll, _PollCoder)


class UnbatchFn(beam.DoFn):
    """Emits the records of one poll (a list of WindowedValues) as elements.

    The SDF yields one list per poll so that the runner's per-output work for a
    splittable DoFn (watermark estimator, timestamp objects) is paid per poll;
    this plain DoFn, fused with it, returns the records themselves.
    """

    def process(self, polled: Poll) -> Poll:
        return polled


_TIMESTAMP_MS = operator.itemgetter(records.KafkaRecord._fields.index("timestamp_ms"))


class BatchPollFn(beam.DoFn):
    """Emits the records of one poll as one element, a ``list`` of KafkaRecord
    (``ReadFromKafka(record_batches=True)``), instead of one element per record.

    Beam's per-element cost downstream (~5 us) is then paid per poll, not per record.
    A poll holds records of one topic-partition in offset order, and every record read
    is in exactly one poll, so the same holds for the batches. A batch carries its
    earliest record's timestamp and the poll's window.
    """

    def __init__(self) -> None:
        self._windowed: Any = None  # compat.windowed_value_maker(), made in setup

    def setup(self) -> None:
        self._windowed = compat.windowed_value_maker()

    def process(self, polled: Poll, window: Any = beam.DoFn.WindowParam) -> Iterator[Any]:
        batch = [wv.value for wv in polled]
        if batch:
            yield self._windowed(batch, min(map(_TIMESTAMP_MS, batch)) * 1000, (window,))


class ReadOffsetRangesFn(beam.DoFn):
    """Reads exactly the offsets of each PartitionRange as KafkaRecords."""

    def __init__(self, settings: ReadSettings) -> None:
        self._settings = settings
        self._consumer: Any = None
        self._metrics = metrics.ReadMetrics()

    def display_data(self) -> dict[str, Any]:
        return self._settings.display_data()

    def setup(self) -> None:
        self._consumer = self._settings.consumer(_READER_CONFIG)

    def finish_bundle(self) -> None:
        # A range leaves its partition assigned: the next range's assign replaces it (one
        # librdkafka op instead of an unassign and an assign: ~0.25 ms a range, a third
        # of a small range's cost). Once the bundle is done, nothing stays assigned, so an
        # idle consumer fetches nothing between batches.
        if self._consumer is not None:
            self._consumer.unassign()

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def process(
        self,
        element: PartitionRange,
        window: Any = beam.DoFn.WindowParam,
        # Beam passes a view of the OffsetRestrictionTracker, not the tracker itself.
        tracker: Any = beam.DoFn.RestrictionParam(OffsetRangeProvider()),
    ) -> Iterator[Poll]:
        from confluent_kafka import KafkaException, TopicPartition
        import time

        rng = tracker.current_restriction()
        if rng.start >= rng.stop:
            return
        topic, partition = element.topic, element.partition
        consumer = self._consumer
        # No up-front watermark query: it queues behind the consumer's last fetch, which
        # long-polls at a log end (up to fetch.wait.max.ms per range). A start below the
        # log start comes back from consume() as an out-of-range error, handled below.
        start = rng.start
        consumer.assign([TopicPartition(topic, partition, start)])
        lag = self._metrics.lag(topic, partition)
        tpart = TopicPartition(topic, partition)
        stop = rng.stop
        next_offset = start
        claimed = start - 1  # every offset up to here is ours (claimed)
        attempted = claimed  # the highest offset a claim was tried for
        windows = (window,)  # the input's window: ranges come from Create, the global window
        windowed, append_windowed = compat.windowed_value_maker(), records.append_windowed
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
                # Claim the whole poll at once: claiming its last offset claims every offset
                # below it, so a split can only fall after this poll's records. If the claim
                # fails (split meanwhile) each record is claimed on its own below.
                tail = messages[-1]
                if tail.error() is None:
                    tail_offset = tail.offset()
                    if claimed < tail_offset < stop:
                        attempted = tail_offset
                        if tracker.try_claim(tail_offset):
                            claimed = tail_offset
                        else:
                            # A split fell after our last claim, inside this poll. Offsets
                            # below the new end are still ours (claims must not go back
                            # down, so they are emitted unclaimed); nothing from there on.
                            stop = tracker.current_restriction().stop
                            claimed = stop - 1
                # First the offsets: how many of the poll's messages are ours (a prefix),
                # then their records, built in one loop (records.append_windowed).
                count = 0
                split_off = False
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if not is_out_of_range(err):
                            raise KafkaException(err)
                        low, high = consumer.get_watermark_offsets(
                            TopicPartition(topic, partition), timeout=30, cached=False)
                        if low <= next_offset:
                            raise DataLossError(
                                f"{topic}[{partition}] offset {next_offset} is out of range "
                                f"but the log holds [{low}, {high}): the partition was "
                                f"truncated below the planned range [{rng.start}, {stop})")
                        next_offset = self._on_missing(
                            topic, partition, next_offset, min(low, stop))
                        if next_offset >= stop:
                            break
                        consumer.assign([TopicPartition(topic, partition, next_offset)])
                        break
                    offset = msg.offset()
                    if offset > next_offset:  # markers, compaction, or lost records
                        self._metrics.lost(check_gap(consumer, topic, partition, next_offset,
                                                     min(offset, stop),
                                                     self._settings.fail_on_data_loss))
                    if offset > claimed:
                        if offset >= stop:
                            next_offset = stop
                            break
                        attempted = offset
                        if not tracker.try_claim(offset):
                            split_off = True  # the residual belongs to another bundle
                            break
                        claimed = offset
                    next_offset = offset + 1
                    count += 1
                nbytes = 0
                if count:
                    polled = Poll()
                    # In the input's window, timestamp in micros (compat.windowed_value_maker).
                    nbytes = append_windowed(
                        polled, messages if count == len(messages) else messages[:count],
                        topic, partition, windows, windowed)
                    yield polled
                self._metrics.read(count, nbytes)
                if split_off:
                    return
                # The high watermark of the last fetch response: local, no broker round trip.
                high = consumer.get_watermark_offsets(tpart, cached=True)[1]
                if high >= 0:
                    lag.set(max(0, high - next_offset))
            # Claiming stop finishes a range whose last offsets held no records.
            if attempted < stop:
                tracker.try_claim(stop)
        except BaseException:
            consumer.unassign()  # a failed or abandoned range fetches no further
            raise

    def _on_missing(self, topic: str, partition: int, first_missing: int,
                    resume_at: int) -> int:
        """Report offsets [first_missing, resume_at) as lost; return where to resume."""
        self._metrics.lost(lost_offsets(topic, partition, first_missing, resume_at,
                                        self._settings.fail_on_data_loss))
        return resume_at
