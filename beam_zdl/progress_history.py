"""Progress history: the last ``--retain_batches`` BatchProgress records, kept in the
checkpoint directory so they outlive the process.

Each record is a checkpoint file of kind 5 (``progress/<batch_id>.json``, framed
and CRC-checked like every checkpoint file; layout in :mod:`beam_zdl.coordinator`).
They are diagnostics: writing one never fails a run (a failure is logged), and a
damaged one is reported by :func:`read_history` and skipped. ``beam-zdl inspect``
lists them and ``beam-zdl report`` charts them.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from beam_zdl.coordinator import CheckpointCoordinator
from beam_zdl.errors import CheckpointCorruptionError, StorageError
from beam_zdl.batch_progress import BatchProgress

__all__ = ["ProgressHistory", "History", "read_history"]

_LOGGER = logging.getLogger(__name__)


class ProgressHistory:
    """Writes each batch's progress record into the checkpoint directory (see module doc).

    Args:
        coordinator: the run's coordinator (its fence guards the writes).
        keep_last: records to keep (``--retain_batches``).
    """

    def __init__(self, coordinator: CheckpointCoordinator, keep_last: int) -> None:
        self._coordinator = coordinator
        self._keep_last = keep_last
        self._ids: list[int] | None = None  # the stored records' ids, listed once

    def write(self, progress: BatchProgress) -> bool:
        """Store ``progress``, then delete all but the last ``keep_last`` records; log and
        return False when that fails (never raises)."""
        try:
            if self._ids is None:
                self._ids = self._coordinator.progress_ids()
            self._coordinator.write_progress(progress.batch_id, progress.to_json())
            if progress.batch_id not in self._ids:
                self._ids.append(progress.batch_id)
                self._ids.sort()
            old, self._ids = self._ids[:-self._keep_last], self._ids[-self._keep_last:]
            self._coordinator.delete_progress(old)
            return True
        except (StorageError, OSError) as exc:
            self._ids = None  # list again next time
            _LOGGER.warning("could not store the progress record of batch %d in %s (the "
                            "batch is complete; only its diagnostics are missing): %s",
                            progress.batch_id, self._coordinator.checkpoint_dir, exc)
            return False


class History(NamedTuple):
    """What :func:`read_history` found: the records, oldest first, and the damaged files."""
    progress: list[BatchProgress]
    damaged: list[CheckpointCorruptionError]


def read_history(checkpoint_dir: str) -> History:
    """Every stored progress record of a checkpoint, checked; damaged ones reported apart.

    A record that retention removed meanwhile is passed over.
    """
    coordinator = CheckpointCoordinator(checkpoint_dir)
    found: list[BatchProgress] = []
    damaged: list[CheckpointCorruptionError] = []
    for batch_id in coordinator.progress_ids():
        try:
            doc = coordinator.read_progress(batch_id)
        except CheckpointCorruptionError as exc:
            damaged.append(exc)
            continue
        except StorageError:
            continue  # removed by retention meanwhile
        try:
            found.append(BatchProgress.from_dict(doc))
        except (KeyError, TypeError, ValueError) as exc:
            damaged.append(CheckpointCorruptionError(
                coordinator.progress_uri(batch_id), f"its CRC holds but it is not a batch "
                f"progress record ({type(exc).__name__}: {exc})",
                "It is skipped; progress records are diagnostics only."))
    return History(found, damaged)
