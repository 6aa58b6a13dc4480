"""run_micro_batches: the entry point of the micro-batch model, in either mode.

The loop and its steps are in :mod:`beam_zdl.microbatch.loop`; each mode's
Steps 2, 3 and 5 in :mod:`~beam_zdl.microbatch.direct_mode` and
:mod:`~beam_zdl.microbatch.wal_mode`.
"""

from __future__ import annotations

from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from beam_zdl.batch_progress import ProgressListener

from beam_zdl.microbatch.direct_mode import DirectDriver
from beam_zdl.microbatch.loop import BuildFn, RunSummary
from beam_zdl.microbatch.wal_mode import WalDriver
from beam_zdl.options import ZdlConfig, warn_near_misses
from beam_zdl.runners import flink_job_server
from beam_zdl.worker_pool import warm_workers

__all__ = ["run_micro_batches"]


def run_micro_batches(build_fn: BuildFn, options: PipelineOptions,
                      listeners: Sequence[ProgressListener] = ()) -> RunSummary:
    """Run batches until the trigger says stop; return what was done.

    Steps 0–5, each durable before the next begins — claim the checkpoint, replay
    pending batches, plan, run, complete, commit — are described once, in
    :mod:`beam_zdl.microbatch.loop`; what each mode plans, reads and commits, in
    :mod:`~beam_zdl.microbatch.direct_mode` and :mod:`~beam_zdl.microbatch.wal_mode`.

    ``--trigger=available_now`` stops once the end offsets seen at start are
    read; ``continuous`` plans a batch every ``--batch_interval_s``. Ctrl-C
    (or SIGTERM) stops cleanly after the current batch.

    Args:
        build_fn: adds the user's transforms and sink to ``records``, the
            PCollection of :class:`~beam_zdl.KafkaRecord` of ``batch``; with
            ``--record_batches``, of ``List[KafkaRecord]`` record batches (one
            topic-partition each, offsets ascending, every record in exactly one).
        options: pipeline options with the ZdlOptions flags.
        listeners: :class:`~beam_zdl.ProgressListener` s told of the run's start, each
            batch's :class:`~beam_zdl.BatchProgress`, idle checks and the end, on a
            thread of their own (one that raises is logged; the run goes on).

    Returns:
        A :class:`RunSummary`.

    Raises:
        ConfigError: a bad flag. ConfigMismatchError: the checkpoint belongs
        to another configuration. CheckpointConflictError: a newer driver
        took over. DataLossError: planned records no longer exist.
    """
    warn_near_misses(options)
    config = ZdlConfig.from_options(options, need_checkpoint=True)
    loop = WalDriver if config.mode == "wal" else DirectDriver
    # Worker processes live for the run, not per batch; with 2 or more, the driver is one of
    # them (WAL mode's receiver is a process of its own: it does not share the driver's GIL).
    # On Flink, one job server for the run (not one JVM per batch).
    with warm_workers(options), flink_job_server(options):
        return loop(build_fn, options, config, listeners).run()
