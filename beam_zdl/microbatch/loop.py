"""The micro-batch loop: the Spark Streaming / foreachBatch model on Beam.

Every batch is a bounded Beam run over an input planned and recorded before
it starts, so "the batch is done" is exact on every runner, and a crash at
any point is repaired by replaying the recorded plan. The steps, numbered as
in the code (``# Step N``) and in :func:`beam_zdl.run_micro_batches`:

* Step 0: claim the checkpoint (the config must match; a new epoch fences
  any older driver still running).
* Step 1: re-run every planned-but-incomplete batch, same input, same id.
* Step 2: plan — the next batch's exact input is written create-once.
* Step 3: run — a pipeline reads exactly that input; ``build_fn`` adds the
  sink; the runner reports DONE.
* Step 4: complete — the completion is written.
* Step 5: commit — direct mode: the consumer group's offsets move to the
  batch's ends; WAL mode: the receiver already committed after each seal, so
  segments of old completed batches are deleted instead.

:class:`BatchLoop` is the loop both modes share; direct mode
(:class:`~beam_zdl.microbatch.direct_mode.DirectDriver`) and WAL mode
(:class:`~beam_zdl.microbatch.wal_mode.WalDriver`) supply Steps 2, 3 and 5;
:func:`~beam_zdl.microbatch.run.run_micro_batches` picks the mode.

A crash before Step 4 leaves the batch pending: on restart it is re-run with
the same input (Step 1) before anything new is planned. A crash between
Steps 4 and 5 leaves a stale Kafka commit, which the next commit repairs; the
checkpoint, not Kafka, decides where reading resumes.
"""

from __future__ import annotations

import abc
import contextvars
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

import beam_zdl.kafka as kafka
import beam_zdl.metrics as metrics
from beam_zdl.batch_options import batch_options
from beam_zdl.chaos import crash_point
from beam_zdl.coordinator import CONFIG_FORMAT_VERSION, CheckpointCoordinator
from beam_zdl.ranges import PartitionRange
from beam_zdl.errors import ZdlError
from beam_zdl.microbatch.progress import Progress
from beam_zdl.options import ZdlConfig
from beam_zdl.runners import pipeline_runner
from beam_zdl.v1 import checkpoint_pb2

__all__ = ["Batch", "BatchLoop", "BuildFn", "RunSummary", "StopFlag", "current_batch",
           "run_batch_pipeline"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """What ``build_fn`` learns about the batch it builds a pipeline for.

    Attributes:
        batch_id: increasing from 0; a replayed batch keeps its id, so a sink
            keyed by it is idempotent.
        ranges: the offset ranges the batch reads, ``[start, stop)`` each.
        replay: True when this run repeats a batch planned before a crash.
        segments: WAL mode: the URIs of the sealed segments the batch reads (its
            ``ranges`` then span each partition's offsets in them); empty in
            direct mode.
    """
    batch_id: int
    ranges: tuple[PartitionRange, ...]
    replay: bool = False
    segments: tuple[str, ...] = ()

    @property
    def planned_records(self) -> int:
        """Offsets covered by the ranges (an upper bound where offsets have gaps)."""
        return sum(r.stop - r.start for r in self.ranges)


@dataclass
class RunSummary:
    """What a call of :func:`run_micro_batches` did."""
    batches: int = 0
    replayed: int = 0
    records: int = 0
    seconds: float = 0.0
    batch_ids: list[int] = field(default_factory=list)


BuildFn = Callable[[beam.PCollection[Any], Batch], None]


class StopFlag:
    """Set by Ctrl-C / SIGTERM; the driver checks it between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._event.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        _LOGGER.warning("stop requested: finishing the current batch, then exiting "
                        "(press Ctrl-C again to abort it; it is replayed on restart)")
        self._event.set()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def sleep(self, seconds: float) -> None:
        self._event.wait(seconds)


_BUILDING: contextvars.ContextVar[Optional[Batch]] = contextvars.ContextVar(
    "beam_zdl_building_batch", default=None)


def current_batch() -> Optional[Batch]:
    """The batch whose pipeline ``build_fn`` is building right now, else None.

    Lets a sink built inside ``build_fn`` (``WriteToKafka``) key its output by the
    batch without being handed it.
    """
    return _BUILDING.get()


def run_batch_pipeline(build_fn: BuildFn, options: PipelineOptions, batch: Batch,
                       read: beam.PTransform[Any, Any]) -> int:
    """Build and run one batch's pipeline to DONE; return records read."""
    options = batch_options(options)
    pipeline = beam.Pipeline(runner=pipeline_runner(options), options=options)
    # One label for every batch: a stage that is the same in two batches then has the same
    # descriptor, and the run's warm runner reuses its bundle processors (worker_pool).
    records = pipeline | "ReadBatch" >> read
    token = _BUILDING.set(batch)
    try:
        build_fn(records, batch)
    finally:
        _BUILDING.reset(token)
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise ZdlError(f"batch {batch.batch_id} ended in state {state}, not DONE; it stays "
                       "pending and is replayed with the same input on the next start")
    counters = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE)
                                      .with_name(metrics.RECORDS))["counters"]
    return int(sum(c.committed or 0 for c in counters))


class BatchLoop(abc.ABC):
    """The batch loop both modes share: replay pending, then plan → run → complete.

    A mode supplies what differs: how the next plan is found (:meth:`_next_plan`),
    how a batch reads its input (:meth:`_read`), what follows a completion
    (:meth:`_after_complete`: a Kafka commit in direct mode, segment cleanup in
    WAL mode) and when an idle loop is finished (:meth:`_done_when_idle`).
    """

    mode = checkpoint_pb2.MODE_DIRECT

    def __init__(self, build_fn: BuildFn, options: PipelineOptions, config: ZdlConfig) -> None:
        self.build_fn = build_fn
        # Memoized views for the run (batch_options): each batch asks its flags again.
        self.options = batch_options(options)
        self.config = config
        assert config.checkpoint_dir is not None  # ZdlConfig(need_checkpoint=True) has one
        self.coordinator = CheckpointCoordinator(config.checkpoint_dir)
        self.summary = RunSummary()
        self.consumer: Any = None
        self.progress = Progress()

    # --- hooks ----------------------------------------------------------------------------

    def _start(self, stop: "StopFlag") -> None:
        """Called after the checkpoint is claimed, before pending batches are replayed."""

    def _stop(self) -> None:
        """Called once when the loop ends, also on errors."""

    def _before_complete(self, batch: Batch) -> None:
        """Called after the batch's pipeline ran, before its completion is written."""

    def _check(self) -> None:
        """Raise if a helper (the WAL receiver) failed."""

    @abc.abstractmethod
    def _batch_of(self, plan: checkpoint_pb2.BatchPlan, replay: bool) -> Batch:
        raise NotImplementedError

    @abc.abstractmethod
    def _next_plan(self, batch_id: int) -> Optional[checkpoint_pb2.BatchPlan]:
        """The next batch's plan (not yet written), or None when there is nothing new."""
        raise NotImplementedError

    @abc.abstractmethod
    def _read(self, batch: Batch) -> beam.PTransform[Any, Any]:
        raise NotImplementedError

    @abc.abstractmethod
    def _after_complete(self, batch: Batch) -> None:
        raise NotImplementedError

    def _start_positions(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Where this run starts reading each partition (for the progress report)."""
        return {}

    def _done_when_idle(self) -> bool:
        """With nothing to plan: True ends the run, False waits for more."""
        return self.config.trigger == "available_now"

    def _finished(self) -> None:
        """Called when an ``available_now`` run has nothing left to plan; raise if it is
        not really finished."""

    def _idle_wait_s(self, since: float) -> float:
        return max(0.0, self.config.batch_interval_s - (time.monotonic() - since))

    def _end_offsets(self) -> dict[tuple[str, int], int]:
        cfg = self.config
        return kafka.end_offsets(self.consumer, cfg.topics, cfg.bootstrap_servers)

    def _verify_finished(self, targets: dict[tuple[str, int], int]) -> None:
        """An ``available_now`` run ends only with the group's offsets at the end offsets
        seen at start (every batch below them completed first).

        Raises:
            ZdlError: names the partitions whose committed offset stayed short.
        """
        cfg = self.config
        committed = kafka.committed_offsets(self.consumer, targets, cfg.bootstrap_servers)
        short = {tp: committed.get(tp) for tp, end in targets.items()
                 if end > 0 and ((c := committed.get(tp)) is None or c < end)}
        if short:
            raise ZdlError(
                "--trigger=available_now: every batch completed, but the offsets of consumer "
                f"group {cfg.consumer_group} did not reach the end offsets seen at start: "
                + ", ".join(f"{t}[{p}] committed {c if c is not None else 'none'} of "
                            f"{targets[(t, p)]}" for (t, p), c in sorted(short.items()))
                + ". Nothing was lost (the checkpoint holds the progress). The brokers refused "
                "or lost the commits: check the log above for the reason (a group with "
                "active members, such as another application using --consumer_group, refuses "
                "commits from beam_zdl's driver), then run again.")
        _LOGGER.info("available_now: every partition of %s is done up to the end offsets seen "
                     "at start, and group %s has committed them", ",".join(cfg.topics),
                     cfg.consumer_group)

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> RunSummary:
        cfg = self.config
        started = time.monotonic()
        kafka.check_brokers(cfg.bootstrap_servers, cfg.consumer_config,
                            cfg.kafka_connect_timeout_s)
        self.consumer = kafka.new_consumer(cfg.bootstrap_servers, cfg.consumer_group,
                                           cfg.consumer_config)
        try:
            with StopFlag() as stop:
                # Step 0
                self.epoch = self.coordinator.open(checkpoint_pb2.CheckpointConfig(
                    format_version=CONFIG_FORMAT_VERSION, topics=list(cfg.topics),
                    mode=self.mode, consumer_group=cfg.consumer_group,
                    wal_dir=(cfg.wal_dir or "") if self.mode == checkpoint_pb2.MODE_WAL else "",
                    created_ms=int(time.time() * 1000)))
                _LOGGER.info("driver epoch %d on %s", self.epoch, cfg.checkpoint_dir)
                self._start(stop)
                plan: Optional[checkpoint_pb2.BatchPlan]
                targets = getattr(self, "_targets", None)
                self.progress.start(self._start_positions(list(targets or ())), targets)
                # Step 1
                for plan in self.coordinator.pending():
                    self._check()
                    kafka.serve_events(self.consumer)
                    if stop.stopped or self._reached_max():
                        return self._finish(started)
                    batch = self._batch_of(plan, replay=True)
                    _LOGGER.info("replaying pending batch %d (%d offsets, %d segments)",
                                 batch.batch_id, batch.planned_records, len(batch.segments))
                    self._run_and_complete(batch)
                # Steps 2-5
                batch_id = self.coordinator.next_batch_id()
                while not stop.stopped and not self._reached_max():
                    self._check()
                    kafka.serve_events(self.consumer)
                    next_started = time.monotonic()
                    plan = self._next_plan(batch_id)
                    if plan is None:
                        if self._done_when_idle():
                            self._check()
                            self._finished()
                            break
                        stop.sleep(self._idle_wait_s(next_started))
                        continue
                    plan.options_fingerprint = cfg.fingerprint()
                    plan.created_ms = int(time.time() * 1000)
                    plan = self.coordinator.write_plan(plan)
                    crash_point("after_plan")
                    self._run_and_complete(self._batch_of(plan, replay=False))
                    # This driver is the checkpoint's only writer (write_plan checks the
                    # fence and the id): the next id needs no listing.
                    batch_id = plan.batch_id + 1
                    if cfg.trigger == "continuous":
                        stop.sleep(max(0.0, cfg.batch_interval_s -
                                       (time.monotonic() - next_started)))
                self._check()
                return self._finish(started)
        finally:
            self.progress.close()
            try:
                self._stop()
            finally:
                self.consumer.close()

    def _run_and_complete(self, batch: Batch) -> None:
        t0 = time.monotonic()
        # Step 3
        records = run_batch_pipeline(self.build_fn, self.options, batch, self._read(batch))
        crash_point("after_run")
        self._before_complete(batch)
        # Step 4
        self.coordinator.complete(batch.batch_id, records)
        crash_point("after_complete")
        # Step 5
        self._after_complete(batch)
        took = time.monotonic() - t0
        self.summary.batches += 1
        self.summary.replayed += int(batch.replay)
        self.summary.records += records
        self.summary.batch_ids.append(batch.batch_id)
        self.progress.done(batch.ranges)
        _LOGGER.info("batch %d%s done: %d records in %.1f s (%.0f records/s)%s",
                     batch.batch_id, " (replay)" if batch.replay else "", records, took,
                     records / took if took else 0.0, self.progress.describe())

    def _reached_max(self) -> bool:
        return bool(self.config.max_batches) and self.summary.batches >= self.config.max_batches

    def _finish(self, started: float) -> RunSummary:
        self.summary.seconds = time.monotonic() - started
        _LOGGER.info("stopping after %d batches (%d replayed), %d records in %.1f s",
                     self.summary.batches, self.summary.replayed, self.summary.records,
                     self.summary.seconds)
        return self.summary
