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
(:class:`~beam_zdl.microbatch.wal_mode.WalDriver`) supply Steps 2, 3 and 5 through
its public hooks (the abstract methods, listed in its docstring);
:func:`~beam_zdl.microbatch.run.run_micro_batches` picks the mode.

A crash before Step 4 leaves the batch pending: on restart it is re-run with
the same input (Step 1) before anything new is planned. A crash between
Steps 4 and 5 leaves a stale Kafka commit, which the next commit repairs; the
checkpoint, not Kafka, decides where reading resumes.
"""

from __future__ import annotations

import abc
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from prometheus_client import CollectorRegistry

import beam_zdl.kafka as kafka
import beam_zdl.metrics as metrics
from beam_zdl.batch import Batch, building, current_batch
from beam_zdl.batch_options import batch_options
from beam_zdl.batch_progress import (BatchProgress, Counters, Distributions, ListenerBus,
                                     PartitionProgress, ProgressListener, merge_counters,
                                     merge_distributions, pipeline_metrics)
from beam_zdl.chaos import crash_point
from beam_zdl.coordinator import CONFIG_FORMAT_VERSION, CheckpointCoordinator
from beam_zdl.ranges import Offsets, PartitionRange
from beam_zdl.errors import BatchFailedError, ZdlError
from beam_zdl.microbatch.progress import Progress
from beam_zdl.monitoring import DriverMetrics, Heartbeat, MetricsServer
from beam_zdl.progress_history import ProgressHistory
from beam_zdl.options import ZdlConfig
from beam_zdl.runners import (batch_failure, pipeline_runner, reports_failure_as_text,
                              runner_name)
from beam_zdl.v1 import checkpoint_pb2

__all__ = ["Batch", "BatchLoop", "BuildFn", "RunSummary", "StopFlag", "current_batch",
           "run_batch_pipeline", "run_batch_pipeline_metrics"]

_LOGGER = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a call of :func:`run_micro_batches` did.

    Attributes:
        recent_progress: the :class:`BatchProgress` of the last ``--retain_batches``
            batches of this run, oldest first.
        counters: every counter of the run's batch pipelines (the user's, beam_zdl's,
            the sink's), summed over batches: ``{namespace: {name: value}}``.
        distributions: the same for distributions: ``{namespace: {name: {count, sum,
            min, max}}}``.
    """
    batches: int = 0
    replayed: int = 0
    records: int = 0
    seconds: float = 0.0
    batch_ids: list[int] = field(default_factory=list)
    recent_progress: list[BatchProgress] = field(default_factory=list)
    counters: Counters = field(default_factory=dict)
    distributions: Distributions = field(default_factory=dict)


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


def run_batch_pipeline(build_fn: BuildFn, options: PipelineOptions, batch: Batch,
                       read: beam.PTransform[Any, Any]) -> int:
    """Build and run one batch's pipeline to DONE; return records read."""
    counters, _, _ = run_batch_pipeline_metrics(build_fn, options, batch, read)
    return counters.get(metrics.NAMESPACE, {}).get(metrics.RECORDS, 0)


def run_batch_pipeline_metrics(build_fn: BuildFn, options: PipelineOptions, batch: Batch,
                               read: beam.PTransform[Any, Any]
                               ) -> tuple[Counters, Distributions, Counters]:
    """Build and run one batch's pipeline to DONE; return its metrics.

    Returns:
        ``(counters, distributions, gauges)`` by namespace and name, summed over steps
        (:func:`~beam_zdl.batch_progress.pipeline_metrics`).
    """
    options = batch_options(options)
    runner = pipeline_runner(options)
    pipeline = beam.Pipeline(runner=runner, options=options)
    # One label for every batch: a stage that is the same in two batches then has the same
    # descriptor, and the run's warm runner reuses its bundle processors (worker_pool).
    records = pipeline | "ReadBatch" >> read
    with building(batch):
        build_fn(records, batch)
    result = pipeline.run()
    try:
        state = result.wait_until_finish()
    except ZdlError:
        raise
    except Exception as exc:
        # The local runner raises the worker's own exception (a DataLossError stays one);
        # a cluster's job fails as text (Beam's RuntimeError): name the batch, keep the text
        # (batch_failure chains exc as the cause).
        if reports_failure_as_text(runner):
            raise batch_failure(exc, batch.batch_id, runner)  # noqa: B904
        raise
    if state != PipelineState.DONE:
        raise BatchFailedError(batch.batch_id, runner_name(runner), "", f"state {state}",
                               f"it ended in state {state}, not DONE")
    return pipeline_metrics(result.metrics().query(MetricsFilter()))


class BatchLoop(abc.ABC):
    """The batch loop both modes share: replay pending, then plan → run → complete.

    :meth:`run` is the loop (Steps 0-5, the module doc). A mode subclasses this and
    implements its hooks, which the loop calls in this order:

    * :meth:`on_start` once the checkpoint is claimed (Step 0); it sets :attr:`targets`
      for a run that ends at known offsets;
    * :meth:`start_positions`, for the progress report;
    * per batch: :meth:`next_plan` (Step 2; None when there is nothing new; the loop
      writes the plan), :meth:`batch_of` (also for each pending plan of Step 1),
      :meth:`read` (Step 3's input), :meth:`before_complete`, then, after Step 4,
      :meth:`after_complete` (Step 5: a Kafka commit in direct mode, segment cleanup
      in WAL mode);
    * with nothing to plan: :meth:`done_when_idle`, then :meth:`confirm_finished`
      (True) or a wait of :meth:`idle_wait_s` (False);
    * :meth:`check` between batches, :meth:`on_stop` once at the end (also on errors).

    The optional hooks (:meth:`before_complete`, :meth:`check`,
    :meth:`register_metrics`, :meth:`receiver_status`, :meth:`idle_wait_s`) have
    defaults that do nothing or answer for both modes; the abstract ones each mode
    answers itself. A mode uses the loop's state (:attr:`config`, :attr:`consumer`,
    :attr:`coordinator`, :attr:`epoch`, :attr:`progress`, :attr:`targets`) and its
    helpers :meth:`end_offsets` and :meth:`verify_committed`.

    Attributes:
        mode: the checkpoint's mode (a class constant of each mode).
        epoch: this driver's epoch, claimed in Step 0 (0 before; claimed epochs start
            at 1).
        consumer: the driver's Kafka consumer (never assigned: end offsets, commits),
            open while :meth:`run` runs.
        targets: the end offsets this run stops at (``--ending_offsets``, or what an
            ``available_now`` run saw at start), set by :meth:`on_start`; None for a
            run without an end.
        commit_failures: Kafka commits that failed after every retry.
    """

    mode: ClassVar[checkpoint_pb2.Mode]

    def __init__(self, build_fn: BuildFn, options: PipelineOptions, config: ZdlConfig,
                 listeners: Sequence[ProgressListener] = ()) -> None:
        self.build_fn = build_fn
        # Memoized views for the run (batch_options): each batch asks its flags again.
        self.options = batch_options(options)
        self.config = config
        assert config.checkpoint_dir is not None  # ZdlConfig(need_checkpoint=True) has one
        self.coordinator = CheckpointCoordinator(config.checkpoint_dir)
        self.summary = RunSummary()
        self.epoch = 0
        self.consumer: Any = None
        self.targets: Optional[Offsets] = None
        self.progress = Progress()
        self.listeners = list(listeners)
        self.history: Optional[ProgressHistory] = None
        # When the loop last turned (a plan, a batch, an idle check): /healthz reads it.
        self.heartbeat = Heartbeat()
        self.commit_failures = 0
        self.metrics_server: Optional[MetricsServer] = None
        self._last_trigger: Optional[float] = None  # monotonic trigger of the previous batch
        self._metrics: Optional[DriverMetrics] = None
        self._bus = ListenerBus(())

    # --- hooks every mode implements ------------------------------------------------------

    @abc.abstractmethod
    def on_start(self, stop: StopFlag) -> None:
        """Called after the checkpoint is claimed, before pending batches are replayed:
        start what the mode needs (WAL mode: its receiver) and set :attr:`targets`."""

    @abc.abstractmethod
    def on_stop(self) -> None:
        """Called once when the loop ends, also on errors, before the consumer closes."""

    @abc.abstractmethod
    def start_positions(self, partitions: list[tuple[str, int]]) -> Offsets:
        """Where this run starts reading each partition (for the progress report)."""

    @abc.abstractmethod
    def next_plan(self, batch_id: int) -> Optional[checkpoint_pb2.BatchPlan]:
        """Step 2: the next batch's plan, with id ``batch_id`` (the loop writes it), or None
        when there is nothing new."""

    @abc.abstractmethod
    def batch_of(self, plan: checkpoint_pb2.BatchPlan, replay: bool) -> Batch:
        """The batch of a written plan: one just planned, or a pending one (``replay``)."""

    @abc.abstractmethod
    def read(self, batch: Batch) -> beam.PTransform[Any, Any]:
        """Step 3: the transform that reads exactly the batch's input."""

    @abc.abstractmethod
    def after_complete(self, batch: Batch) -> None:
        """Step 5, after the batch's completion is written."""

    @abc.abstractmethod
    def done_when_idle(self) -> bool:
        """With nothing to plan: True ends the run (after :meth:`confirm_finished`), False
        waits for more."""

    @abc.abstractmethod
    def confirm_finished(self) -> None:
        """Called when a run that :meth:`done_when_idle` ends has nothing left to plan;
        raise if it is not really finished (see :meth:`verify_committed`)."""

    # --- optional hooks -------------------------------------------------------------------

    def before_complete(self, batch: Batch) -> None:
        """Called after the batch's pipeline ran, before its completion is written."""

    def check(self) -> None:
        """Raise if a helper (the WAL receiver) failed; called between batches."""

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Add a mode's own metrics to the driver's /metrics (WAL mode: the receiver's)."""

    def receiver_status(self) -> tuple[Optional[int], Optional[int]]:
        """WAL mode: the receiver's buffered bytes and lag (see BatchProgress)."""
        return None, None

    def idle_wait_s(self, since: float) -> float:
        """Seconds to wait after an idle check that began at ``since`` (monotonic)."""
        return max(0.0, self.config.batch_interval_s - (time.monotonic() - since))

    # --- helpers for modes ----------------------------------------------------------------

    def end_offsets(self) -> Offsets:
        """Every partition's end offset now (of ``--topics``)."""
        cfg = self.config
        return kafka.end_offsets(self.consumer, cfg.topics, cfg.bootstrap_servers)

    def verify_committed(self, targets: Offsets) -> None:
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
        """Steps 0-5 until the trigger says stop (see the module doc); the mode's hooks
        are called as the class doc says. Returns what was done."""
        cfg = self.config
        started = time.monotonic()
        kafka.check_brokers(cfg.bootstrap_servers, cfg.consumer_config,
                            cfg.kafka_connect_timeout_s)
        bus = self._bus = ListenerBus(self.listeners)
        server: Optional[MetricsServer] = None
        error: Optional[BaseException] = None
        try:
            server = self._start_metrics_server()
            self.consumer = kafka.new_consumer(cfg.bootstrap_servers, cfg.consumer_group,
                                               cfg.consumer_config)
            with StopFlag() as stop:
                self._claim(stop)
                if self._replay_pending(stop):
                    self._plan_and_run(stop)
                    self.check()
                return self._finish(started)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.progress.close()
            try:
                if self.consumer is not None:
                    self.on_stop()
            finally:
                if self.consumer is not None:
                    self.consumer.close()
                if error is not None:
                    self.summary.seconds = time.monotonic() - started
                bus.post("on_end", self.summary, error)
                bus.close()
                if server is not None:
                    server.stop()

    def _claim(self, stop: StopFlag) -> None:
        """Step 0: claim the checkpoint (a new epoch), then start the mode (on_start)."""
        cfg = self.config
        self.epoch = self.coordinator.open(checkpoint_pb2.CheckpointConfig(
            format_version=CONFIG_FORMAT_VERSION, topics=list(cfg.topics),
            mode=self.mode, consumer_group=cfg.consumer_group,
            wal_dir=(cfg.wal_dir or "") if self.mode == checkpoint_pb2.MODE_WAL else "",
            created_ms=int(time.time() * 1000)))
        _LOGGER.info("driver epoch %d on %s", self.epoch, cfg.checkpoint_dir)
        self.history = ProgressHistory(self.coordinator, cfg.retain_batches)
        self._bus.post("on_start", cfg.checkpoint_dir, self.epoch)
        self.on_start(stop)
        self.heartbeat.beat("start")
        self.progress.start(self.start_positions(list(self.targets or ())), self.targets)

    def _replay_pending(self, stop: StopFlag) -> bool:
        """Step 1: re-run every planned-but-incomplete batch with its recorded input.
        False when the run was stopped (or reached ``--max_batches``) meanwhile."""
        for plan in self.coordinator.pending():
            self.check()
            kafka.serve_events(self.consumer)
            if stop.stopped or self._reached_max():
                return False
            batch = self.batch_of(plan, replay=True)
            _LOGGER.info("replaying pending batch %d (%d offsets, %d segments)",
                         batch.batch_id, batch.planned_records, len(batch.segments))
            self._run_and_complete(batch, time.time(), time.monotonic(), 0.0)
        return True

    def _plan_and_run(self, stop: StopFlag) -> None:
        """Steps 2-5, batch after batch, until stopped, ``--max_batches``, or idle with
        :meth:`done_when_idle` (then :meth:`confirm_finished`)."""
        cfg = self.config
        batch_id = self.coordinator.next_batch_id()
        while not stop.stopped and not self._reached_max():
            self.check()
            kafka.serve_events(self.consumer)
            next_started = time.monotonic()
            trigger_time = time.time()
            # Step 2
            plan = self.next_plan(batch_id)
            if plan is None:
                self.heartbeat.beat("idle")
                self._bus.post("on_idle")
                if self.done_when_idle():
                    self.check()
                    self.confirm_finished()
                    return
                stop.sleep(self.idle_wait_s(next_started))
                continue
            plan.options_fingerprint = cfg.fingerprint()
            plan.created_ms = int(time.time() * 1000)
            plan = self.coordinator.write_plan(plan)
            crash_point("after_plan")
            self.heartbeat.beat(f"plan {plan.batch_id}")
            # Steps 3-5
            self._run_and_complete(self.batch_of(plan, replay=False), trigger_time,
                                   next_started, time.monotonic() - next_started)
            # This driver is the checkpoint's only writer (write_plan checks the fence and
            # the id): the next id needs no listing.
            batch_id = plan.batch_id + 1
            if cfg.trigger == "continuous":
                stop.sleep(max(0.0, cfg.batch_interval_s - (time.monotonic() - next_started)))

    def _start_metrics_server(self) -> Optional[MetricsServer]:
        """``--metrics_port``: serve /metrics and /healthz for the run (None without it)."""
        port = self.config.metrics_port
        if port is None:
            return None
        registry = CollectorRegistry()
        self._metrics = DriverMetrics(registry, lambda: self.commit_failures)
        self.register_metrics(registry)
        server = MetricsServer(port, registry, self.heartbeat, self.config.health_timeout_s)
        self.metrics_server = server.start()
        return server

    def _run_and_complete(self, batch: Batch, trigger_time: float, trigger_mono: float,
                          plan_s: float) -> None:
        """Steps 3-5 of a planned batch, then its progress record.

        Args:
            batch: the batch.
            trigger_time: wall-clock time its Step 2 began (``time.time()``).
            trigger_mono: the same on the monotonic clock.
            plan_s: seconds Step 2 took (0 for a replay: its plan was stored before).
        """
        t0 = time.monotonic()
        # Step 3
        counters, distributions, gauges = run_batch_pipeline_metrics(
            self.build_fn, self.options, batch, self.read(batch))
        records = counters.get(metrics.NAMESPACE, {}).get(metrics.RECORDS, 0)
        crash_point("after_run")
        t_run = time.monotonic()
        self.before_complete(batch)
        # Step 4
        self.coordinator.complete(batch.batch_id, records)
        crash_point("after_complete")
        t_complete = time.monotonic()
        # Step 5
        self.after_complete(batch)
        t_commit = time.monotonic()
        took = t_commit - t0
        self.summary.batches += 1
        self.summary.replayed += int(batch.replay)
        self.summary.records += records
        self.summary.batch_ids.append(batch.batch_id)
        self.progress.done(batch.ranges)
        durations = {"plan": plan_s, "run": t_run - t0, "complete": t_complete - t_run,
                     "commit": t_commit - t_complete, "total": plan_s + took}
        since = (trigger_mono - self._last_trigger if self._last_trigger is not None
                 else durations["total"])
        self._last_trigger = trigger_mono
        progress = self._batch_progress(batch, trigger_time, since, durations, counters,
                                        distributions, gauges)
        self._record(progress)
        self.heartbeat.beat(f"batch {batch.batch_id}")
        _LOGGER.info("batch %d%s done: %d records in %.1f s (%.0f records/s)%s",
                     batch.batch_id, " (replay)" if batch.replay else "", records, took,
                     records / took if took else 0.0, self.progress.describe(),
                     extra={"batch_id": batch.batch_id, "records": records})

    def _batch_progress(self, batch: Batch, trigger_time: float, since: float,
                        durations: dict[str, float],
                        counters: Counters, distributions: Distributions,
                        gauges: Counters) -> BatchProgress:
        ours = counters.get(metrics.NAMESPACE, {})
        records = ours.get(metrics.RECORDS, 0)
        latest = self.progress.ends()
        partitions = []
        for r in batch.ranges:
            end = latest.get((r.topic, r.partition))
            partitions.append(PartitionProgress(
                topic=r.topic, partition=r.partition, start_offset=r.start, end_offset=r.stop,
                latest_offset=end, records=r.stop - r.start,
                lag=None if end is None else max(0, end - r.stop)))
        lags = [p.lag for p in partitions]
        buffered, receiver_lag = self.receiver_status()
        return BatchProgress(
            batch_id=batch.batch_id, mode=checkpoint_pb2.Mode.Name(self.mode)
            .removeprefix("MODE_").lower(), replay=batch.replay,
            trigger_ms=int(trigger_time * 1000), partitions=tuple(partitions),
            records=records, bytes=ours.get(metrics.BYTES, 0),
            input_rows_per_s=round(records / since, 3) if since > 0 else 0.0,
            processed_rows_per_s=(round(records / durations["run"], 3)
                                  if durations["run"] > 0 else 0.0),
            durations_s={k: round(v, 6) for k, v in durations.items()},
            counters=counters, distributions=distributions, gauges=gauges,
            dead_letter_records=ours.get(metrics.DEAD_LETTER_RECORDS, 0),
            data_loss_records=ours.get(metrics.DATA_LOSS_RECORDS, 0),
            wal_segments=len(batch.segments),
            receiver_buffered_bytes=buffered, receiver_lag=receiver_lag,
            lag=None if not lags or any(x is None for x in lags)
            else sum(x for x in lags if x is not None))

    def _record(self, progress: BatchProgress) -> None:
        """Keep, store, count and announce a batch's progress (never fails the run)."""
        recent = self.summary.recent_progress
        recent.append(progress)
        del recent[:-self.config.retain_batches]
        merge_counters(self.summary.counters, progress.counters)
        merge_distributions(self.summary.distributions, progress.distributions)
        if self.history is not None:
            self.history.write(progress)
        if self._metrics is not None:
            try:
                self._metrics.observe(progress)
            except Exception:  # metrics are diagnostics
                _LOGGER.exception("could not update the metrics of batch %d", progress.batch_id)
        self._bus.post("on_progress", progress)

    def _reached_max(self) -> bool:
        return bool(self.config.max_batches) and self.summary.batches >= self.config.max_batches

    def _finish(self, started: float) -> RunSummary:
        self.summary.seconds = time.monotonic() - started
        _LOGGER.info("stopping after %d batches (%d replayed), %d records in %.1f s",
                     self.summary.batches, self.summary.replayed, self.summary.records,
                     self.summary.seconds)
        return self.summary
