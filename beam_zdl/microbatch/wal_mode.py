"""WAL mode of run_micro_batches: a receiver process fills the WAL, batches read it.

The driver runs a :class:`~beam_zdl.receiver.Receiver` in a child process
(:class:`~beam_zdl.receiver_process.ReceiverProcess`: it dies with the
driver, its errors come back as the same exception, its logs through the
driver's loggers) and plans batches of sealed segments. The receiver's busy
loop then holds no GIL of the driver, which is one of the batches' workers as
in direct mode. The steps are numbered as in
:mod:`beam_zdl.microbatch.loop` (Steps 0, 1 and 4 are the shared loop's):

* Step 2: plan — the sealed segments not referenced by any stored plan, in
  (epoch, seq) order, as ``SegmentRef``s (with their per-partition spans),
  written create-once before the batch runs;
* Step 3: run — :class:`~beam_zdl.io.ReadFromWal` reads exactly those segments;
* Step 5: cleanup — segments of completed batches older than the last
  ``--retain_batches`` are deleted, then those batches' metadata (segments
  first: a crash in between leaves a plan naming deleted segments of a
  completed batch, which is harmless, never an unreferenced segment that
  would be planned again).

There is no Kafka commit here: the receiver commits after each seal.

Before planning, the spans of the new segments are checked against every
known segment's (retained plans and unplanned ones): receivers hand a
partition over at a sealed offset, so an overlap can only come from a
receiver that sealed after losing its partitions, and it stops the run
naming both segments instead of duplicating records.

``--trigger=available_now``: the driver reads the end offsets of every
partition of ``--topics`` at start; the receiver drains up to them — and waits
until the group has committed each of them, whichever member sealed the
records (a killed member's partitions come to it when its session times out;
it fails after ``--drain_timeout_s``) — then stops. The driver plans batches
meanwhile, and once the receiver has stopped, plans what is left, checks that
the group's offsets reached those ends, and exits. ``continuous``: a batch
of whatever is sealed every ``--batch_interval_s``. ``--max_records_per_partition``
and ``--max_records_per_batch`` cap a batch at segment granularity (a batch takes
at least one segment).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from prometheus_client import CollectorRegistry

import beam_zdl.positions as positions
from beam_zdl.batch_options import batch_options
from beam_zdl.chaos import crash_point
from beam_zdl.errors import StorageError, WalOverlapError, ZdlError
from beam_zdl.batch_progress import ProgressListener
from beam_zdl.io import ReadFromWal
from beam_zdl.monitoring import ReceiverCollector
from beam_zdl.microbatch.loop import Batch, BatchLoop, BuildFn, StopFlag
from beam_zdl.options import ZdlConfig
from beam_zdl.ranges import Offsets, PartitionRange
from beam_zdl.receiver_process import ReceiverProcess
from beam_zdl.storage import open_storage
from beam_zdl.v1 import checkpoint_pb2
from beam_zdl.wal import SegmentIndex, list_segments

__all__ = ["WalDriver"]

_LOGGER = logging.getLogger(__name__)

_IDLE_POLL_S = 0.2


def _name(uri: str) -> str:
    return uri.rstrip("/").rpartition("/")[2]


class WalDriver(BatchLoop):
    """WAL mode's batch loop (see the module doc)."""

    mode = checkpoint_pb2.MODE_WAL

    def __init__(self, build_fn: BuildFn, options: PipelineOptions, config: ZdlConfig,
                 listeners: Sequence[ProgressListener] = ()) -> None:
        super().__init__(build_fn, options, config, listeners)
        self._receiver: Optional[ReceiverProcess] = None
        self._plans: dict[int, checkpoint_pb2.BatchPlan] = {}
        self._receiver_done_before_listing = False
        assert config.wal_dir is not None  # ZdlConfig requires it with --zdl_mode=wal
        self._wal_dir: str = config.wal_dir
        self._wal_storage = open_storage(self._wal_dir)
        self._segments = SegmentIndex()  # refs of the segments it plans; forgets deleted ones

    # --- the receiver process -------------------------------------------------------------

    def on_start(self, stop: StopFlag) -> None:
        drain = self.config.trigger == "available_now"
        self.targets = self.end_offsets() if drain else None
        self._receiver = ReceiverProcess(self.config, checkpoint_dir=self.config.checkpoint_dir,
                                         drain=drain, targets=self.targets)
        self._receiver.start()

    def on_stop(self) -> None:
        if self._receiver is not None:
            self._receiver.stop()

    def check(self) -> None:
        error = self._receiver.error() if self._receiver is not None else None
        if error is not None:
            raise error

    def register_metrics(self, registry: CollectorRegistry) -> None:
        # The receiver process' stats, as beam-zdl receive serves them (its last status).
        registry.register(ReceiverCollector(
            lambda: self._receiver.stats if self._receiver is not None else {},
            lambda: (self._receiver.buffered_bytes or 0) if self._receiver is not None else 0))

    def receiver_status(self) -> tuple[Optional[int], Optional[int]]:
        receiver = self._receiver
        if receiver is None or receiver.buffered_bytes is None:
            return None, None
        ends = self.progress.ends()
        positions = receiver.positions
        lag = sum(max(0, ends[tp] - o) for tp, o in positions.items() if tp in ends)
        return receiver.buffered_bytes, lag

    def _receiver_running(self) -> bool:
        return self._receiver is not None and self._receiver.running

    # --- planning -------------------------------------------------------------------------

    def _plan(self, batch_id: int) -> checkpoint_pb2.BatchPlan:
        plan = self._plans.get(batch_id)
        if plan is None:
            plan = self._plans[batch_id] = self.coordinator.read_plan(batch_id)
        return plan

    def next_plan(self, batch_id: int) -> Optional[checkpoint_pb2.BatchPlan]:
        # Step 2
        self._receiver_done_before_listing = not self._receiver_running()
        planned = {_name(seg.uri) for i in self.coordinator.planned_ids()
                   for seg in self._plan(i).segments}
        unplanned = [s for s in list_segments(self._wal_dir) if s.name not in planned]
        if not unplanned:
            return None
        refs = self._segments.refs(unplanned)
        self._check_no_overlap(refs, [seg for i in self.coordinator.planned_ids()
                                      for seg in self._plan(i).segments])
        cap = self.config.max_records_per_partition
        cap_total = self.config.max_records_per_batch
        chosen: list[checkpoint_pb2.SegmentRef] = []
        counts: dict[tuple[str, int], int] = {}
        for ref in refs:
            add = {(s.topic, s.partition): s.last_offset - s.first_offset + 1 for s in ref.spans}
            if chosen and (
                    (cap and any(counts.get(tp, 0) + n > cap for tp, n in add.items()))
                    or (cap_total and sum(counts.values()) + sum(add.values()) > cap_total)):
                break
            chosen.append(ref)
            for tp, n in add.items():
                counts[tp] = counts.get(tp, 0) + n
        spans: dict[tuple[str, int], list[int]] = {}
        for ref in chosen:
            for s in ref.spans:
                span = spans.setdefault((s.topic, s.partition), [s.first_offset, s.last_offset])
                span[0] = min(span[0], s.first_offset)
                span[1] = max(span[1], s.last_offset)
        return checkpoint_pb2.BatchPlan(
            batch_id=batch_id, mode=checkpoint_pb2.MODE_WAL, segments=chosen, epoch=self.epoch,
            ranges=[checkpoint_pb2.OffsetRange(topic=t, partition=p, start=a, stop=b + 1)
                    for (t, p), (a, b) in sorted(spans.items())])

    @staticmethod
    def _check_no_overlap(new: list[checkpoint_pb2.SegmentRef],
                          planned: list[checkpoint_pb2.SegmentRef]) -> None:
        """Refuse segments whose offsets overlap another segment's.

        Receivers hand a partition over at a sealed offset, so two segments never hold
        the same offset of a partition. An overlap means a receiver kept writing after
        another member took its partitions (a process frozen past its session timeout
        that sealed when it woke): planning it would duplicate records. Raise, naming
        both segments, rather than duplicate silently.
        """
        spans: dict[tuple[str, int], list[tuple[int, int, str]]] = {}
        for ref in [*planned, *new]:
            for s in ref.spans:
                spans.setdefault((s.topic, s.partition), []).append(
                    (s.first_offset, s.last_offset, ref.uri))
        for (topic, partition), items in spans.items():
            items.sort()
            for (a_first, a_last, a_uri), (b_first, b_last, b_uri) in zip(items, items[1:]):
                if b_first <= a_last:
                    raise WalOverlapError(
                        f"WAL segments {a_uri} and {b_uri} both hold {topic}[{partition}] "
                        f"offsets [{b_first}, {min(a_last, b_last)}]: a receiver wrote after "
                        "losing its partitions. Nothing was planned. Check the two segments "
                        "(beam-zdl verify / inspect), delete the duplicate one from the WAL "
                        "directory, and restart.")

    def start_positions(self, partitions: list[tuple[str, int]]) -> Offsets:
        # The receiver resumes past the group's commits (or the WAL's, which are ahead).
        return positions.resolve_text(self.consumer, "committed", partitions,
                                      flag="--starting_offsets",
                                      bootstrap_servers=self.config.bootstrap_servers)

    def done_when_idle(self) -> bool:
        # Only when the receiver had stopped before the listing found nothing new.
        return self.config.trigger == "available_now" and self._receiver_done_before_listing

    def confirm_finished(self) -> None:
        assert self._receiver is not None  # started by on_start
        if not self._receiver.drained:
            raise ZdlError("--trigger=available_now: the WAL receiver stopped before every "
                           "partition was drained; the run is not finished (run it again)")
        assert self.targets is not None  # set by on_start under available_now
        self.verify_committed(self.targets)

    def idle_wait_s(self, since: float) -> float:
        if self.config.trigger == "available_now":
            return _IDLE_POLL_S
        return super().idle_wait_s(since)

    # --- batches --------------------------------------------------------------------------

    def batch_of(self, plan: checkpoint_pb2.BatchPlan, replay: bool) -> Batch:
        self._plans[plan.batch_id] = plan
        return Batch(plan.batch_id,
                     tuple(PartitionRange(r.topic, r.partition, r.start, r.stop)
                           for r in plan.ranges),
                     replay=replay, segments=tuple(s.uri for s in plan.segments))

    def read(self, batch: Batch) -> beam.PTransform[Any, Any]:
        # Step 3. The end offsets are what the lag gauges and the progress line count to.
        ends = self.targets
        if ends is None:
            ends = self.end_offsets()
            self.progress.planned_to(ends)
        return ReadFromWal(segments=list(batch.segments), end_offsets=ends,
                           options=batch_options(self.options))

    def after_complete(self, batch: Batch) -> None:
        """Delete the segments of completed batches beyond --retain_batches, then their plans."""
        # Step 5
        keep = self.config.retain_batches
        old = self.coordinator.completed_ids()[:-keep]
        deleted = []
        for batch_id in old:
            try:
                plan = self._plan(batch_id)
            except StorageError:
                continue  # its metadata is gone already
            for seg in plan.segments:
                self._wal_storage.delete(_name(seg.uri))
                deleted.append(seg.uri)
        if deleted:
            self._segments.forget(deleted)
            _LOGGER.info("deleted %d WAL segments of completed batches %d..%d", len(deleted),
                         old[0], old[-1])
        crash_point("after_segment_delete")
        for batch_id in self.coordinator.retain(keep):
            self._plans.pop(batch_id, None)
