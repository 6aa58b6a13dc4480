"""Direct mode of run_micro_batches: batches of Kafka offset ranges.

The steps are numbered as in :mod:`beam_zdl.microbatch.loop` (Steps 0, 1 and 4
are the shared loop's):

* Step 2: plan — per partition, from the last plan's stops (else
  ``--starting_offsets``) to ``--ending_offsets``, else the end offsets (an
  ``available_now`` run: those seen at start), capped by
  ``--max_records_per_partition`` and ``--max_records_per_batch``
  (:func:`beam_zdl.ranges.plan`); a run with ``--ending_offsets`` stops there
  whatever its ``--trigger``;
* Step 3: run — :class:`~beam_zdl.ReadFromKafka` reads exactly those ranges;
* Step 5: commit — the consumer group's offsets move to the batch's stops (in the
  background, while the next batch runs; that batch's completion, and the end of the
  run, wait for it), then checkpoint files of batches beyond ``--retain_batches`` are
  deleted.

A crash between Steps 4 and 5 leaves a stale Kafka commit, which the next
commit repairs: the checkpoint, not Kafka, decides where reading resumes.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

import beam_zdl.kafka as kafka
from beam_zdl.batch_options import batch_options
import beam_zdl.ranges as ranges
from beam_zdl.io import ReadFromKafka
from beam_zdl.microbatch.batch_ranges import BatchRanges
from beam_zdl.batch_progress import ProgressListener
from beam_zdl.microbatch.loop import Batch, BatchLoop, BuildFn, StopFlag
from beam_zdl.options import ZdlConfig
from beam_zdl.ranges import Offsets, PartitionRange
from beam_zdl.v1 import checkpoint_pb2

__all__ = ["DirectDriver"]


def _stops(ranges: Iterable[Any]) -> Offsets:
    """Each partition's stop (the next offset to read) of a plan's or a batch's ranges."""
    return {(r.topic, r.partition): r.stop for r in ranges}


class DirectDriver(BatchLoop):
    """Direct mode's batch loop (see the module doc)."""

    mode = checkpoint_pb2.MODE_DIRECT

    def __init__(self, build_fn: BuildFn, options: PipelineOptions, config: ZdlConfig,
                 listeners: Sequence[ProgressListener] = ()) -> None:
        super().__init__(build_fn, options, config, listeners)
        self._last_stops: Optional[Offsets] = None  # the newest plan's stops, once known
        self._commit: Optional[threading.Thread] = None  # the last batch's Kafka commit
        self._commit_error: Optional[BaseException] = None  # what that commit raised

    def on_start(self, stop: StopFlag) -> None:
        # A run with targets ends there: --ending_offsets, or what available_now saw at start.
        if self.config.trigger == "available_now" or self.config.ending_offsets:
            self.targets = ranges.end_positions(self.consumer, self.config)

    def done_when_idle(self) -> bool:
        return self.targets is not None

    def start_positions(self, partitions: list[tuple[str, int]]) -> Offsets:
        return ranges.positions(self.consumer, self.config, partitions, self._checkpointed())

    def confirm_finished(self) -> None:
        # Every batch up to the targets is complete, so the next positions are safe to
        # commit: this repairs a commit that failed after its batch completed, and commits
        # the start of a partition nothing was planned for (--starting_offsets=latest).
        assert self.targets is not None
        self._join_commit()
        kafka.commit_offsets(self.consumer, ranges.positions(
            self.consumer, self.config, list(self.targets), self._checkpointed()))
        self.verify_committed(self.targets)

    def batch_of(self, plan: checkpoint_pb2.BatchPlan, replay: bool) -> Batch:
        if not replay:  # just written: the newest plan
            self._last_stops = _stops(plan.ranges)
        return Batch(plan.batch_id, tuple(PartitionRange(r.topic, r.partition, r.start, r.stop)
                                          for r in plan.ranges), replay=replay)

    def next_plan(self, batch_id: int) -> Optional[checkpoint_pb2.BatchPlan]:
        # Step 2
        ends = self.targets
        partitions = None
        if ends is None:
            # One metadata lookup serves the end offsets and the plan.
            partitions = kafka.partitions_of(self.consumer, self.config.topics,
                                             self.config.bootstrap_servers)
            ends = ranges.end_positions(self.consumer, self.config, partitions)
            self.progress.planned_to(ends)
        planned = ranges.plan(self.consumer, self.config, self._checkpointed(), ends,
                              partitions)
        if all(r.stop == r.start for r in planned):
            return None
        return checkpoint_pb2.BatchPlan(
            batch_id=batch_id, mode=checkpoint_pb2.MODE_DIRECT,
            ranges=[checkpoint_pb2.OffsetRange(topic=r.topic, partition=r.partition,
                                               start=r.start, stop=r.stop) for r in planned],
            epoch=self.epoch)

    def read(self, batch: Batch) -> beam.PTransform[Any, Any]:
        return ReadFromKafka(ranges=batch.ranges, options=batch_options(self.options),
                             ranges_input=BatchRanges())

    def after_complete(self, batch: Batch) -> None:
        # Step 5. The commit (a broker round trip, ~10 ms) runs beside the next batch's
        # planning and pipeline: one at a time, so commits reach Kafka in batch order; the
        # next completion waits for it (Kafka's view never lags the checkpoint by more than
        # the batch in flight), and so does the end of the run (confirm_finished, on_stop).
        self._join_commit()
        stops = _stops(batch.ranges)

        def commit() -> None:
            try:
                if not kafka.commit_offsets(self.consumer, stops):
                    self.commit_failures += 1  # logged; the next commit carries it
            except BaseException as exc:  # raised in the driver's thread by _join_commit
                self._commit_error = exc

        self._commit = threading.Thread(target=commit, name="beam-zdl-commit", daemon=True)
        self._commit.start()
        self.coordinator.retain(self.config.retain_batches)

    def _join_commit(self) -> None:
        if self._commit is not None:
            self._commit.join()
            self._commit = None
        error, self._commit_error = self._commit_error, None
        if error is not None:
            raise error

    def before_complete(self, batch: Batch) -> None:
        self._join_commit()

    def on_stop(self) -> None:
        self._join_commit()  # before the loop closes the consumer

    def _checkpointed(self) -> Optional[Offsets]:
        """The last plan's stops (where reading resumes), or None before the first plan."""
        # Read once per run; then each plan this driver writes is the newest one.
        if self._last_stops is None:
            planned = self.coordinator.planned_ids()
            if not planned:
                return None
            last = self.coordinator.read_plan(planned[-1])
            self._last_stops = _stops(last.ranges)
        return dict(self._last_stops)
