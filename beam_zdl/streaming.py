"""Streaming mode: unbounded splittable DoFns over Kafka partitions.

``ReadFromKafka`` expands to this when ``--streaming`` is set::

    Impulse → topics → DiscoverPartitionsFn (one unbounded SDF per topic)
            → ReadPartitionFn (one unbounded SDF per topic-partition)

Initial Restriction
    A partition is read over ``[start, OPEN_END)``. ``start`` is the consumer
    group's committed offset (``--consumer_group``), else ``--starting_offsets``
    (``earliest``, ``latest``; ``committed`` falls back to earliest).
    Partitions that appear while the job runs start at their log start, so
    records written before they were discovered are read too.

Splitting
    The restriction is tracked by a :class:`~beam_zdl.trackers.GrowableOffsetRangeTracker`
    that accepts only checkpoint splits (``try_split(0)``), never a split at a
    fraction of the backlog: a partition is read by one bundle at a time, so the
    offset a finished bundle commits always ends a completed prefix of the
    partition. (With a runner's dynamic split, a residual's bundle could commit
    past a primary that had not finished, or that failed on lost data, and a
    fresh restart from the group's offset would skip the primary's records.)

Checkpoint and Resume
    When a poll returns nothing for ``poll_timeout_s``, or a call has read for
    ``max_call_s``, the DoFn self-checkpoints (``defer_remainder``): the residual
    ``[last + 1, OPEN_END)`` is resumed by the runner later (an idle partition
    after ``idle_resume_delay_s``), from its own checkpoint. On Flink these are
    longer (:data:`FLINK_TIMING`): Flink's Beam runner keeps some state of every
    self-checkpoint it resumed (apache/beam #27648), so its checkpoints grow with
    the number of self-checkpoints, and the 2.62 runner rounds resume delays down
    to whole seconds (0.2 s becomes 0: an idle partition would self-checkpoint
    several times a second). A DoFn instance keeps one assigned consumer per
    partition, so a resumed restriction that starts where the consumer stands
    reads on without a new fetch.

Progress and Size
    The range end is estimated from the partition's high watermark (cached
    for ``_END_CACHE_S``); ``restriction_size`` is the backlog in offsets, so
    runners that autoscale on backlog (Dataflow) see the lag.

Track Watermark
    A manual estimator set to the largest record timestamp read. When a
    partition is idle (caught up with its high watermark) it advances to
    ``now - idle_watermark_delay_s``, so windows downstream still close. A
    record older than that arriving later is late data.

Commit
    Each call registers a bundle finalizer that commits ``last claimed + 1``
    of its partition to the consumer group. Runners call it only after their
    checkpoint holds the bundle's output (Flink: a completed checkpoint;
    Prism: the bundle committed). A failed commit is retried, then logged; it
    never fails the bundle: the runner's checkpoint is the source of truth.

Partition discovery
    Partitions of a topic are numbered ``0 .. n-1`` and only ever grow, so
    discovery is itself an SDF over ``[next partition, OPEN_END)``: each round
    lists the topic, claims and emits the new partition numbers, then defers
    for ``--partition_discovery_interval_s``.

confluent_kafka is imported inside methods (see ``kafka.py``).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Optional, TypeVar

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

import beam_zdl.metrics as metrics
from beam_zdl.kafka import KafkaSettings, check_gap, is_out_of_range, lost_offsets
import beam_zdl.records as records
from beam_zdl.records import KafkaRecord, payload_bytes
from beam_zdl.trackers import OPEN_END, GrowableOffsetRangeTracker

__all__ = ["FLINK_TIMING", "StreamSettings", "StreamPartition", "PartitionOffsets",
           "DiscoverPartitionsFn", "ReadPartitionFn", "ReadStreaming"]

_LOGGER = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


def _unbounded_per_element() -> Callable[[_F], _F]:
    """``beam.DoFn.unbounded_per_element()``; Beam leaves it unannotated, and an
    untyped decorator would leave the ``process`` it marks unchecked."""
    decorator: Callable[[_F], _F] = beam.DoFn.unbounded_per_element()
    return decorator

_POLL_TIMEOUT_S = 0.25       # an empty poll this long → checkpoint
_MAX_CALL_S = 2.0            # a call reading this long → checkpoint (finalize, commit)
_RESUME_DELAY_S = 0.2        # when an idle partition is polled again
# On Flink (see Checkpoint and Resume): about 0.5 self-checkpoints/s on an idle
# partition instead of 4, 0.2/s on a busy one instead of 0.5. A checkpoint waits
# for running calls (--finish_bundle_before_checkpointing), so up to max_call_s.
FLINK_TIMING = {"poll_timeout_s": 1.0, "max_call_s": 5.0, "idle_resume_delay_s": 1.0}
_END_CACHE_S = 1.0           # how stale a high-watermark estimate may be
_MAX_CONSUMERS = 64          # assigned consumers kept per DoFn instance


@dataclass(frozen=True)
class StreamSettings(KafkaSettings):
    """What streaming workers need beyond Kafka's settings: where to start, how to pace."""
    starting_offsets: str = "committed"
    discovery_interval_s: float = 60.0
    idle_watermark_delay_s: float = 2.0
    poll_batch: int = 10_000
    poll_timeout_s: float = _POLL_TIMEOUT_S
    max_call_s: float = _MAX_CALL_S
    idle_resume_delay_s: float = _RESUME_DELAY_S


class StreamPartition(NamedTuple):
    """A partition to read; ``discovered_late`` when it appeared after the first listing."""
    topic: str
    partition: int
    discovered_late: bool = False


class PartitionOffsets(OffsetRange):
    """An OffsetRange that knows its partition, so its tracker can estimate the end."""

    def __init__(self, topic: str, partition: int, start: int, stop: int) -> None:
        # Named, not super(): mypy can tell Beam's unannotated __init__ is Beam's only so.
        OffsetRange.__init__(self, start, stop)
        self.topic = topic
        self.partition = partition

    if TYPE_CHECKING:
        # Beam's OffsetRange is unannotated; declared so this module's uses are checked.
        start: int
        stop: int

        def size(self) -> int: ...

    def split_at(self, split_pos: int) -> tuple["PartitionOffsets", "PartitionOffsets"]:
        return (PartitionOffsets(self.topic, self.partition, self.start, split_pos),
                PartitionOffsets(self.topic, self.partition, split_pos, self.stop))

    def __reduce__(self) -> tuple[type[PartitionOffsets], tuple[str, int, int, int]]:
        return PartitionOffsets, (self.topic, self.partition, self.start, self.stop)

    def __repr__(self) -> str:
        stop = "open" if self.stop == OPEN_END else self.stop
        return f"PartitionOffsets({self.topic}[{self.partition}], {self.start}, {stop})"


class _CheckpointOnlyTracker(GrowableOffsetRangeTracker):
    """Refuses splits at a fraction of the remainder; checkpoints (fraction 0) pass.

    See Splitting in the module doc: the committed offset must end a prefix.
    """

    def try_split(
            self, fraction_of_remainder: float,
    ) -> Optional[tuple[OffsetRange, OffsetRange]]:
        if fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)


def _retrying(fn: Callable[[], int], what: str, timeout_s: float = 60.0) -> int:
    """``fn()``, retried while Kafka answers with a transient error (e.g. a group
    coordinator still loading); the last error is raised after ``timeout_s``."""
    from beam_zdl.errors import KafkaUnavailableError
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            return fn()
        except KafkaUnavailableError as exc:
            if time.monotonic() + delay > deadline:
                raise
            _LOGGER.info("asking Kafka for %s failed (%s); retrying", what, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


# -- one shared client per worker process --------------------------------------

class _SharedClient:
    """A consumer for metadata and commits (never assigned), shared by a process's DoFns."""

    _lock = threading.Lock()
    _clients: dict[str, "_SharedClient"] = {}

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.consumer = settings.consumer()
        self.lock = threading.Lock()
        self._ends: dict[tuple[str, int], tuple[float, int]] = {}
        self._committed: dict[tuple[str, int], int] = {}

    @classmethod
    def of(cls, settings: StreamSettings) -> "_SharedClient":
        key = settings.key()
        with cls._lock:
            client = cls._clients.get(key)
            if client is None:
                if not cls._clients:
                    # Restriction providers use it too, and they have no teardown.
                    atexit.register(cls.close_all)
                client = cls._clients[key] = cls(settings)
            return client

    @classmethod
    def close_all(cls) -> None:
        """Close every shared consumer (at process exit): leave the brokers cleanly."""
        with cls._lock:
            clients, cls._clients = list(cls._clients.values()), {}
        for client in clients:
            with client.lock:
                client.consumer.close()

    def end_offset(self, topic: str, partition: int) -> int:
        """The partition's high watermark, at most ``_END_CACHE_S`` old."""
        now = time.monotonic()
        cached = self._ends.get((topic, partition))
        if cached and now - cached[0] < _END_CACHE_S:
            return cached[1]
        from beam_zdl.kafka import watermarks
        with self.lock:
            _, high = watermarks(self.consumer, [(topic, partition)],
                                 self.settings.bootstrap_servers)[(topic, partition)]
        self._ends[(topic, partition)] = (now, high)
        return high

    def start_offset(self, sp: StreamPartition) -> int:
        """Committed offset of the group, else the policy (late partitions: earliest)."""
        import beam_zdl.positions as positions
        from beam_zdl.kafka import committed_offsets
        tp = (sp.topic, sp.partition)
        servers = self.settings.bootstrap_servers
        policy = "earliest" if sp.discovered_late else self.settings.starting_offsets

        def ask() -> int:
            with self.lock:
                committed = committed_offsets(self.consumer, [tp], servers).get(tp)
                if committed is not None:
                    return committed
                return positions.resolve_text(
                    self.consumer, policy, [tp], flag="--starting_offsets",
                    bootstrap_servers=servers,
                    fail_on_data_loss=self.settings.fail_on_data_loss)[tp]
        return _retrying(ask, f"the start offset of {tp[0]}[{tp[1]}]")

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit next-offsets that move forward; log, never raise."""
        from beam_zdl.kafka import commit_offsets
        try:
            with self.lock:
                ahead = {tp: o for tp, o in offsets.items() if o > self._committed.get(tp, -1)}
                if not ahead:
                    return
                if commit_offsets(self.consumer, ahead):
                    self._committed.update(ahead)
                    _LOGGER.debug("committed %s", ahead)
        except Exception:  # a finalizer must not fail the pipeline
            _LOGGER.exception("committing offsets %s failed; the runner's checkpoint holds "
                              "the progress and the next commit carries it", offsets)

    def partition_count(self, topic: str) -> int:
        from beam_zdl.kafka import partitions_of
        with self.lock:
            return len(partitions_of(self.consumer, [topic], self.settings.bootstrap_servers))


# -- partition discovery -------------------------------------------------------

class _DiscoveryProvider(RestrictionProvider):
    """Restriction: partition numbers ``[next, OPEN_END)`` of one topic."""

    def initial_restriction(self, topic: str) -> OffsetRange:
        return OffsetRange(0, OPEN_END)

    def create_tracker(self, restriction: OffsetRange) -> GrowableOffsetRangeTracker:
        return GrowableOffsetRangeTracker(restriction, lambda: restriction.start)

    def restriction_size(self, topic: str, restriction: OffsetRange) -> int:
        return 1

    def truncate(self, topic: str, restriction: OffsetRange) -> None:
        return None  # on drain, stop discovering


class DiscoverPartitionsFn(beam.DoFn):
    """Emits each partition of a topic once, checking for new ones every interval."""

    def __init__(self, settings: StreamSettings) -> None:
        self._settings = settings

    @_unbounded_per_element()
    def process(
        self,
        topic: str,
        tracker: Any = beam.DoFn.RestrictionParam(_DiscoveryProvider()),
        watermark: Any = beam.DoFn.WatermarkEstimatorParam(
            ManualWatermarkEstimator.default_provider()),
    ) -> Iterator[TimestampedValue[StreamPartition]]:
        first_round = tracker.current_restriction().start == 0
        count = _SharedClient.of(self._settings).partition_count(topic)
        now = Timestamp.now()
        for partition in range(tracker.current_restriction().start, count):
            if not tracker.try_claim(partition):
                return
            if not first_round:
                _LOGGER.info("discovered new partition %s[%d]", topic, partition,
                             extra={"topic": topic, "partition": partition})
            yield TimestampedValue(StreamPartition(topic, partition, not first_round), now)
        if watermark.current_watermark() is None or watermark.current_watermark() < now:
            watermark.set_watermark(now)
        tracker.defer_remainder(Duration.of(self._settings.discovery_interval_s))


# -- reading -------------------------------------------------------------------

class _PartitionProvider(RestrictionProvider):
    """Restriction: offsets ``[start, OPEN_END)`` of a partition."""

    def __init__(self, settings: StreamSettings) -> None:
        self._settings = settings

    def initial_restriction(self, sp: StreamPartition) -> PartitionOffsets:
        start = _SharedClient.of(self._settings).start_offset(sp)
        _LOGGER.info("reading %s[%d] from offset %d", sp.topic, sp.partition, start,
                     extra={"topic": sp.topic, "partition": sp.partition})
        return PartitionOffsets(sp.topic, sp.partition, start, OPEN_END)

    def create_tracker(self, restriction: PartitionOffsets) -> GrowableOffsetRangeTracker:
        return _CheckpointOnlyTracker(restriction, self._estimator(restriction))

    def _estimator(self, r: PartitionOffsets) -> Callable[[], int]:
        settings = self._settings
        return lambda: _SharedClient.of(settings).end_offset(r.topic, r.partition)

    def split(self, sp: StreamPartition,
              restriction: PartitionOffsets) -> Iterator[PartitionOffsets]:
        yield restriction

    def restriction_size(self, sp: StreamPartition, restriction: PartitionOffsets) -> int:
        if restriction.stop != OPEN_END:
            return restriction.size()
        try:
            end = _SharedClient.of(self._settings).end_offset(sp.topic, sp.partition)
        except Exception:  # a size is an estimate; never fail on it
            return 0
        return max(0, end - restriction.start)

    def truncate(self, sp: StreamPartition, restriction: PartitionOffsets) -> None:
        return None  # on drain, stop reading: the group's commit is where a new job resumes


class ReadPartitionFn(beam.DoFn, _PartitionProvider):
    """Reads a partition from its restriction's start, forever, as KafkaRecords.

    It is its own restriction provider (the provider needs the settings).
    """

    def __init__(self, settings: StreamSettings) -> None:
        _PartitionProvider.__init__(self, settings)
        self._metrics = metrics.ReadMetrics()

    def setup(self) -> None:
        # tp → (consumer, offset it will deliver next), least recently used first
        self._consumers: dict[tuple[str, int], list[Any]] = {}

    def teardown(self) -> None:
        for consumer, _ in self._consumers.values():
            consumer.close()
        self._consumers = {}

    def _consumer_at(self, tp: tuple[str, int], offset: int) -> list[Any]:
        """An assigned consumer for ``tp`` positioned at ``offset`` (reused when it is there)."""
        from confluent_kafka import TopicPartition
        entry = self._consumers.pop(tp, None)
        if entry is None:
            if len(self._consumers) >= _MAX_CONSUMERS:
                old_tp = next(iter(self._consumers))
                self._consumers.pop(old_tp)[0].close()
            entry = [self._settings.consumer(), None]
        if entry[1] != offset:
            entry[0].assign([TopicPartition(tp[0], tp[1], offset)])
            entry[1] = offset
        self._consumers[tp] = entry
        return entry

    @_unbounded_per_element()
    def process(
        self,
        sp: StreamPartition,
        finalizer: Any = beam.DoFn.BundleFinalizerParam,
        tracker: Any = beam.DoFn.RestrictionParam(),
        watermark: Any = beam.DoFn.WatermarkEstimatorParam(
            ManualWatermarkEstimator.default_provider()),
    ) -> Iterator[TimestampedValue[KafkaRecord]]:
        from confluent_kafka import KafkaException, TopicPartition

        tp = (sp.topic, sp.partition)
        start = tracker.current_restriction().start
        client = _SharedClient.of(self._settings)
        entry = self._consumer_at(tp, start)
        consumer = entry[0]
        tpart = TopicPartition(*tp)
        lag = self._metrics.lag(*tp)
        deadline = time.monotonic() + self._settings.max_call_s
        last_claimed = None
        try:
            while True:
                messages = consumer.consume(self._settings.poll_batch,
                                            self._settings.poll_timeout_s)
                if not messages:
                    if entry[1] >= client.end_offset(*tp):
                        self._advance_idle(watermark)
                    tracker.defer_remainder(Duration.of(self._settings.idle_resume_delay_s))
                    return
                count = nbytes = 0
                newest = None
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if not is_out_of_range(err):
                            raise KafkaException(err)
                        entry[1] = None  # re-seek next call
                        first_missing = start if last_claimed is None else last_claimed + 1
                        resume = self._on_missing(client, tp, first_missing)
                        # Claim the skipped offsets (by claiming the last one) so the
                        # checkpoint's residual starts at resume, not at the gap again.
                        if resume > first_missing and tracker.try_claim(resume - 1):
                            last_claimed = resume - 1
                        self._consumer_at(tp, resume)
                        tracker.defer_remainder(Duration.of(0))
                        return
                    offset = msg.offset()
                    expected = start if last_claimed is None else last_claimed + 1
                    if offset > expected:  # markers, compaction, or lost records
                        self._metrics.lost(check_gap(consumer, tp[0], tp[1], expected, offset,
                                                     self._settings.fail_on_data_loss))
                    if not tracker.try_claim(offset):
                        entry[1] = None  # split off: the consumer is ahead; re-seek next call
                        return
                    last_claimed = offset
                    entry[1] = offset + 1
                    record = records.from_message(msg)
                    nbytes += payload_bytes(record)
                    count += 1
                    ts = Timestamp(micros=record.timestamp_ms * 1000)
                    newest = ts if newest is None or ts > newest else newest
                    yield TimestampedValue(record, ts)
                self._metrics.read(count, nbytes)
                # The high watermark of the last fetch response: local, no broker round trip.
                high = consumer.get_watermark_offsets(tpart, cached=True)[1]
                if high >= 0 and last_claimed is not None:
                    lag.set(max(0, high - last_claimed - 1))
                if newest is not None:
                    current = watermark.current_watermark()
                    if current is None or newest > current:
                        watermark.set_watermark(newest)
                if time.monotonic() >= deadline:
                    tracker.defer_remainder(Duration.of(0))
                    return
        finally:
            # Registered even when nothing was claimed: Prism finalizes every bundle
            # of a stage that requires finalization, and the SDK refuses to finalize
            # a bundle that registered nothing ("not in a finalizable state").
            offsets = {} if last_claimed is None else {tp: last_claimed + 1}
            finalizer.register(lambda: client.commit(offsets) if offsets else None)

    def _advance_idle(self, watermark: Any) -> None:
        """Caught up: nothing older than now - delay is expected any more."""
        idle = Timestamp.now() - Duration.of(self._settings.idle_watermark_delay_s)
        current = watermark.current_watermark()
        if current is None or idle > current:
            watermark.set_watermark(idle)

    def _on_missing(self, client: _SharedClient, tp: tuple[str, int], first_missing: int) -> int:
        """Offsets from ``first_missing`` are gone; fail or (opted out) skip to the log start."""
        from beam_zdl.kafka import watermarks
        with client.lock:
            low, _ = watermarks(client.consumer, [tp], self._settings.bootstrap_servers)[tp]
        if low <= first_missing:
            return first_missing
        self._metrics.lost(lost_offsets(tp[0], tp[1], first_missing, low,
                                        self._settings.fail_on_data_loss))
        return low


class ReadStreaming(beam.PTransform[beam.pvalue.PBegin, beam.PCollection[KafkaRecord]]):
    """The unbounded read of ``topics`` (what ReadFromKafka expands to with --streaming)."""

    def __init__(self, topics: tuple[str, ...], settings: StreamSettings) -> None:
        super().__init__()
        self._topics = tuple(topics)
        self._settings = settings

    def display_data(self) -> dict[str, Any]:
        return {**self._settings.display_data(), "topics": ",".join(self._topics),
                "starting_offsets": self._settings.starting_offsets}

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[KafkaRecord]:
        topics = self._topics
        read: beam.PCollection[KafkaRecord] = (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "Topics" >> beam.FlatMap(lambda _: topics)
            | "Discover" >> beam.ParDo(DiscoverPartitionsFn(self._settings))
            | "Read" >> beam.ParDo(ReadPartitionFn(self._settings))
            .with_output_types(KafkaRecord))
        return read
