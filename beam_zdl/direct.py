"""Direct mode: a splittable DoFn that reads exact Kafka offset ranges.

A batch's plan is a list of :class:`PartitionRange` — one topic-partition and a
half-open offset range ``[start, stop)`` planned (and recorded) before the run.
The DoFn reads exactly the records of those ranges, no more and no fewer.

Chunks
    A range of more than ``2 * MIN_SPLIT_RECORDS`` offsets is cut into at most
    ``SPLITS_PER_RANGE`` chunks (:func:`split_range`), so a runner can hand
    them to several workers. Every chunk costs a new assignment and a prefetch
    that overruns its end, so chunks are large (``MIN_SPLIT_RECORDS`` = 500k by
    default; both knobs can be set for tuning with
    ``$BEAM_ZDL_MIN_SPLIT_RECORDS`` and ``$BEAM_ZDL_SPLITS_PER_RANGE``).

Groups
    The DoFn's element is a :class:`RangeGroup`. A chunk of
    ``GROUP_BELOW_RECORDS`` offsets or more is a group of its own; smaller ones
    are packed into groups of up to ``GROUP_RECORDS`` offsets
    (:func:`group_chunks`). A group's partitions are assigned at once, so one
    fetch request serves them all: a batch of 256 small ranges costs a few
    fetch round trips, not 256 assignments each waiting for its first fetch.
    ``ReadFromKafka`` emits the groups as elements and reshuffles them, so a
    runner hands them to all its workers.

Initial Restriction
    A tuple of ``OffsetRange``, one per chunk of the group
    (:class:`~beam_zdl.trackers.RangeGroupTracker`). The initial split of a
    one-chunk group makes the same cut as :func:`split_range`; a runner may
    split any group dynamically, each chunk at its own split point.

Checkpoint and Resume
    A range is bounded and never self-checkpoints; a runner's split leaves a
    residual group of the same chunks from their split points, which another
    bundle reads by assigning them there.

Gaps
    Offsets may skip (compacted topics, transaction markers, aborted records).
    Only offsets of real records are claimed; once the consumer's position
    reaches a chunk's ``stop`` the chunk is finished by claiming ``stop``
    itself, so a chunk whose last offsets are markers still completes.

Claiming
    A poll's records come in runs, one per partition. Each run is claimed at
    once by claiming its last offset (which claims every offset of its chunk
    below it) before any of its records is emitted. When that claim fails, the
    runner split the group after our last claim: the records below the chunk's
    new end are still ours and are emitted (claims may not go back down, so
    they are not claimed one by one), and that chunk stops there. A run that
    goes past its chunk's end is claimed record by record. A finished chunk's
    partition is unassigned, so it fetches no further.

Data loss
    A chunk starting below the partition's log start offset (retention deleted
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
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Tuple

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.windowed_value import WindowedValue

import beam_zdl.compat as compat
import beam_zdl.metrics as metrics
import beam_zdl.records as records
from beam_zdl.errors import DataLossError, ZdlError
from beam_zdl.kafka import (BOUNDED_READER_CONFIG, KafkaSettings, check_gap,
                            is_out_of_range, lost_offsets)
from beam_zdl.ranges import PartitionRange
from beam_zdl.trackers import RangeGroupTracker, Spans

__all__ = ["ReadSettings", "RangeGroup", "RangeGroupProvider", "ReadOffsetRangesFn",
           "MIN_SPLIT_RECORDS", "SPLITS_PER_RANGE", "GROUP_BELOW_RECORDS", "GROUP_RECORDS",
           "split_range", "group_chunks"]

_LOGGER = logging.getLogger(__name__)

_POLL_TIMEOUT_S = 1.0
# How long a range may see no progress before the read fails, naming it.
_STALL_TIMEOUT_S = 120.0
# Its consumer settings: beam_zdl.kafka.BOUNDED_READER_CONFIG (why each, measured, there).
_READER_CONFIG = BOUNDED_READER_CONFIG
MIN_SPLIT_RECORDS = int(os.environ.get("BEAM_ZDL_MIN_SPLIT_RECORDS", 500_000))
SPLITS_PER_RANGE = int(os.environ.get("BEAM_ZDL_SPLITS_PER_RANGE", 4))
# Chunks smaller than this are read in groups of up to GROUP_RECORDS offsets (see Groups).
GROUP_BELOW_RECORDS = int(os.environ.get("BEAM_ZDL_GROUP_BELOW_RECORDS", 50_000))
GROUP_RECORDS = int(os.environ.get("BEAM_ZDL_GROUP_RECORDS", 200_000))


@dataclass(frozen=True)
class ReadSettings(KafkaSettings):
    """What a reading worker needs: Kafka's settings and how much one poll takes."""
    poll_batch: int = 2_000  # records per consume(): larger polls only held more memory
    # Emit each run of a poll as one List[KafkaRecord] (--record_batches), not a Poll.
    record_batches: bool = False


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


class RangeGroup(NamedTuple):
    """Chunks read together under one consumer assignment (see Groups): the SDF's element."""
    ranges: Tuple[PartitionRange, ...]


def group_chunks(chunks: list[PartitionRange], workers: int = 1) -> list[RangeGroup]:
    """``chunks`` as the reader's elements (see Groups).

    A chunk of ``GROUP_BELOW_RECORDS`` offsets or more is a group of its own. Smaller
    ones are shared out into as few groups as hold ``GROUP_RECORDS`` offsets each, but
    at least ``workers`` (as many as there are small chunks at most) so that every
    worker reads a share; each goes to the group with the fewest offsets so far.
    """
    small = [c for c in chunks if c.stop - c.start < GROUP_BELOW_RECORDS]
    groups = [RangeGroup((c,)) for c in chunks if c.stop - c.start >= GROUP_BELOW_RECORDS]
    if not small:
        return groups
    total = sum(c.stop - c.start for c in small)
    count = min(len(small), max(workers, -(-total // GROUP_RECORDS)))
    packed: list[list[PartitionRange]] = [[] for _ in range(count)]
    sizes = [0] * count
    for chunk in sorted(small, key=lambda c: c.start - c.stop):  # largest first
        i = sizes.index(min(sizes))
        packed[i].append(chunk)
        sizes[i] += chunk.stop - chunk.start
    return groups + [RangeGroup(tuple(g)) for g in packed]


class RangeGroupProvider(RestrictionProvider):
    """Restrictions are Spans: an ``OffsetRange`` per chunk of a RangeGroup."""

    def initial_restriction(self, element: RangeGroup) -> Spans:
        return tuple(OffsetRange(r.start, r.stop) for r in element.ranges)

    def create_tracker(self, restriction: Spans) -> RangeGroupTracker:
        return RangeGroupTracker(restriction)

    def split(self, element: RangeGroup, restriction: Spans) -> Iterator[Spans]:
        if len(restriction) == 1:
            for part in _split_offsets(restriction[0]):
                yield (part,)
        else:  # groups hold small chunks only
            yield restriction

    def restriction_size(self, element: RangeGroup, restriction: Spans) -> int:
        return sum(span.size() for span in restriction)


class Poll(list[WindowedValue]):
    """The records of one run of a poll, as WindowedValues: what the SDF emits (see
    UnbatchFn). A Poll (and, with ``record_batches``, a batch) holds records of one
    topic-partition, offsets ascending; every record read is in exactly one."""


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


class _Range:
    """One chunk of a group while it is read: where it stands, what is claimed."""
    __slots__ = ("index", "topic", "partition", "start", "stop", "next_offset", "claimed",
                 "attempted", "lag")

    def __init__(self, index: int, rng: PartitionRange, span: OffsetRange, lag: Any) -> None:
        self.index, self.topic, self.partition = index, rng.topic, rng.partition
        self.start, self.stop = span.start, span.stop
        self.next_offset = span.start
        self.claimed = span.start - 1  # every offset up to here is ours (claimed)
        self.attempted = self.claimed  # the highest offset a claim was tried for
        self.lag = lag

    def where(self) -> str:
        return f"{self.topic}[{self.partition}] offsets [{self.next_offset}, {self.stop})"


class ReadOffsetRangesFn(beam.DoFn):
    """Reads exactly the offsets of each RangeGroup's chunks as KafkaRecords."""

    def __init__(self, settings: ReadSettings) -> None:
        self._settings = settings
        self._consumer: Any = None
        self._metrics = metrics.ReadMetrics()
        # Partitions of chunks finished in this poll, unassigned together after it.
        self._finished: list[Any] = []

    def display_data(self) -> dict[str, Any]:
        return self._settings.display_data()

    def setup(self) -> None:
        self._consumer = self._settings.consumer(_READER_CONFIG)

    def finish_bundle(self) -> None:
        # A group leaves its last partition assigned: the next group's assign replaces it
        # (one librdkafka op instead of an unassign and an assign: ~0.25 ms a group, a third
        # of a small chunk's cost). Once the bundle is done, nothing stays assigned, so an
        # idle consumer fetches nothing between batches.
        if self._consumer is not None:
            self._consumer.unassign()

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def process(
        self,
        element: RangeGroup,
        window: Any = beam.DoFn.WindowParam,
        # Beam passes a view of the RangeGroupTracker, not the tracker itself.
        tracker: Any = beam.DoFn.RestrictionParam(RangeGroupProvider()),
    ) -> Iterator[Poll]:
        from confluent_kafka import TopicPartition

        live: dict[tuple[str, int], _Range] = {}
        for index, (rng, span) in enumerate(zip(element.ranges, tracker.current_restriction())):
            if span.start < span.stop:
                live[rng.topic, rng.partition] = _Range(
                    index, rng, span, self._metrics.lag(rng.topic, rng.partition))
        if not live:
            return
        consumer = self._consumer
        # No up-front watermark query: it queues behind the consumer's last fetch, which
        # long-polls at a log end (up to fetch.wait.max.ms per range). A start below the
        # log start comes back from consume() as an out-of-range error, handled in _take.
        consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in live.values()])
        one_topic = len({r.topic for r in live.values()}) == 1
        windows = (window,)  # the input's window: ranges come from Create, the global window
        windowed = compat.windowed_value_maker()
        batches = self._settings.record_batches
        last_progress = time.monotonic()
        try:
            while live:
                wanted = sum(r.stop - r.next_offset for r in live.values())
                # Ask for no more than the chunks hold: consume() waits for a full batch.
                messages = consumer.consume(min(self._settings.poll_batch, wanted),
                                            _POLL_TIMEOUT_S)
                if not messages:
                    self._idle(live, tracker, last_progress)
                    self._unassign_finished(live)
                    continue
                last_progress = time.monotonic()
                for run in _runs(messages, one_topic):
                    first = run[0]
                    state = live.get((first.topic(), first.partition()))
                    if state is None:  # a finished chunk's prefetch past its stop
                        _raise_errors(run)
                        continue
                    count, split, done = self._take(run, state, tracker, live)
                    nbytes = 0
                    ours = run if count == len(run) else run[:count]
                    if count and batches:
                        # One element: the run's records, at the earliest one's timestamp.
                        batch, nbytes, earliest = records.batch_of(ours, state.topic,
                                                                   state.partition)
                        yield windowed(batch, earliest * 1000, windows)
                    elif count:
                        polled = Poll()
                        # In the input's window, timestamp in micros (compat.windowed_value_maker).
                        nbytes = records.append_windowed(polled, ours, state.topic,
                                                         state.partition, windows, windowed)
                        yield polled
                    self._metrics.read(count, nbytes)
                    # The high watermark of the last fetch response: local, no round trip.
                    high = consumer.get_watermark_offsets(
                        TopicPartition(state.topic, state.partition), cached=True)[1]
                    if high >= 0:
                        state.lag.set(max(0, high - state.next_offset))
                    if split:  # every chunk's stop may have moved
                        self._finish_read(live, tracker)
                    elif done:
                        self._finish(state, tracker, live)
                self._unassign_finished(live)
        except BaseException:
            self._finished.clear()
            consumer.unassign()  # a failed or abandoned group fetches no further
            raise

    def _take(self, run: list[Any], state: _Range, tracker: Any,
              live: dict[tuple[str, int], _Range]) -> tuple[int, bool, bool]:
        """Claim the records of ``run`` (consecutive messages of ``state``'s partition).

        Returns how many of them (a prefix) are ours to emit, whether a runner's split
        took the rest, and whether the chunk is read to its stop.
        """
        from confluent_kafka import KafkaException, TopicPartition

        topic, partition, index = state.topic, state.partition, state.index
        split = False
        # Claim the whole run at once: claiming its last offset (or, when the run goes past
        # the chunk's stop, the chunk's last offset: all its records are in this run) claims
        # every offset below, so a split can only fall after this run's records. If the
        # claim fails (split meanwhile) each record is claimed on its own below.
        tail = run[-1]
        if tail.error() is None:
            tail_offset = min(tail.offset(), state.stop - 1)
            if state.claimed < tail_offset:
                state.attempted = tail_offset
                if tracker.try_claim((index, tail_offset)):
                    state.claimed = tail_offset
                else:
                    # A split fell after our last claim, inside this run. Offsets below the
                    # new stop are still ours (claims must not go back down, so they are
                    # emitted unclaimed); nothing from there on.
                    self._new_stops(live, tracker)
                    state.claimed = state.stop - 1
                    split = True
        next_offset, claimed, stop = state.next_offset, state.claimed, state.stop
        # The common run: every offset from next_offset on, no gap and no error, and
        # claimed (above): its records up to stop are ours without a look at each.
        head, last = run[0], len(run) - 1
        if (not split and head.error() is None and tail.error() is None
                and head.offset() == next_offset and tail.offset() - next_offset == last
                and claimed >= min(tail.offset(), stop - 1)
                and not any([msg.error() for msg in run])):
            count = min(last + 1, stop - next_offset)
            state.next_offset = next_offset + count
            return count, False, state.next_offset >= stop
        count = 0
        for msg in run:
            err = msg.error()
            if err is not None:
                if not is_out_of_range(err):
                    raise KafkaException(err)
                tp = TopicPartition(topic, partition)
                low, high = self._consumer.get_watermark_offsets(tp, timeout=30, cached=False)
                if low <= next_offset:
                    raise DataLossError(
                        f"{topic}[{partition}] offset {next_offset} is out of range but the "
                        f"log holds [{low}, {high}): the partition was truncated below the "
                        f"planned range [{state.start}, {stop})")
                self._metrics.lost(lost_offsets(topic, partition, next_offset, min(low, stop),
                                                self._settings.fail_on_data_loss))
                next_offset = min(low, stop)
                if next_offset < stop:  # go on from the log start
                    self._consumer.incremental_unassign([tp])
                    self._consumer.incremental_assign([TopicPartition(topic, partition,
                                                                      next_offset)])
                break
            offset = msg.offset()
            if offset > next_offset:  # markers, compaction, or lost records
                self._metrics.lost(check_gap(self._consumer, topic, partition, next_offset,
                                             min(offset, stop), self._settings.fail_on_data_loss))
            if offset > claimed:
                if offset >= stop:
                    next_offset = stop
                    break
                state.attempted = offset
                if not tracker.try_claim((index, offset)):
                    # A split: the residual belongs to another bundle, and offsets up to
                    # here had no records (a claim fails only at or above the new stop).
                    self._new_stops(live, tracker)
                    next_offset, split = state.stop, True
                    break
                claimed = offset
            next_offset = offset + 1
            count += 1
        state.next_offset, state.claimed = next_offset, claimed
        return count, split, next_offset >= stop

    def _idle(self, live: dict[tuple[str, int], _Range], tracker: Any,
              last_progress: float) -> None:
        """A poll came back empty: finish the chunks whose position passed their stop (only
        markers or removed records were left); fail when nothing moved for too long."""
        from confluent_kafka import TopicPartition
        states = list(live.values())
        positions = self._consumer.position(
            [TopicPartition(r.topic, r.partition) for r in states])
        for state, tp in zip(states, positions):
            if tp.offset >= state.stop:
                self._finish(state, tracker, live)
        if live and time.monotonic() - last_progress > _STALL_TIMEOUT_S:
            state = next(iter(live.values()))
            raise ZdlError(f"reading {state.where()} made no progress for "
                           f"{_STALL_TIMEOUT_S:.0f} s (consumer positions "
                           f"{[tp.offset for tp in positions]}); is the broker up and does it "
                           f"still hold them?")

    def _finish(self, state: _Range, tracker: Any,
                live: dict[tuple[str, int], _Range]) -> None:
        """``state``'s chunk is read: its tracker range done, its partition fetched no more."""
        from confluent_kafka import TopicPartition

        # Claiming stop finishes a range whose last offsets held no records.
        if state.attempted < state.stop:
            state.attempted = state.stop
            tracker.try_claim((state.index, state.stop))
        del live[state.topic, state.partition]
        self._finished.append(TopicPartition(state.topic, state.partition))

    def _unassign_finished(self, live: dict[tuple[str, int], _Range]) -> None:
        """Stop fetching for the chunks just finished, in one librdkafka op. When the group
        is done they stay: the next group's assign replaces them."""
        if self._finished and live:
            self._consumer.incremental_unassign(self._finished)
        self._finished.clear()

    def _finish_read(self, live: dict[tuple[str, int], _Range], tracker: Any) -> None:
        """A claim failed: a runner split the group. Finish every chunk read to its new
        stop; read on only what stays ours."""
        for state in list(live.values()):
            if state.next_offset >= state.stop:
                self._finish(state, tracker, live)

    @staticmethod
    def _new_stops(live: dict[tuple[str, int], _Range], tracker: Any) -> None:
        spans = tracker.current_restriction()
        for state in live.values():
            state.stop = spans[state.index].stop


def _raise_errors(run: list[Any]) -> None:
    """Raise the first error in ``run`` other than a finished chunk's out-of-range."""
    from confluent_kafka import KafkaException
    for msg in run:
        err = msg.error()
        if err is not None and not is_out_of_range(err):
            raise KafkaException(err)


def _runs(messages: list[Any], one_topic: bool) -> Iterator[list[Any]]:
    """``messages`` cut where the partition changes (a consume() returns each partition's
    fetched records together, so a poll holds few runs)."""
    if one_topic:
        parts = [msg.partition() for msg in messages]
        if parts.count(parts[0]) == len(parts):
            yield messages
            return
        keys: list[Any] = parts
    else:
        keys = [(msg.topic(), msg.partition()) for msg in messages]
    first = 0
    for i in range(1, len(keys)):
        if keys[i] != keys[i - 1]:
            yield messages[first:i]
            first = i
    yield messages[first:]
