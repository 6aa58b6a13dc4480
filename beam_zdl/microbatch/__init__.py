"""The micro-batch model: :func:`run_micro_batches` and the loop both modes share.

``loop`` (the steps, :class:`BatchLoop`), ``direct_mode`` and ``wal_mode``
(each mode's plan, read and after-completion steps), ``run`` (picks the mode).
"""

from beam_zdl.microbatch.loop import (Batch, BatchLoop, BuildFn, RunSummary, StopFlag,
                                      current_batch)
from beam_zdl.microbatch.run import run_micro_batches

__all__ = ["Batch", "BatchLoop", "BuildFn", "RunSummary", "StopFlag", "current_batch",
           "run_micro_batches"]
