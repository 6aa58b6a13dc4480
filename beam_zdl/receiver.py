"""The reliable receiver of WAL mode: consume → WAL segment → seal → commit.

A :class:`Receiver` is a member of the consumer group (``--consumer_group``,
auto-commit off). It appends every record it receives to a
:class:`~beam_zdl.wal.WalWriter` and commits a partition's offset to Kafka
only after a sealed segment holds the record below it. It runs in a child
process of the micro-batch driver (``--zdl_mode=wal``,
:mod:`beam_zdl.receiver_process`) or alone (``beam-zdl receive``).

Commit protocol (:meth:`Receiver._seal_and_commit`)
    1. Seal the buffered records into one create-once segment; it is durable
       when ``seal`` returns.
    2. Commit ``last offset + 1`` of every partition in that segment still
       assigned here. A crash between 1 and 2 leaves a stale Kafka commit; the
       next start resumes after the WAL, not after Kafka (see Resume).

Resume
    On assignment each partition is sought to the highest of: one past the
    last offset in any sealed segment's footer in ``--wal_dir``; one past the
    last offset of the segments and ranges in the checkpoint's plans (they
    outlive segments that cleanup deleted); the group's committed offset.
    Only a partition with none of those starts at ``--starting_offsets``. So
    nothing sealed is ever read twice, whatever Kafka's commit says. The
    positions found are committed at once when they exceed the group's commit,
    repairing a commit lost to a crash between seal and commit.

Commits past gaps
    A partition's log can end in offsets that hold no record for this
    ``read_committed`` consumer (transaction markers, aborted records,
    compacted-away records). When nothing is buffered, the receiver commits
    the consumer's position once it passes the last sealed record, so the
    group's offsets reach the end offsets and lag monitoring reaches zero.

Draining (``--trigger=available_now``)
    A draining receiver stops only when every partition of ``--topics`` is
    sealed and committed up to the end offset seen at start — by itself or
    by any other member (a stand-alone ``beam-zdl receive``, a member that
    died and whose partitions come here when its session times out). While
    another member holds a partition it waits, logging who holds it; after
    ``--drain_timeout_s`` without progress it fails naming the partitions and
    the members.

Rebalance
    On revocation the receiver seals and commits what it holds before the
    partitions go; the next owner then resumes after that segment. When
    partitions are *lost* (session timeout: another member may own them
    already) the unsealed buffer is dropped, never sealed, so the WAL holds no
    record twice.

Backpressure
    Memory is bounded by ``--max_buffered_bytes``: segments seal at
    ``min(--wal_segment_bytes, max_buffered_bytes / 2)``, librdkafka's
    prefetch queue is capped at the other half (counting its per-record
    overhead; one fetch response at a sixteenth), and when sealing falls behind
    (slow or failing storage) the receiver pauses its partitions until the
    buffer is sealed. Batches that fall behind leave sealed segments on
    storage, not records in memory.

Writer epochs
    Segment names are ``seg-<epoch>-<seq>.wal``; every receiver run claims a
    fresh epoch create-once as ``_writers/<epoch>`` in the WAL directory, so
    receivers sharing a directory never write the same name.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

import beam_zdl.kafka as kafka
import beam_zdl.positions as positions_
from beam_zdl.chaos import crash_point
from beam_zdl.errors import (DataLossError, KafkaUnavailableError,
                             PartitionsUnavailableError, StorageError,
                             ZdlError)
from beam_zdl.config import ZdlConfig
from beam_zdl.monitoring import Heartbeat
from beam_zdl.v1 import checkpoint_pb2
import beam_zdl.wal as wal
from beam_zdl.wal import WalWriter

__all__ = ["Receiver", "ReceiverStats", "wal_resume_positions"]

_LOGGER = logging.getLogger(__name__)

_POLL_TIMEOUT_S = 0.2
_POLL_BATCH = 5_000
_PROGRESS_EVERY_S = 10.0
_SEAL_RETRY_S = 1.0
_SEAL_RETRY_FOR_S = 120.0
_POSITION_COMMIT_EVERY_S = 1.0
_DRAIN_CHECK_EVERY_S = 1.0
_DRAIN_REPORT_EVERY_S = 10.0
_HEALTH_CHECK_EVERY_S = 10.0  # an idle receiver asks the broker this often (at most)
_HEALTH_CHECK_TIMEOUT_S = 2.0

# crash_point per record only when a crash test armed one (it reads the environment).
_CRASH_ARMED = bool(os.environ.get("BEAM_ZDL_CRASH_AT"))

def wal_resume_positions(wal_dir: str, checkpoint_dir: str | None = None,
                         index: wal.SegmentIndex | None = None) -> dict[tuple[str, int], int]:
    """One past the last offset of each partition in the WAL and the checkpoint's plans.

    ``index`` caches the segments' refs (the receiver's own); None reads every footer.
    """
    out: dict[tuple[str, int], int] = {}

    def see(topic: str, partition: int, next_offset: int) -> None:
        if next_offset > out.get((topic, partition), -1):
            out[(topic, partition)] = next_offset

    for ref in wal.segment_refs(wal.list_segments(wal_dir), index):
        for span in ref.spans:
            see(span.topic, span.partition, span.last_offset + 1)
    if checkpoint_dir:
        from beam_zdl.coordinator import CheckpointCoordinator
        coord = CheckpointCoordinator(checkpoint_dir)
        for plan in coord.retained_plans():
            for rng in plan.ranges:
                see(rng.topic, rng.partition, rng.stop)
            for seg in plan.segments:
                for span in seg.spans:
                    see(span.topic, span.partition, span.last_offset + 1)
    return out


@dataclass
class ReceiverStats:
    """What a receiver did (read them while it runs; they only grow)."""
    records: int = 0
    segments: int = 0
    sealed_bytes: int = 0
    commits: int = 0
    failed_commits: int = 0
    pauses: int = 0
    rebalances: int = 0
    peak_buffered_bytes: int = 0
    lost_records: int = 0  # skipped with --fail_on_data_loss=false (gone before received)
    seal_seconds: float = 0.0  # summed over the segments sealed
    commit_seconds: float = 0.0  # summed over the commits after seals


class Receiver:
    """A reliable receiver: a consumer-group member that acks only what the WAL holds.

    Args:
        config: validated options; uses ``--wal_dir``, the ``--wal_segment_*``
            thresholds, ``--max_buffered_bytes``, ``--starting_offsets``,
            ``--fail_on_data_loss`` and the Kafka settings.
        checkpoint_dir: a checkpoint whose plans also count for resume positions
            (default ``--checkpoint_dir``).
        name: a label for logs and segment headers.
    """

    def __init__(self, config: ZdlConfig, *, checkpoint_dir: str | None = None,
                 name: str = "receiver") -> None:
        if not config.wal_dir:
            raise ZdlError("the receiver needs --wal_dir: where WAL segments are written")
        self.config = config
        self.wal_dir: str = config.wal_dir
        self.checkpoint_dir = (checkpoint_dir if checkpoint_dir is not None
                               else config.checkpoint_dir)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{name}"
        self.stats = ReceiverStats()
        self.epoch: int | None = None
        self._consumer: Any = None
        self._writer: WalWriter | None = None
        self._segments = wal.SegmentIndex()  # refs of what this receiver sealed and read
        self._assigned: set[tuple[str, int]] = set()
        self._next: dict[tuple[str, int], int] = {}  # next offset to append per partition
        self._paused = False
        self._failed = False
        self._closing = False  # consumer.close() is running its last rebalance callbacks
        self._last_warning = 0.0
        self._seal_failed = False
        self._last_seal_try = 0.0
        self._committed: dict[tuple[str, int], int] = {}  # what this receiver knows is committed
        self._last_position_commit = 0.0
        self._last_drain_check = 0.0
        self._last_drain_report = 0.0
        self._drain_deadline = 0.0
        self._waiting_for: tuple[tuple[tuple[str, int], int | None], ...] = ()
        self.assigned_ever: set[tuple[str, int]] = set()
        self.drained = False
        # When the loop last made progress (a poll that got records, a seal, an idle poll
        # the broker answered): /healthz (beam-zdl receive --metrics_port) reads it.
        self.heartbeat = Heartbeat()
        self._health_check_every_s = min(_HEALTH_CHECK_EVERY_S, config.health_timeout_s / 3)

    # --- the loop -------------------------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        """Bytes appended to the open segment, not yet sealed."""
        return self._writer.buffered_bytes if self._writer is not None else 0

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to append, per partition held now (a copy)."""
        return {tp: o for tp, o in dict(self._next).items() if tp in self._assigned}

    @property
    def assigned(self) -> frozenset[tuple[str, int]]:
        """The partitions this member holds now."""
        return frozenset(self._assigned)

    def run(self, stop_event: threading.Event, drain_to_end: bool = False,
            targets: dict[tuple[str, int], int] | None = None) -> ReceiverStats:
        """Receive until ``stop_event`` is set, or until drained; seal and commit what is
        buffered, leave the group, return stats.

        Args:
            stop_event: set it to stop (what is buffered is sealed and committed first).
            drain_to_end: stop once every partition of ``--topics`` is sealed and committed
                by the group up to the end offsets seen at start (see "Draining").
            targets: drain to these offsets instead of the end offsets seen at start.

        Raises:
            DataLossError: a partition's resume position is below its log start (unless
                ``--fail_on_data_loss=false``). PartitionsUnavailableError: draining, other
                members held partitions past ``--drain_timeout_s``. StorageError /
                ZdlError: storage stayed down through a rebalance, or Kafka reported a
                fatal error.
        """
        cfg = self.config
        kafka.check_brokers(cfg.bootstrap_servers, cfg.consumer_config,
                            cfg.kafka_connect_timeout_s)
        self.epoch = wal.claim_writer_epoch(self.wal_dir, self.owner)
        half = max(1, cfg.max_buffered_bytes // 2)
        self._writer = WalWriter(self.wal_dir, writer_id=self.owner, epoch=self.epoch,
                                 max_bytes=min(cfg.wal_segment_bytes, half),
                                 max_records=cfg.wal_segment_records,
                                 max_age_s=cfg.wal_segment_age_s)
        # librdkafka's prefetch queue takes the other half. Its real cost is about twice the
        # payload it counts for small records, and a fetch response is held until its last
        # record is freed, so fetches are small: an eighth of the half (4 MB at the default
        # budget) and a quarter of that per partition. Small fetches alone starved the
        # receiver: once a partition's queue passes queued.min.messages librdkafka postpones
        # its next fetch by fetch.queue.backoff.ms (1 s by default). Measured on 1M 100-byte
        # records, 4 partitions, default budget: 16 MB fetches with the default backoff
        # 8.6 s and 120-137 MB peak RSS; 4 MB fetches with a 5 ms backoff 5.7 s and 86-94 MB.
        fetch = max(1024, min(64 * 1024 * 1024, half // 8))
        extra = {"queued.max.messages.kbytes": max(1, min(64 * 1024, half // 2048)),
                 "fetch.max.bytes": fetch,
                 "message.max.bytes": min(1_000_000, fetch),  # librdkafka: <= fetch.max.bytes
                 "max.partition.fetch.bytes": max(1024, min(8 * 1024 * 1024, fetch // 4)),
                 "fetch.queue.backoff.ms": 5,
                 # librdkafka prefetches up to 100k records per partition by default, and
                 # small records cost far more than their bytes there: two polls' worth
                 # measured 45 MB less peak RSS on 1M 100-byte records (4 partitions).
                 "queued.min.messages": 2 * _POLL_BATCH,
                 **cfg.consumer_config}
        consumer = self._consumer = kafka.new_consumer(cfg.bootstrap_servers,
                                                        cfg.consumer_group, extra)
        _LOGGER.info("receiver %s: writer epoch %d on %s, group %s, topics %s", self.owner,
                     self.epoch, cfg.wal_dir, cfg.consumer_group, ",".join(cfg.topics))
        started = time.monotonic()
        last_report, last_records = started, 0
        try:
            if drain_to_end and targets is None:
                targets = kafka.end_offsets(consumer, cfg.topics, cfg.bootstrap_servers)
            consumer.subscribe(list(cfg.topics), on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_lost)
            while not stop_event.is_set():
                messages = consumer.consume(_POLL_BATCH, _POLL_TIMEOUT_S)
                if messages:
                    self._append(messages)
                    self.heartbeat.beat("records")
                elif self.heartbeat.age_s() >= self._health_check_every_s:
                    self._idle_check()
                self.stats.peak_buffered_bytes = max(self.stats.peak_buffered_bytes,
                                                     self._writer.buffered_bytes)
                if self._writer.should_seal() or (
                        self._seal_failed and time.monotonic() - self._last_seal_try
                        >= _SEAL_RETRY_S):
                    self._seal_and_commit(retry=False)
                self._backpressure()
                if not messages:
                    self._commit_positions()
                if targets is not None and self._drained(targets, bool(messages)):
                    self.drained = True
                    break
                now = time.monotonic()
                if now - last_report >= _PROGRESS_EVERY_S:
                    rate = (self.stats.records - last_records) / (now - last_report)
                    _LOGGER.info("receiver %s: %.0f records/s, %d records and %d segments "
                                 "sealed in all, %d bytes buffered%s", self.owner, rate,
                                 self.stats.records, self.stats.segments,
                                 self._writer.buffered_bytes, " (paused)" if self._paused else "")
                    last_report, last_records = now, self.stats.records
            self._seal_and_commit(retry=True)
        except BaseException:
            self._failed = True  # close() must not seal from on_revoke after a failure
            raise
        finally:
            self._closing = True
            try:
                consumer.close()
            finally:
                self._consumer = None
                self._closing = False
        _LOGGER.info("receiver %s stopped: %d records in %d segments (%d bytes) in %.1f s%s",
                     self.owner, self.stats.records, self.stats.segments,
                     self.stats.sealed_bytes, time.monotonic() - started,
                     f"; {self.stats.lost_records} records LOST (--fail_on_data_loss=false)"
                     if self.stats.lost_records else "")
        return self.stats

    def _append(self, messages: list[Any]) -> None:
        from confluent_kafka import KafkaException, TopicPartition
        assert self._writer is not None  # run() makes it before consuming
        assigned, next_offsets = self._assigned, self._next  # updated in place, never replaced
        for index, msg in enumerate(messages):
            err = msg.error()
            if err is not None:
                if kafka.is_out_of_range(err):
                    raise DataLossError(
                        f"{msg.topic()}[{msg.partition()}]: the receiver's position is no longer "
                        f"in the log ({err.str()}); retention removed records before they were "
                        "written to the WAL") from None
                if err.fatal():
                    raise KafkaException(err)
                now = time.monotonic()
                if now - self._last_warning > 5.0:
                    _LOGGER.warning("receiver %s: Kafka reports %s (retrying)", self.owner,
                                    err.str())
                    self._last_warning = now
                continue
            tp = (msg.topic(), msg.partition())
            offset = msg.offset()
            expected = next_offsets.get(tp, 0)
            if offset != expected:
                if tp not in assigned or offset < expected:
                    continue  # fetched before a revocation or a seek: not ours to write
                # A gap: markers or compaction, unless it reaches below the log start.
                self.stats.lost_records += kafka.check_gap(
                    self._consumer, tp[0], tp[1], expected, offset, self.config.fail_on_data_loss)
            elif tp not in assigned:
                continue
            if self._seal_failed:
                # The buffer could not be sealed: hand the rest back to Kafka (seek) rather
                # than hold it in memory; backpressure pauses the partitions next.
                rewind: dict[tuple[str, int], int] = {}
                for rest in messages[index:]:
                    key = (rest.topic(), rest.partition())
                    if rest.error() is None and key in self._assigned and key not in rewind:
                        rewind[key] = max(rest.offset(), self._next.get(key, 0))
                for (topic, partition), at in rewind.items():
                    self._consumer.seek(TopicPartition(topic, partition, at))
                return
            full = self._writer.append_message(msg)
            next_offsets[tp] = offset + 1
            if _CRASH_ARMED:
                crash_point("receiver_append")
            if full:
                self._seal_and_commit(retry=False)

    def _drained(self, targets: dict[tuple[str, int], int], got_messages: bool) -> bool:
        """True once every partition in ``targets`` is committed by the group up to its target.

        The receiver first drains what it holds itself (trusting the consumer's position
        past transaction markers and aborted records), seals it and commits. Commits
        follow seals, so a group commit at or past a target means every record below it
        is in a sealed segment, whichever member wrote it. Partitions short of their
        target are held by other members (alive, or killed and not yet timed out): wait,
        report who holds them, and fail after ``--drain_timeout_s``.
        """
        mine = [tp for tp in self._assigned if self._next.get(tp, 0) < targets.get(tp, 0)]
        if mine and not got_messages:
            self._advance_past_gaps(mine)
            mine = [tp for tp in mine if self._next.get(tp, 0) < targets.get(tp, 0)]
        now = time.monotonic()
        if mine or got_messages or now - self._last_drain_check < _DRAIN_CHECK_EVERY_S:
            return False
        self._last_drain_check = now
        assert self._writer is not None  # run() makes it before consuming
        if self._writer.buffered_records:
            self._seal_and_commit(retry=False)
        self._commit_positions(force=True)
        try:
            committed = kafka.committed_offsets(self._consumer, targets,
                                                self.config.bootstrap_servers)
        except KafkaUnavailableError as exc:
            # Not knowing is not done: ask again (until --drain_timeout_s).
            _LOGGER.warning("receiver %s: %s; asking again", self.owner, exc)
            committed = {}
        short = {tp: committed.get(tp) for tp, end in targets.items()
                 if end > 0 and ((c := committed.get(tp)) is None or c < end)}
        if not short:
            return True
        waiting_for = tuple(sorted(short.items()))
        if waiting_for != self._waiting_for:
            # The first wait, or another member made progress: the deadline counts from here.
            self._waiting_for = waiting_for
            self._drain_deadline = now + self.config.drain_timeout_s
        self._report_waiting(short, targets, now)
        return False

    def _report_waiting(self, short: dict[tuple[str, int], int | None],
                        targets: dict[tuple[str, int], int], now: float) -> None:
        """Log who holds the partitions a drain waits for; raise past the deadline."""
        if now < self._drain_deadline and now - self._last_drain_report < _DRAIN_REPORT_EVERY_S:
            return
        self._last_drain_report = now
        cfg = self.config
        holders = kafka.group_holders(cfg.bootstrap_servers, cfg.consumer_group,
                                      cfg.consumer_config)
        lines = []
        for (topic, partition), got in sorted(short.items()):
            held = holders.get((topic, partition), "no member yet (a rebalance is under way: "
                               "the group waits for members that have not rejoined, such as a "
                               "killed one, until their sessions time out)")
            lines.append(f"{topic}[{partition}] committed {got if got is not None else 'none'} "
                         f"of {targets[(topic, partition)]}, held by {held}")
        session = cfg.consumer_config.get("session.timeout.ms", 45000)
        why = (f"a member that stopped without leaving group {cfg.consumer_group} (killed, "
               f"frozen) keeps its partitions until its session times out "
               f"(session.timeout.ms={session}); a live member commits as it seals")
        if now >= self._drain_deadline:
            raise PartitionsUnavailableError(
                f"--trigger=available_now could not finish: no progress for --drain_timeout_s="
                f"{cfg.drain_timeout_s:g}: {len(short)} partition(s) are not in the WAL up to "
                f"the end offsets seen at start: " + "; ".join(lines) + f". {why}. Nothing was "
                "skipped: stop the members named (or wait for their sessions to time out) and "
                "run again, or raise --drain_timeout_s.")
        _LOGGER.warning("receiver %s: waiting for %d partition(s) held by other members: %s "
                        "(%s; giving up in %.0f s)", self.owner, len(short), "; ".join(lines),
                        why, self._drain_deadline - now)

    def _idle_check(self) -> None:
        """Beat the heartbeat when the broker answers a metadata request: an idle receiver
        with nothing to read is healthy, one whose broker does not answer is not, nor one
        whose seals fail (it is paused, not idle)."""
        from confluent_kafka import KafkaException
        if self._seal_failed:
            return
        try:
            self._consumer.list_topics(self.config.topics[0], timeout=_HEALTH_CHECK_TIMEOUT_S)
        except KafkaException:
            return
        self.heartbeat.beat("idle")

    def _advance_past_gaps(self, tps: Iterable[tuple[str, int]]) -> None:
        """Move the next offset of ``tps`` up to the consumer's position, which passes
        transaction markers, aborted and compacted records that are never delivered."""
        from confluent_kafka import TopicPartition
        for pos in self._consumer.position([TopicPartition(t, p) for t, p in tps]):
            tp = (pos.topic, pos.partition)
            if tp in self._assigned and pos.offset >= 0 and pos.offset > self._next.get(tp, 0):
                self._next[tp] = pos.offset

    def _commit_positions(self, force: bool = False) -> None:
        """Commit each assigned partition's next offset when nothing is buffered.

        With an empty buffer everything below the next offset is sealed, or was never a
        record for us (markers, aborted transactions, compaction), so committing it is
        safe and brings the group's offsets to the end. Also retries a failed commit.
        """
        now = time.monotonic()
        assert self._writer is not None  # run() makes it before consuming
        if (self._writer.buffered_records or self._seal_failed or not self._assigned
                or not force and now - self._last_position_commit < _POSITION_COMMIT_EVERY_S):
            return
        self._last_position_commit = now
        self._advance_past_gaps(sorted(self._assigned))
        offsets = {tp: self._next[tp] for tp in self._assigned
                   if tp in self._next and self._next[tp] > self._committed.get(tp, -1)}
        if offsets and kafka.commit_offsets(self._consumer, offsets, attempts=2, backoff_s=0.2):
            self._committed.update(offsets)

    def _backpressure(self) -> None:
        """Pause every assigned partition while sealing fails; resume once a seal succeeds.

        Sealing happens at ``min(--wal_segment_bytes, max_buffered_bytes / 2)`` and
        librdkafka's prefetch queue holds at most the other half, so pausing as soon as a
        seal fails keeps the receiver's records in memory under about
        ``--max_buffered_bytes`` however long storage (or the batches reading it) lag.
        """
        assert self._writer is not None  # run() makes it before consuming
        if self._seal_failed and not self._paused:
            _LOGGER.warning("receiver %s: sealing failed with %d bytes buffered "
                            "(--max_buffered_bytes=%d): pausing partitions until a seal "
                            "succeeds", self.owner, self._writer.buffered_bytes,
                            self.config.max_buffered_bytes)
            self.stats.pauses += 1
            self._set_paused(True)
        elif self._paused and not self._seal_failed:
            _LOGGER.info("receiver %s: sealing works again; resuming partitions", self.owner)
            self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        from confluent_kafka import TopicPartition
        tps = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        if tps:
            (self._consumer.pause if paused else self._consumer.resume)(tps)
        self._paused = paused

    # --- seal → commit --------------------------------------------------------------------

    def _seal_and_commit(self, retry: bool) -> checkpoint_pb2.SegmentRef | None:
        """Seal the buffer, then commit what it holds.

        Steps:
            1. Seal: one create-once segment; durable when ``seal`` returns. On a storage
               failure the records stay buffered: with ``retry`` keep trying for up to
               ``_SEAL_RETRY_FOR_S`` (a rebalance or stop must not go on without them) and
               then raise, uncommitted, so the next owner reads them again; without
               ``retry`` return and let backpressure pause the partitions.
            2. Commit ``last + 1`` of each sealed partition that is still assigned here.
        """
        assert self._writer is not None  # run() makes it before consuming
        # Step 1
        deadline = time.monotonic() + _SEAL_RETRY_FOR_S
        self.stats.peak_buffered_bytes = max(self.stats.peak_buffered_bytes,
                                             self._writer.buffered_bytes)
        while True:
            try:
                self._last_seal_try = time.monotonic()
                ref = self._writer.seal()
                sealed_in = time.monotonic() - self._last_seal_try
                self._seal_failed = False
                break
            except StorageError as exc:
                self._seal_failed = True
                _LOGGER.error("receiver %s: sealing failed, %d records stay buffered: %s",
                              self.owner, self._writer.buffered_records, exc)
                if not retry:
                    return None
                if time.monotonic() > deadline:
                    raise
                time.sleep(_SEAL_RETRY_S)
        if ref is None:
            return None
        self._segments.remember(ref)
        self.heartbeat.beat("seal")
        self.stats.seal_seconds += sealed_in
        self.stats.segments += 1
        self.stats.records += ref.record_count
        self.stats.sealed_bytes += ref.size_bytes
        crash_point("after_seal")
        # Step 2
        offsets = {(s.topic, s.partition): s.last_offset + 1 for s in ref.spans
                   if (s.topic, s.partition) in self._assigned}
        if offsets:
            commit_started = time.monotonic()
            committed = kafka.commit_offsets(self._consumer, offsets, attempts=3, backoff_s=0.5)
            self.stats.commit_seconds += time.monotonic() - commit_started
            if committed:
                self.stats.commits += 1
                self._committed.update(offsets)
            else:
                self.stats.failed_commits += 1
        crash_point("after_commit")
        return ref

    # --- rebalance callbacks (run inside consume()) ---------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        if self._closing:
            # A rebalance that completes while close() leaves the group: the partitions
            # are not read here, and the terminating client cannot answer the lookups
            # below (they fail with _DESTROY).
            _LOGGER.info("receiver %s: closing, not taking %d assigned partition(s)",
                         self.owner, len(partitions))
            return
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self.stats.rebalances += 1
        positions = self._resume_positions(consumer, tps)
        for tp in partitions:
            tp.offset = positions[(tp.topic, tp.partition)]
        consumer.assign(partitions)
        self._assigned.update(tps)
        self.assigned_ever.update(tps)
        for tp in tps:
            self._next[tp] = positions[tp]
        if self._paused:
            self._set_paused(True)
        _LOGGER.info("receiver %s: assigned %s", self.owner,
                     ", ".join(f"{t}[{p}]@{positions[(t, p)]}" for t, p in sorted(tps)) or "-")

    def _resume_positions(self, consumer: Any,
                          tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Step by step: WAL + checkpoint plans, group commit, --starting_offsets; then check
        against the log start and repair a lost commit."""
        cfg = self.config
        wal = wal_resume_positions(self.wal_dir, self.checkpoint_dir, self._segments)
        committed = kafka.committed_offsets(consumer, tps, cfg.bootstrap_servers)
        positions: dict[tuple[str, int], int] = {}
        for tp in tps:
            found = [v for v in (wal.get(tp), committed.get(tp)) if v is not None]
            if found:
                positions[tp] = max(found)
        fresh = [tp for tp in tps if tp not in positions]
        if fresh:
            positions.update(positions_.resolve_text(
                consumer, cfg.starting_offsets, fresh, flag="--starting_offsets",
                bootstrap_servers=cfg.bootstrap_servers,
                fail_on_data_loss=cfg.fail_on_data_loss))
        marks = kafka.watermarks(consumer, tps, cfg.bootstrap_servers)
        for tp in tps:
            low = marks[tp][0]
            if positions[tp] < low:
                self.stats.lost_records += kafka.lost_offsets(
                    tp[0], tp[1], positions[tp], low, cfg.fail_on_data_loss,
                    why="they were never written to the WAL")
                positions[tp] = low
        repair = {tp: pos for tp, pos in positions.items()
                  if (c := committed.get(tp)) is not None and pos > c
                  or c is None and tp in wal}
        self._committed.update({tp: c for tp, c in committed.items() if c is not None})
        if repair:
            _LOGGER.info("receiver %s: the WAL is ahead of the group's commit for %s; "
                         "committing it", self.owner, sorted(repair))
            if kafka.commit_offsets(consumer, repair, attempts=2, backoff_s=0.2):
                self._committed.update(repair)
        return positions

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self.stats.rebalances += 1
        if not self._failed and self._writer is not None:
            # Seal and commit what we hold before the partitions go to another member.
            self._seal_and_commit(retry=True)
            self._commit_positions(force=True)
        self._drop([(tp.topic, tp.partition) for tp in partitions])
        _LOGGER.info("receiver %s: revoked %s", self.owner,
                     ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "-")

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # Another member may own them already: sealing now could write records twice.
        lost = {(tp.topic, tp.partition) for tp in partitions}
        if self._writer is not None and self._writer.buffered_records:
            dropped = self._writer.buffered_records
            assert self.epoch is not None  # claimed in run() before the writer was made
            self._writer = WalWriter(self.wal_dir, writer_id=self.owner, epoch=self.epoch,
                                     max_bytes=self._writer.max_bytes,
                                     max_records=self._writer.max_records,
                                     max_age_s=self._writer.max_age_s)
            self._seal_failed = False
            _LOGGER.warning("receiver %s: partitions %s were lost (session timeout); dropped "
                            "%d unsealed records, which their new owner reads again", self.owner,
                            sorted(lost), dropped)
        self._drop(lost)

    def _drop(self, tps: Iterable[tuple[str, int]]) -> None:
        for tp in tps:
            self._assigned.discard(tp)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
