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
from beam_zdl.worker_pool import warm_workers

__all__ = ["run_micro_batches"]


def run_micro_batches(build_fn: BuildFn, options: PipelineOptions,
                      listeners: Sequence[ProgressListener] = ()) -> RunSummary:
    """Run batches until the trigger says stop; return what was done.

    Steps, each durable before the next begins:

    * Step 0: claim the checkpoint (config must match; a new epoch fences
      any older driver still running).
    * Step 1: re-run every planned-but-incomplete batch, same ranges, same id.
    * Step 2: plan the next input — direct mode: offset ranges from the last
      planned ends to the current end offsets; WAL mode: the sealed segments
      no plan holds (capped by ``--max_records_per_partition``); write the plan.
    * Step 3: build a pipeline with ``build_fn(records, batch)`` and run it to DONE.
    * Step 4: write the completion.
    * Step 5: direct mode: commit the consumer group's offsets to the batch's
      ends; WAL mode: delete segments of completed batches beyond
      ``--retain_batches`` (the receiver committed after each seal).

    ``--trigger=available_now`` stops once the end offsets seen at start are
    read; ``continuous`` plans a batch every ``--batch_interval_s``. Ctrl-C
    (or SIGTERM) stops cleanly after the current batch.

    Args:
        build_fn: adds the user's transforms and sink to ``records``, the
            PCollection of :class:`~beam_zdl.KafkaRecord` of ``batch``.
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
    with warm_workers(options):
        return loop(build_fn, options, config, listeners).run()
