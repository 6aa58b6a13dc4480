"""CheckpointCoordinator: config, epochs, batch plans and completions in one directory.

The checkpoint directory (any :func:`beam_zdl.storage.open_storage` URI) holds
only small create-once objects, so it survives code upgrades and works the
same on a local disk, GCS and HDFS::

    config.pb                       CheckpointConfig, written by the first driver
    epochs/<n:012d>                 one per driver start: {"owner": ..., "claimed_ms": ...}
    plans/<batch_id:012d>.pb        BatchPlan: the exact input of a batch
    completions/<batch_id:012d>.pb  Completion: the batch succeeded downstream

Protocol (see DESIGN.md, "The contract"):

1. ``open(config)`` checks the config against the stored one, then claims the
   next epoch create-once: among racing drivers exactly one gets each epoch.
2. Before every write (plan, completion) the coordinator checks that no newer
   epoch exists; if one does, this driver is a zombie and gets
   :class:`CheckpointConflictError`.
3. Plans and completions are create-once, so of two drivers planning the
   same batch exactly one wins; the other gets CheckpointConflictError and
   must replay ``pending()`` instead.
4. On restart, ``pending()`` (planned, not completed) is replayed, in batch
   id order, before ``next_batch_id()`` is planned.

Listing is used to find the newest epoch and the batches; at the scale of a
checkpoint directory (a few hundred objects after ``retain``) that is cheap.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from beam_zdl.errors import (CheckpointConflictError, ConfigMismatchError, ObjectExistsError,
                             ZdlError)
from beam_zdl.storage import Storage, open_storage
from beam_zdl.v1 import checkpoint_pb2

__all__ = ["CONFIG_FORMAT_VERSION", "CheckpointCoordinator", "EpochClaim"]

_LOGGER = logging.getLogger(__name__)

CONFIG_FORMAT_VERSION = 1
_CONFIG = "config.pb"
_EPOCHS = "epochs/"
_PLANS = "plans/"
_COMPLETIONS = "completions/"


def _ids(storage: Storage, prefix: str, suffix: str = "") -> list[int]:
    out = []
    for info in storage.list(prefix):
        stem = info.name[len(prefix):]
        if suffix:
            if not stem.endswith(suffix):
                continue
            stem = stem[:-len(suffix)]
        if stem.isdigit() and "/" not in stem:
            out.append(int(stem))
    return sorted(out)


class EpochClaim(dict):
    """What an epoch object holds: ``owner`` (host:pid[:name]) and ``claimed_ms``."""


class CheckpointCoordinator:
    """The single writer of a checkpoint directory's metadata, fenced by epochs.

    Typical driver loop::

        coord = CheckpointCoordinator(options.checkpoint_dir)
        coord.open(config)
        for plan in coord.pending():            # replay identically first
            run(plan); coord.complete(plan.batch_id, records)
        while True:
            plan = coord.write_plan(BatchPlan(batch_id=coord.next_batch_id(), ...))
            run(plan); coord.complete(plan.batch_id, records)
    """

    def __init__(self, checkpoint_dir: str, owner: str | None = None) -> None:
        """Point a coordinator at a checkpoint directory; nothing is written until :meth:`open`.

        Args:
            checkpoint_dir: any URI :func:`open_storage` accepts.
            owner: a name for this driver, recorded with its epoch and shown to the drivers
                it fences (default ``host:pid``).
        """
        self.checkpoint_dir = checkpoint_dir
        self.storage: Storage = open_storage(checkpoint_dir)
        base = f"{socket.gethostname()}:{os.getpid()}"
        self.owner = f"{base}:{owner}" if owner else base
        self.epoch: int | None = None

    # --- open -----------------------------------------------------------------------------

    def open(self, config: checkpoint_pb2.CheckpointConfig) -> int:
        """Check the configuration and claim this driver's epoch.

        Steps:
            1. Write ``config`` create-once; if one is stored, compare topics, mode,
               consumer group and WAL dir, and refuse a mismatch.
            2. Claim the next epoch create-once (on a race, try the following one).

        Args:
            config: what this run reads; ``format_version`` and ``created_ms`` are filled in
                when unset.

        Returns:
            This driver's epoch (1 for the first driver of a directory).

        Raises:
            ConfigMismatchError: the stored config differs; names the fields and the directory.
        """
        # Step 1
        config = checkpoint_pb2.CheckpointConfig.FromString(config.SerializeToString())
        config.format_version = config.format_version or CONFIG_FORMAT_VERSION
        config.created_ms = config.created_ms or int(time.time() * 1000)
        try:
            self.storage.create(_CONFIG, config.SerializeToString())
        except ObjectExistsError:
            self._check_config(config, self.read_config())
        # Step 2
        epoch = self.current_epoch() + 1
        claim = json.dumps({"owner": self.owner, "claimed_ms": int(time.time() * 1000)})
        while True:
            try:
                self.storage.create(f"{_EPOCHS}{epoch:012d}", claim.encode())
                break
            except ObjectExistsError:
                epoch += 1
        self.epoch = epoch
        _LOGGER.info("checkpoint %s: %s claimed epoch %d", self.checkpoint_dir, self.owner, epoch)
        return epoch

    def _check_config(self, ours: checkpoint_pb2.CheckpointConfig,
                      stored: checkpoint_pb2.CheckpointConfig) -> None:
        mode = checkpoint_pb2.Mode.Name
        diffs = []
        if sorted(ours.topics) != sorted(stored.topics):
            diffs.append(f"topics: checkpoint has {sorted(stored.topics)}, "
                         f"this run has {sorted(ours.topics)}")
        if ours.mode != stored.mode:
            diffs.append(f"mode: checkpoint has {mode(stored.mode)}, this run has {mode(ours.mode)}")
        if ours.consumer_group != stored.consumer_group:
            diffs.append(f"consumer group: checkpoint has {stored.consumer_group!r}, "
                         f"this run has {ours.consumer_group!r}")
        if ours.wal_dir != stored.wal_dir:
            diffs.append(f"WAL dir: checkpoint has {stored.wal_dir!r}, this run has {ours.wal_dir!r}")
        if stored.format_version > CONFIG_FORMAT_VERSION:
            diffs.append(f"format version: checkpoint has {stored.format_version}, this code "
                         f"reads up to {CONFIG_FORMAT_VERSION} (upgrade beam_zdl)")
        if diffs:
            raise ConfigMismatchError(
                f"checkpoint {self.checkpoint_dir} was created for a different configuration: "
                + "; ".join(diffs) + ". Restore the original flags, or use a new "
                "--checkpoint_dir to start over (that re-reads from the committed offsets).")

    # --- reads ----------------------------------------------------------------------------

    def read_config(self) -> checkpoint_pb2.CheckpointConfig:
        """The stored configuration.

        Raises:
            StorageError: the directory has no config (not a checkpoint, or never opened).
        """
        return checkpoint_pb2.CheckpointConfig.FromString(self.storage.read(_CONFIG))

    def has_config(self) -> bool:
        """True when the directory holds a checkpoint config."""
        return self.storage.exists(_CONFIG)

    def current_epoch(self) -> int:
        """The newest claimed epoch, 0 when none was claimed yet."""
        epochs = _ids(self.storage, _EPOCHS)
        return epochs[-1] if epochs else 0

    def epoch_claim(self, epoch: int) -> EpochClaim:
        """Who claimed ``epoch`` and when (``owner``, ``claimed_ms``)."""
        try:
            return EpochClaim(json.loads(self.storage.read(f"{_EPOCHS}{epoch:012d}")))
        except ValueError:
            return EpochClaim(owner="<unreadable>", claimed_ms=0)

    def planned_ids(self) -> list[int]:
        """Ids of every batch with a stored plan, ascending."""
        return _ids(self.storage, _PLANS, ".pb")

    def completed_ids(self) -> list[int]:
        """Ids of every batch with a stored completion, ascending."""
        return _ids(self.storage, _COMPLETIONS, ".pb")

    def read_plan(self, batch_id: int) -> checkpoint_pb2.BatchPlan:
        """The stored plan of ``batch_id``.

        Raises:
            StorageError: there is none.
        """
        return checkpoint_pb2.BatchPlan.FromString(self.storage.read(_plan_name(batch_id)))

    def read_completion(self, batch_id: int) -> checkpoint_pb2.Completion:
        """The stored completion of ``batch_id``.

        Raises:
            StorageError: there is none.
        """
        return checkpoint_pb2.Completion.FromString(self.storage.read(_completion_name(batch_id)))

    def pending(self) -> list[checkpoint_pb2.BatchPlan]:
        """Plans without a completion, by ascending batch id: replay these first."""
        done = set(self.completed_ids())
        return [self.read_plan(i) for i in self.planned_ids() if i not in done]

    def next_batch_id(self) -> int:
        """One more than the highest planned (or completed) batch id; 0 for a new checkpoint."""
        ids = self.planned_ids() + self.completed_ids()
        return max(ids) + 1 if ids else 0

    def last_completed(self) -> checkpoint_pb2.Completion | None:
        """The completion with the highest batch id, or None."""
        done = self.completed_ids()
        return self.read_completion(done[-1]) if done else None

    # --- writes ---------------------------------------------------------------------------

    def check_fence(self) -> None:
        """Raise unless this driver still holds the newest epoch.

        Raises:
            CheckpointConflictError: a newer driver claimed the directory; this one must stop.
            ZdlError: :meth:`open` was not called.
        """
        if self.epoch is None:
            raise ZdlError(f"checkpoint {self.checkpoint_dir}: call open(config) before writing")
        newest = self.current_epoch()
        if newest > self.epoch:
            claim = self.epoch_claim(newest)
            raise CheckpointConflictError(
                f"checkpoint {self.checkpoint_dir}: this driver ({self.owner}, epoch {self.epoch}) "
                f"is fenced by epoch {newest}, written by {claim.get('owner')} at "
                f"{claim.get('claimed_ms')} ms. Another driver took over this checkpoint; stop "
                "this one (two drivers on one --checkpoint_dir is not allowed).")

    def write_plan(self, plan: checkpoint_pb2.BatchPlan) -> checkpoint_pb2.BatchPlan:
        """Store a batch's plan create-once, before any of its records is processed.

        Args:
            plan: the batch's exact input; ``epoch`` is set to this driver's and ``created_ms``
                filled in when unset.

        Returns:
            The plan as stored.

        Raises:
            CheckpointConflictError: fenced by a newer epoch, or this batch id is already planned
                (another driver won the race: replay :meth:`pending` instead).
            ValueError: ``batch_id`` skips ids (it must be at most :meth:`next_batch_id`).
        """
        self.check_fence()
        plan = checkpoint_pb2.BatchPlan.FromString(plan.SerializeToString())
        plan.epoch = self.epoch
        plan.created_ms = plan.created_ms or int(time.time() * 1000)
        expected = self.next_batch_id()
        if plan.batch_id > expected:
            raise ValueError(f"checkpoint {self.checkpoint_dir}: batch id {plan.batch_id} skips "
                             f"ids; the next batch id is {expected} (use next_batch_id())")
        try:
            self.storage.create(_plan_name(plan.batch_id), plan.SerializeToString())
        except ObjectExistsError:
            other = self.read_plan(plan.batch_id)
            raise CheckpointConflictError(
                f"checkpoint {self.checkpoint_dir}: batch {plan.batch_id} was already planned by "
                f"epoch {other.epoch} (this driver has epoch {self.epoch}). Replay pending() "
                "before planning new batches, and never run two drivers on one checkpoint."
            ) from None
        _LOGGER.info("checkpoint %s: planned batch %d (%d ranges, %d segments)",
                     self.checkpoint_dir, plan.batch_id, len(plan.ranges), len(plan.segments))
        return plan

    def complete(self, batch_id: int, records: int) -> checkpoint_pb2.Completion:
        """Mark a planned batch complete, after everything downstream of it succeeded.

        A completion already stored for ``batch_id`` (a replay of a batch an older driver
        finished) is kept and returned: the batch is done either way.

        Args:
            batch_id: a planned batch.
            records: how many records the batch processed (for inspection and metrics).

        Returns:
            The stored completion.

        Raises:
            CheckpointConflictError: fenced by a newer epoch.
            ZdlError: the batch has no plan.
        """
        self.check_fence()
        if not self.storage.exists(_plan_name(batch_id)):
            raise ZdlError(f"checkpoint {self.checkpoint_dir}: batch {batch_id} has no plan; "
                           "only planned batches can be completed (write_plan first)")
        done = checkpoint_pb2.Completion(batch_id=batch_id, completed_ms=int(time.time() * 1000),
                                         records=records, epoch=self.epoch)
        try:
            self.storage.create(_completion_name(batch_id), done.SerializeToString())
        except ObjectExistsError:
            done = self.read_completion(batch_id)
            _LOGGER.warning("checkpoint %s: batch %d was already completed by epoch %d; keeping "
                            "that completion", self.checkpoint_dir, batch_id, done.epoch)
        return done

    def retain(self, keep_last: int) -> list[int]:
        """Delete the metadata of completed batches older than the last ``keep_last`` completed.

        Pending batches are never deleted. A batch's plan is deleted before its completion,
        so a crash in between never makes a completed batch look pending.

        Args:
            keep_last: completed batches to keep, at least 1 (the newest completed id keeps
                batch ids from being reused).

        Returns:
            The batch ids removed, ascending.

        Raises:
            ValueError: ``keep_last`` < 1.
            CheckpointConflictError: fenced by a newer epoch.
        """
        if keep_last < 1:
            raise ValueError(f"retain(keep_last={keep_last}): keep at least 1 completed batch, "
                             "or batch ids could be reused")
        self.check_fence()
        done = self.completed_ids()
        removed = done[:-keep_last]
        for batch_id in removed:
            self.storage.delete(_plan_name(batch_id))
            self.storage.delete(_completion_name(batch_id))
        if removed:
            _LOGGER.info("checkpoint %s: removed metadata of batches %d..%d",
                         self.checkpoint_dir, removed[0], removed[-1])
        return removed


def _plan_name(batch_id: int) -> str:
    return f"{_PLANS}{batch_id:012d}.pb"


def _completion_name(batch_id: int) -> str:
    return f"{_COMPLETIONS}{batch_id:012d}.pb"
