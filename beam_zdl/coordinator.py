"""CheckpointCoordinator: config, epochs, batch plans and completions in one directory.

The checkpoint directory (any :func:`beam_zdl.storage.open_storage` URI) holds
only small create-once files, so it survives code upgrades and works the
same on a local disk, GCS and HDFS::

    config.pb                       CheckpointConfig, written by the first driver
    epochs/<n:012d>                 one per driver start: {"epoch", "owner", "claimed_ms"} (JSON)
    plans/<batch_id:012d>.pb        BatchPlan: the exact input of a batch
    completions/<batch_id:012d>.pb  Completion: the batch succeeded downstream
    progress/<batch_id:012d>.json   BatchProgress (UTF-8 JSON): what the batch did, for
                                    people (``beam-zdl inspect``, ``beam-zdl report``)

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
Fencing compares epoch *names*, so a damaged epoch file never makes a newer
driver look older.

File format (format 2)
----------------------

Every file is framed, whatever its payload; integers are little-endian and
``mcrc(b)`` is the masked CRC32C of :func:`beam_zdl.framing.mcrc` (the WAL's)::

    offset  size  meaning
    0       7     magic b"BZDLCKP" (WAL segments start with b"BZDLWAL": never confused)
    7       1     format version = 2 (format 1 was unframed protobuf/JSON)
    8       1     kind: 1 config (CheckpointConfig), 2 epoch claim (UTF-8 JSON),
                        3 plan (BatchPlan), 4 completion (Completion),
                        5 progress (BatchProgress as UTF-8 JSON)
    9       4     N = payload length, uint32
    13      N     payload: the serialized message (protos/beam_zdl/v1/checkpoint.proto)
    13+N    4     CRC = mcrc(bytes[0, 13+N)): guards magic, version, kind, length, payload

A file must be exactly ``17 + N`` bytes. The kind must be the one its name
says (a completion is never read as a plan), and a plan's or completion's
batch id (an epoch's number) must be the one in its name. Any failure —
bad magic, unknown version, a length that disagrees with the file's size
(truncation), CRC mismatch, wrong kind, undecodable payload, wrong id —
raises :class:`CheckpointCorruptionError` naming the file, what is wrong and
what to do; nothing of the file is used. CRC32C detects every burst error of
up to 32 bits, so every single flipped bit and every truncation is caught
(``tests/test_checkpoint_format.py`` checks each one).

Progress files are diagnostics, never read to decide anything: they are written
after the batch's completion (a failure to write one is logged, and the run goes
on), kept for the last ``--retain_batches`` batches, and a damaged one is
reported by ``beam-zdl inspect`` and skipped (:meth:`CheckpointCoordinator.read_progress`
raises the same :class:`CheckpointCorruptionError` as for any other file).

When files are checked: ``open`` reads the config and the newest epoch;
``pending`` reads every retained plan and completion; every other read checks
the file it reads. ``beam-zdl inspect`` checks them all and lists the damaged.

Format 1 (beam_zdl before this format: unframed files) is refused with
:class:`UnsupportedCheckpointFormatError`, never read on the fly: a damaged
format-2 file must never be mistaken for an unchecked format-1 one. Convert
explicitly with ``beam-zdl migrate OLD_DIR NEW_DIR``
(:func:`migrate_format1`), which copies the checkpoint into a new directory
and leaves the old one untouched.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import socket
import struct
import time
from typing import Any, Callable, Iterator, TypeVar

from google.protobuf.message import DecodeError, Message

from beam_zdl.errors import (CheckpointConflictError, CheckpointCorruptionError,
                             ConfigMismatchError, ObjectExistsError, StorageError,
                             UnsupportedCheckpointFormatError, ZdlError)
from beam_zdl.framing import mcrc
from beam_zdl.storage import Storage, open_storage
from beam_zdl.v1 import checkpoint_pb2

__all__ = ["CONFIG_FORMAT_VERSION", "FORMAT_VERSION", "MAGIC", "KIND_CONFIG", "KIND_EPOCH",
           "KIND_PLAN", "KIND_COMPLETION", "KIND_PROGRESS", "CheckpointCoordinator", "EpochClaim",
           "encode_checkpoint_file", "decode_checkpoint_file", "migrate_format1"]

_LOGGER = logging.getLogger(__name__)

FORMAT_VERSION = 2
CONFIG_FORMAT_VERSION = FORMAT_VERSION  # CheckpointConfig.format_version of new checkpoints
MAGIC = b"BZDLCKP"
KIND_CONFIG = 1
KIND_EPOCH = 2
KIND_PLAN = 3
KIND_COMPLETION = 4
KIND_PROGRESS = 5
_KIND_NAMES = {KIND_CONFIG: "config", KIND_EPOCH: "epoch claim", KIND_PLAN: "batch plan",
               KIND_COMPLETION: "completion", KIND_PROGRESS: "batch progress"}

_HEAD = struct.Struct("<7sBBI")  # magic, format version, kind, payload length
_CRC = struct.Struct("<I")
_OVERHEAD = _HEAD.size + _CRC.size  # 17 bytes per file
# A format-1 config.pb: unframed CheckpointConfig whose first field is format_version = 1.
_FORMAT1_CONFIG_PREFIX = b"\x08\x01"
_READ_THREADS = 8

_CONFIG = "config.pb"
_EPOCHS = "epochs/"
_PLANS = "plans/"
_COMPLETIONS = "completions/"
_PROGRESS = "progress/"

_M = TypeVar("_M", bound=Message)
_T = TypeVar("_T")
_R = TypeVar("_R")


def encode_checkpoint_file(kind: int, payload: bytes) -> bytes:
    """A checkpoint file's bytes: header, payload, CRC (see the module docstring).

    Args:
        kind: ``KIND_CONFIG``, ``KIND_EPOCH``, ``KIND_PLAN`` or ``KIND_COMPLETION``.
        payload: the serialized message.

    Returns:
        ``len(payload) + 17`` bytes.
    """
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, kind, len(payload)) + payload
    return head + _CRC.pack(mcrc(head))


def _problem(data: bytes, kind: int) -> str | None:
    """What is wrong with a checkpoint file's bytes, or None when they check out."""
    n = len(data)
    if data[:len(MAGIC)] != MAGIC:
        if n < len(MAGIC) and MAGIC.startswith(data):
            return f"truncated to {n} bytes, shorter than the {_OVERHEAD}-byte frame"
        return (f"bad magic {bytes(data[:len(MAGIC) + 1])!r} (expected {MAGIC!r} + format "
                "version: not a beam_zdl checkpoint file of format 2, or damaged)")
    if n == len(MAGIC):
        return f"truncated to {n} bytes, shorter than the {_OVERHEAD}-byte frame"
    if data[len(MAGIC)] != FORMAT_VERSION:
        return (f"unknown format version {data[len(MAGIC)]} (this beam_zdl reads format "
                f"{FORMAT_VERSION}: a newer beam_zdl wrote it, or the byte is damaged)")
    if n < _OVERHEAD:
        return f"truncated to {n} bytes, shorter than the {_OVERHEAD}-byte frame"
    _, _, stored_kind, length = _HEAD.unpack_from(data)
    if n != _OVERHEAD + length:
        return (f"size mismatch: the header announces a {length}-byte payload, so the file "
                f"should be {_OVERHEAD + length} bytes, but it has {n} (truncated, extended, "
                "or the length is damaged)")
    stored_crc = _CRC.unpack_from(data, n - _CRC.size)[0]
    actual_crc = mcrc(data[:n - _CRC.size])
    if stored_crc != actual_crc:
        return f"CRC32C mismatch (stored {stored_crc:#010x}, computed {actual_crc:#010x})"
    if stored_kind != kind:
        return (f"it holds a {_KIND_NAMES.get(stored_kind, f'kind-{stored_kind}')}, not a "
                f"{_KIND_NAMES[kind]} (a file copied to the wrong name?)")
    return None


def _damaged_advice(checkpoint_dir: str | None) -> str:
    where = checkpoint_dir or "<checkpoint_dir>"
    return ("Nothing in it was used. `beam-zdl inspect " + where + "` lists every damaged "
            "file. Restore this file from a copy and restart, or start over with a new "
            "--checkpoint_dir (that re-reads from the consumer group's committed offsets).")


def decode_checkpoint_file(data: bytes, kind: int, uri: str = "<bytes>",
                           checkpoint_dir: str | None = None) -> bytes:
    """Check a checkpoint file's frame and return its payload.

    Args:
        data: the whole file.
        kind: the kind its name says it holds.
        uri: where it came from, for the error.
        checkpoint_dir: its directory, for the error's advice.

    Returns:
        The payload, verified (magic, format version, size, CRC32C and kind).

    Raises:
        CheckpointCorruptionError: the file fails a check; names ``uri`` and the check.
    """
    problem = _problem(data, kind)
    if problem is not None:
        raise CheckpointCorruptionError(uri, problem, _damaged_advice(checkpoint_dir))
    return bytes(data[_HEAD.size:len(data) - _CRC.size])


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


class EpochClaim(dict[str, Any]):
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
            1. Write ``config`` create-once; if one is stored, check its file (see the module
               docstring), compare topics, mode, consumer group and WAL dir, and refuse a
               mismatch.
            2. Check the newest epoch's file; claim the next epoch create-once (on a race, try
               the following one).

        Args:
            config: what this run reads; ``format_version`` is set to the format this code
                writes and ``created_ms`` filled in when unset.

        Returns:
            This driver's epoch (1 for the first driver of a directory).

        Raises:
            ConfigMismatchError: the stored config differs; names the fields and the directory.
            CheckpointCorruptionError: the stored config or newest epoch file is damaged
                (:class:`UnsupportedCheckpointFormatError`: a format-1 checkpoint).
        """
        # Step 1
        config = checkpoint_pb2.CheckpointConfig.FromString(config.SerializeToString())
        config.format_version = CONFIG_FORMAT_VERSION
        config.created_ms = config.created_ms or int(time.time() * 1000)
        try:
            self.storage.create(_CONFIG, encode_checkpoint_file(KIND_CONFIG,
                                                                config.SerializeToString()))
        except ObjectExistsError:
            self._check_config(config, self.read_config())
        # Step 2
        epoch = self.current_epoch()
        if epoch:
            self.epoch_claim(epoch)
        epoch += 1
        while True:
            claim = json.dumps({"epoch": epoch, "owner": self.owner,
                                "claimed_ms": int(time.time() * 1000)})
            try:
                self.storage.create(_epoch_name(epoch),
                                    encode_checkpoint_file(KIND_EPOCH, claim.encode()))
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

    def _read(self, name: str, kind: int) -> bytes:
        """The checked payload of a checkpoint file (see the module docstring)."""
        data = self.storage.read(name)
        uri = self.storage.uri(name)
        if not data.startswith(MAGIC) and self._is_format1(name, data):
            raise UnsupportedCheckpointFormatError(
                uri, "it is in format 1 (unframed, no checksum), written by a beam_zdl older "
                f"than checksummed checkpoint files; this version reads format {FORMAT_VERSION}",
                "Stop every driver and receiver using this checkpoint, then run `beam-zdl "
                f"migrate {self.checkpoint_dir} NEW_DIR` and restart with "
                "--checkpoint_dir=NEW_DIR (the old directory is left as it was; delete it "
                "once the new one works).")
        return decode_checkpoint_file(data, kind, uri, self.checkpoint_dir)

    def _is_format1(self, name: str, data: bytes) -> bool:
        """Whether this directory's config is an unframed format-1 config (never a damaged
        format-2 file: those start with the magic)."""
        if name != _CONFIG:
            try:
                data = self.storage.read(_CONFIG)
            except StorageError:
                return False
        return data.startswith(_FORMAT1_CONFIG_PREFIX)

    def _parse(self, message: type[_M], name: str, kind: int) -> _M:
        payload = self._read(name, kind)
        try:
            return message.FromString(payload)
        except DecodeError as exc:  # the CRC held, so only a writer bug gets here
            raise CheckpointCorruptionError(
                self.storage.uri(name), f"its CRC holds but the {_KIND_NAMES[kind]} does not "
                f"decode ({exc})", _damaged_advice(self.checkpoint_dir)) from None

    def _check_id(self, name: str, what: str, stored: int, expected: int) -> None:
        if stored != expected:
            raise CheckpointCorruptionError(
                self.storage.uri(name), f"it holds the {what} of {stored}, not of {expected} "
                "(a file copied to the wrong name?)", _damaged_advice(self.checkpoint_dir))

    def read_config(self) -> checkpoint_pb2.CheckpointConfig:
        """The stored configuration.

        Raises:
            StorageError: the directory has no config (not a checkpoint, or never opened).
            CheckpointCorruptionError: the config file is damaged or in another format.
        """
        return self._parse(checkpoint_pb2.CheckpointConfig, _CONFIG, KIND_CONFIG)

    def has_config(self) -> bool:
        """True when the directory holds a checkpoint config."""
        return self.storage.exists(_CONFIG)

    def current_epoch(self) -> int:
        """The newest claimed epoch, 0 when none was claimed yet."""
        epochs = _ids(self.storage, _EPOCHS)
        return epochs[-1] if epochs else 0

    def epoch_claim(self, epoch: int) -> EpochClaim:
        """Who claimed ``epoch`` and when (``owner``, ``claimed_ms``).

        Raises:
            StorageError: there is no such epoch.
            CheckpointCorruptionError: its file is damaged.
        """
        name = _epoch_name(epoch)
        claim = self._read_object(name, KIND_EPOCH, "epoch claim",
                                  _damaged_advice(self.checkpoint_dir))
        self._check_id(name, "epoch claim", claim.get("epoch", epoch), epoch)
        return EpochClaim(claim)

    def planned_ids(self) -> list[int]:
        """Ids of every batch with a stored plan, ascending."""
        return _ids(self.storage, _PLANS, ".pb")

    def completed_ids(self) -> list[int]:
        """Ids of every batch with a stored completion, ascending."""
        return _ids(self.storage, _COMPLETIONS, ".pb")

    def read_plan(self, batch_id: int) -> checkpoint_pb2.BatchPlan:
        """The stored plan of ``batch_id``, checked.

        Raises:
            StorageError: there is none.
            CheckpointCorruptionError: its file is damaged (never parsed as some other plan).
        """
        name = _plan_name(batch_id)
        plan = self._parse(checkpoint_pb2.BatchPlan, name, KIND_PLAN)
        self._check_id(name, "plan", plan.batch_id, batch_id)
        return plan

    def retained_plans(self) -> Iterator[checkpoint_pb2.BatchPlan]:
        """Every stored plan, by ascending id; one that retention removed meanwhile is
        passed over (a damaged one raises, as in :meth:`read_plan`)."""
        for batch_id in self.planned_ids():
            try:
                yield self.read_plan(batch_id)
            except StorageError:
                continue

    def read_completion(self, batch_id: int) -> checkpoint_pb2.Completion:
        """The stored completion of ``batch_id``, checked.

        Raises:
            StorageError: there is none.
            CheckpointCorruptionError: its file is damaged.
        """
        name = _completion_name(batch_id)
        done = self._parse(checkpoint_pb2.Completion, name, KIND_COMPLETION)
        self._check_id(name, "completion", done.batch_id, batch_id)
        return done

    def pending(self) -> list[checkpoint_pb2.BatchPlan]:
        """Plans without a completion, by ascending batch id: replay these first.

        Every retained plan and completion is read and checked (in parallel), so a damaged
        one stops a driver at its start instead of being skipped. Only a *completed*
        batch's files removed meanwhile (retention by another process) are passed over.

        Raises:
            CheckpointCorruptionError: a plan or completion file is damaged.
            StorageError: a pending batch's plan cannot be read.
        """
        done = set(self.completed_ids())
        self._map(lambda i: self._read_or_none(self.read_completion, _completion_name(i), i),
                  sorted(done))
        planned = self.planned_ids()
        plans = self._map(lambda i: (self._read_or_none(self.read_plan, _plan_name(i), i)
                                     if i in done else self.read_plan(i)), planned)
        # A pending plan was read with read_plan, which raises rather than give None.
        return [plan for i, plan in zip(planned, plans) if i not in done and plan is not None]

    def _read_or_none(self, read: Callable[[int], _T], name: str, batch_id: int) -> _T | None:
        try:
            return read(batch_id)
        except StorageError:
            if self.storage.exists(name):
                raise
            return None  # removed by retention meanwhile

    @staticmethod
    def _map(fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
        if len(items) < 2:
            return [fn(i) for i in items]
        with concurrent.futures.ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
            return list(pool.map(fn, items))

    def damaged_files(self) -> list[CheckpointCorruptionError]:
        """Check every file of the directory (config, epochs, plans, completions).

        Returns:
            One error per file that fails its check, by URI; empty when all check out. A
            format-1 directory gives only its config's :class:`UnsupportedCheckpointFormatError`.
        """
        def check(job: tuple[Callable[[int], object], str, int]) -> CheckpointCorruptionError | None:
            read, name, arg = job
            try:
                self._read_or_none(read, name, arg)
            except CheckpointCorruptionError as exc:
                return exc
            return None

        if self.has_config():
            found = check((lambda _: self.read_config(), _CONFIG, 0))
            if isinstance(found, UnsupportedCheckpointFormatError):
                return [found]
        else:
            found = None
        jobs = ([(self.epoch_claim, _epoch_name(i), i) for i in _ids(self.storage, _EPOCHS)]
                + [(self.read_plan, _plan_name(i), i) for i in self.planned_ids()]
                + [(self.read_completion, _completion_name(i), i) for i in self.completed_ids()])
        problems = [found] + self._map(check, jobs)
        return sorted((p for p in problems if p is not None), key=lambda p: p.uri)

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
            try:
                claim = self.epoch_claim(newest)
                by = f"written by {claim.get('owner')} at {claim.get('claimed_ms')} ms"
            except CheckpointCorruptionError as exc:  # fenced all the same: names are enough
                by = f"whose file is damaged ({exc.reason}: {exc.uri})"
            raise CheckpointConflictError(
                f"checkpoint {self.checkpoint_dir}: this driver ({self.owner}, epoch {self.epoch}) "
                f"is fenced by epoch {newest}, {by}. Another driver took over this checkpoint; "
                "stop this one (two drivers on one --checkpoint_dir is not allowed).")

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
        assert self.epoch is not None  # check_fence raised otherwise
        plan = checkpoint_pb2.BatchPlan.FromString(plan.SerializeToString())
        plan.epoch = self.epoch
        plan.created_ms = plan.created_ms or int(time.time() * 1000)
        expected = self.next_batch_id()
        if plan.batch_id > expected:
            raise ValueError(f"checkpoint {self.checkpoint_dir}: batch id {plan.batch_id} skips "
                             f"ids; the next batch id is {expected} (use next_batch_id())")
        try:
            self.storage.create(_plan_name(plan.batch_id),
                                encode_checkpoint_file(KIND_PLAN, plan.SerializeToString()))
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
            self.storage.create(_completion_name(batch_id),
                                encode_checkpoint_file(KIND_COMPLETION, done.SerializeToString()))
        except ObjectExistsError:
            done = self.read_completion(batch_id)
            _LOGGER.warning("checkpoint %s: batch %d was already completed by epoch %d; keeping "
                            "that completion", self.checkpoint_dir, batch_id, done.epoch)
        return done

    # --- progress (diagnostics) -----------------------------------------------------------

    def progress_ids(self) -> list[int]:
        """Ids of every batch with a stored progress record, ascending."""
        return _ids(self.storage, _PROGRESS, ".json")

    def progress_uri(self, batch_id: int) -> str:
        """Where ``batch_id``'s progress record is (or would be) stored."""
        return self.storage.uri(_progress_name(batch_id))

    def write_progress(self, batch_id: int, progress_json: str) -> None:
        """Store a completed batch's progress record.

        No fence check: the batch's completion was just written under one, and a record is
        diagnostics. A record already stored for ``batch_id`` (a batch completed twice, by
        a fenced driver and its successor) is replaced.

        Args:
            batch_id: the batch the record describes.
            progress_json: its :meth:`BatchProgress.to_json`.

        Raises:
            StorageError: the storage failed (the caller logs it: progress is diagnostics).
        """
        name = _progress_name(batch_id)
        data = encode_checkpoint_file(KIND_PROGRESS, progress_json.encode())
        try:
            self.storage.create(name, data)
        except ObjectExistsError:
            self.storage.delete(name)
            self.storage.create(name, data)

    def delete_progress(self, batch_ids: list[int]) -> None:
        """Delete the progress records of ``batch_ids`` (retention); missing ones are fine."""
        for batch_id in batch_ids:
            self.storage.delete(_progress_name(batch_id))

    def _read_object(self, name: str, kind: int, what: str, advice: str) -> dict[str, Any]:
        """A checked file whose payload is a JSON object (epoch claims, progress records)."""
        payload = self._read(name, kind)
        try:
            doc = json.loads(payload)
            if not isinstance(doc, dict):
                raise ValueError(f"a JSON {type(doc).__name__}, not an object")
        except ValueError as exc:  # the CRC held, so only a writer bug gets here
            raise CheckpointCorruptionError(
                self.storage.uri(name), f"its CRC holds but the {what} is not a JSON object "
                f"({exc})", advice) from None
        return doc

    def read_progress(self, batch_id: int) -> dict[str, Any]:
        """The stored progress record of ``batch_id``, checked, as a JSON object.

        Raises:
            StorageError: there is none.
            CheckpointCorruptionError: its file is damaged (report and skip it: progress
                records are diagnostics).
        """
        name = _progress_name(batch_id)
        doc = self._read_object(name, KIND_PROGRESS, "progress record",
                                "It is skipped; progress records are diagnostics only.")
        self._check_id(name, "progress record", doc.get("batch_id", batch_id), batch_id)
        return doc

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


def _epoch_name(epoch: int) -> str:
    return f"{_EPOCHS}{epoch:012d}"


def _plan_name(batch_id: int) -> str:
    return f"{_PLANS}{batch_id:012d}.pb"


def _completion_name(batch_id: int) -> str:
    return f"{_COMPLETIONS}{batch_id:012d}.pb"


def _progress_name(batch_id: int) -> str:
    return f"{_PROGRESS}{batch_id:012d}.json"


def migrate_format1(old_dir: str, new_dir: str) -> list[str]:
    """Copy a format-1 (unframed) checkpoint into a new directory in the current format.

    Steps:
        1. Refuse unless ``old_dir``'s config is a format-1 config and no file of it is
           framed already (a directory a newer driver wrote into is not migrated).
        2. Decode every file as format 1 (protobuf, JSON epochs) and check each id
           against its name; any failure names the file and nothing is written. Format 1
           had no checksums, so this is all that can be checked.
        3. Write every file framed into ``new_dir`` create-once: epochs, plans,
           completions, the config last. A file already there with the same bytes (a
           rerun after a crash) is kept; rerun until this succeeds.

    ``old_dir`` is only read. Stop every driver and receiver using it first.

    Args:
        old_dir: the format-1 checkpoint.
        new_dir: an empty (or half-migrated) directory for the format-2 copy.

    Returns:
        The URIs written (or found written) in ``new_dir``, config last.

    Raises:
        ZdlError: ``old_dir`` is not a format-1 checkpoint, or ``new_dir`` holds other data.
        CheckpointCorruptionError: a format-1 file does not decode or has the wrong id.
    """
    old, new = open_storage(old_dir), open_storage(new_dir)
    advice = (f"Nothing was written to {new_dir}. Restore the file from a copy and rerun, "
              "or start over with a new --checkpoint_dir.")
    # Step 1
    try:
        raw_config = old.read(_CONFIG)
    except StorageError:
        raise ZdlError(f"{old_dir} is not a beam_zdl checkpoint (no {_CONFIG})") from None
    if raw_config.startswith(MAGIC):
        raise ZdlError(f"{old_dir} is in format {FORMAT_VERSION} already: nothing to migrate "
                       "(`beam-zdl inspect` names damaged files; migrate repairs nothing)")
    if not raw_config.startswith(_FORMAT1_CONFIG_PREFIX):
        raise CheckpointCorruptionError(old.uri(_CONFIG), "neither format 2 (no magic) nor a "
                                        "format-1 config (format_version 1)", advice)

    def load(name: str) -> bytes:
        data = old.read(name)
        if data.startswith(MAGIC):
            raise ZdlError(f"{old_dir} mixes formats: {old.uri(name)} is in format "
                           f"{FORMAT_VERSION} but the config is in format 1 (a newer driver ran "
                           "on it?). Nothing was written; restore the directory from a copy.")
        return data

    def parse(message: type[_M], name: str, data: bytes) -> _M:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            raise CheckpointCorruptionError(old.uri(name), f"this format-1 file does not decode "
                                            f"as a {message.__name__} ({exc})", advice) from None

    # Step 2
    config = parse(checkpoint_pb2.CheckpointConfig, _CONFIG, raw_config)
    config.format_version = CONFIG_FORMAT_VERSION
    files: list[tuple[str, bytes]] = []
    for epoch in _ids(old, _EPOCHS):
        name = _epoch_name(epoch)
        try:
            claim = json.loads(load(name))
            if not isinstance(claim, dict):
                raise ValueError(f"a JSON {type(claim).__name__}, not an object")
        except ValueError as exc:
            raise CheckpointCorruptionError(old.uri(name), f"this format-1 epoch claim does not "
                                            f"decode ({exc})", advice) from None
        claim["epoch"] = epoch
        files.append((name, encode_checkpoint_file(KIND_EPOCH, json.dumps(claim).encode())))
    message: type[checkpoint_pb2.BatchPlan] | type[checkpoint_pb2.Completion]
    for prefix, message, kind, name_of in (
            (_PLANS, checkpoint_pb2.BatchPlan, KIND_PLAN, _plan_name),
            (_COMPLETIONS, checkpoint_pb2.Completion, KIND_COMPLETION, _completion_name)):
        for batch_id in _ids(old, prefix, ".pb"):
            name = name_of(batch_id)
            data = load(name)
            stored = parse(message, name, data).batch_id
            if stored != batch_id:
                raise CheckpointCorruptionError(old.uri(name), f"this format-1 file holds batch "
                                                f"{stored}, not {batch_id}", advice)
            files.append((name, encode_checkpoint_file(kind, data)))
    files.append((_CONFIG, encode_checkpoint_file(KIND_CONFIG, config.SerializeToString())))
    # Step 3
    written = []
    for name, data in files:
        try:
            new.create(name, data)
        except ObjectExistsError:
            if new.read(name) != data:
                raise ZdlError(f"{new.uri(name)} exists and differs from the migrated "
                               f"{old.uri(name)}: migrate into an empty directory") from None
        written.append(new.uri(name))
    _LOGGER.info("migrated checkpoint %s (format 1) to %s (format %d): %d files", old_dir,
                 new_dir, FORMAT_VERSION, len(written))
    return written
