"""WalWriter: buffers records and seals them into create-once segments (format:
:mod:`beam_zdl.wal.format`)."""

from __future__ import annotations

import logging
import time
from typing import Any

from beam_zdl.errors import CheckpointConflictError, ObjectExistsError
from beam_zdl.storage import Storage, open_storage
from beam_zdl.v1 import checkpoint_pb2, wal_pb2
from beam_zdl.wal.format import (BLOCK_BYTES, BLOCK_RECORDS, FORMAT_VERSION, FRAME_OVERHEAD,
                                 KIND_BLOCK, KIND_FOOTER, KIND_HEADER, MAGIC, TIMESTAMP_TYPES,
                                 encode_frame, parse_segment_name, segment_name,
                                 timestamp_type)

__all__ = ["WalWriter"]

_LOGGER = logging.getLogger(__name__)


class WalWriter:
    """Buffers records in memory and seals them into create-once WAL segments.

    Not thread-safe. Typical use by a receiver::

        writer = WalWriter(wal_dir, writer_id="receiver-1", epoch=epoch)
        for message in consumer:
            if writer.append_message(message):   # True: a threshold was reached
                ref = writer.seal()              # durable now
                commit(ref.spans)                # only then ack the offsets to Kafka

    Offsets must increase strictly per topic-partition over the writer's life,
    so every segment's spans are exact and never overlap. Records collect in an
    open block (columns of one partition) that closes into a frame when the
    partition changes, when it is full, and at the seal.
    """

    def __init__(self, storage_uri: str, writer_id: str, epoch: int,
                 max_bytes: int = 64 * 1024 * 1024, max_records: int = 1_000_000,
                 max_age_s: float = 10.0, *, clock: Any = time.time) -> None:
        """Open a writer on a WAL directory.

        Args:
            storage_uri: the WAL directory, any URI :func:`open_storage` accepts.
            writer_id: who writes (stored in every segment header, for inspection).
            epoch: the writer's fencing epoch (from the checkpoint coordinator); it
                prefixes segment names, so writers of different epochs never collide.
            max_bytes: :meth:`should_seal` turns true at this many buffered bytes.
            max_records: ... at this many buffered records.
            max_age_s: ... when the oldest buffered record is this old (seconds).
            clock: returns the time in seconds (tests pass a fake clock).

        Raises:
            ValueError: a threshold is not positive or the epoch is negative.
        """
        if max_bytes <= 0 or max_records <= 0 or max_age_s <= 0:
            raise ValueError(
                f"WalWriter thresholds must be positive, got max_bytes={max_bytes}, "
                f"max_records={max_records}, max_age_s={max_age_s}")
        if epoch < 0:
            raise ValueError(f"WalWriter epoch must be >= 0, got {epoch}")
        self.storage: Storage = open_storage(storage_uri)
        self.writer_id = writer_id
        self.epoch = epoch
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.max_age_s = max_age_s
        self._clock = clock
        prefix = f"seg-{epoch:08d}-"
        seqs = [parsed[1] for info in self.storage.list(prefix)
                if (parsed := parse_segment_name(info.name)) and parsed[0] == epoch]
        self._next_seq = max(seqs, default=-1) + 1
        # The segment being built: magic, header, closed blocks' frames. One growing buffer,
        # not a list joined at the seal: the join held the segment twice (a quarter of the
        # receiver's --max_buffered_bytes at the default sizes).
        self._segment = bytearray()
        self._frame_bytes = 0
        self._records = 0  # buffered records, closed blocks and the open one
        self._opened_at: float | None = None
        self._spans: dict[tuple[str, int], list[int]] = {}
        self._last_offsets: dict[tuple[str, int], int] = {}
        self._sealed: bytearray | None = None  # a seal that failed, for an identical retry
        self._open_block(None, -1)

    def _open_block(self, topic: str | None, partition: int) -> None:
        """Start an empty open block for ``topic[partition]`` (its columns)."""
        self._topic, self._partition, self._last = topic, partition, -1
        self._offsets: list[int] = []
        self._timestamps: list[int] = []
        self._timestamp_types: list[Any] = []  # TimestampType values
        self._keys: list[Any] = []  # bytes or None
        self._values: list[Any] = []
        self._headers: list[Any] = []  # per record: (key, value) pairs or None
        self._block_bytes = 0

    def _close_block(self) -> None:
        """Frame the open block's records and start a new block."""
        n = len(self._offsets)
        if not n:
            return
        block = wal_pb2.RecordBlock(topic=self._topic, partition=self._partition,
                                    offsets=self._offsets, timestamps_ms=self._timestamps,
                                    timestamp_types=self._timestamp_types)
        for column, nulls, items in ((block.keys, block.null_keys, self._keys),
                                     (block.values, block.null_values, self._values)):
            null = [i for i, item in enumerate(items) if item is None]
            if len(null) < n:  # an all-null column is stored empty
                column.extend([b"" if item is None else item for item in items]
                              if null else items)
                nulls.extend(null)
        if any(self._headers):
            for pairs in self._headers:
                block.header_counts.append(len(pairs) if pairs else 0)
                for key, value in pairs or ():
                    block.headers.add(key=key, value=value)
        frame = encode_frame(KIND_BLOCK, block.SerializeToString())
        self._segment += frame
        self._frame_bytes += len(frame)
        assert self._topic is not None  # _switch_block named it before the first record
        tp = (self._topic, self._partition)
        span = self._spans.get(tp)
        if span is None:
            self._spans[tp] = [self._offsets[0], self._last]
        else:
            span[1] = self._last
        self._last_offsets[tp] = self._last
        self._open_block(None, -1)  # the next record goes through _switch_block's checks

    def _switch_block(self, topic: str, partition: int, offset: int) -> None:
        """Close the open block; open one for ``topic[partition]`` after checking ``offset``."""
        if self._sealed is not None:
            raise ValueError(
                f"WAL writer {self.writer_id}: the previous seal failed; call seal() again "
                "before appending more records")
        self._close_block()
        last = self._last_offsets.get((topic, partition))
        if last is not None and offset <= last:
            raise ValueError(
                f"WAL writer {self.writer_id}: offset {offset} of {topic}/{partition} "
                f"does not exceed the last appended offset {last}; offsets must increase "
                "strictly per partition (a consumer rewind needs a new writer and epoch)")
        self._open_block(topic, partition)
        if not self._records:
            self._opened_at = self._clock()
            header = wal_pb2.SegmentHeader(format_version=FORMAT_VERSION, writer_id=self.writer_id,
                                           epoch=self.epoch, created_ms=int(self._opened_at * 1000))
            self._segment = bytearray(MAGIC)
            self._segment += encode_frame(KIND_HEADER, header.SerializeToString())

    @property
    def buffered_bytes(self) -> int:
        """Bytes the next segment will take, roughly (buffered records plus fixed overhead)."""
        if not self._records:
            return 0
        return (len(MAGIC) + 2 * FRAME_OVERHEAD + 64 + self._frame_bytes + self._block_bytes
                + 24 * len(self._spans))

    @property
    def buffered_records(self) -> int:
        """Records appended since the last seal."""
        return self._records

    def append(self, record: Any) -> bool:
        """Buffer one record for the next segment.

        Args:
            record: a :class:`WalRecord`, or anything with ``topic``, ``partition``,
                ``offset``, ``key``, ``value``, ``timestamp_ms`` and ``headers`` (``(key,
                value)`` pairs) attributes, like :class:`beam_zdl.records.KafkaRecord`; an
                optional ``timestamp_type`` is confluent-kafka's code (0 none, 1 create time,
                2 log-append time). ``None`` keys, values and header values stay distinct
                from ``b""``.

        Returns:
            True when the size or count threshold is reached (:meth:`should_seal` also
            checks the age).

        Raises:
            ValueError: the offset does not exceed the last one of its partition, or a seal
                failed and has not been retried yet (call :meth:`seal` again first).
        """
        if isinstance(record, wal_pb2.WalRecord):
            headers = [(h.key, h.value if h.HasField("value") else None) for h in record.headers]
            fields: tuple[bytes | None, bytes | None, int] = (
                record.key if record.HasField("key") else None,
                record.value if record.HasField("value") else None,
                int(record.timestamp_type))
        else:
            headers = [(key, None if value is None else bytes(value))
                       for key, value in record.headers or ()]
            fields = (None if record.key is None else bytes(record.key),
                      None if record.value is None else bytes(record.value),
                      timestamp_type(record))
        key, value, ts_type = fields
        return self._add(record.topic, record.partition, record.offset, key, value,
                         record.timestamp_ms, ts_type, headers)

    def append_message(self, msg: Any) -> bool:
        """Buffer one confluent-kafka ``Message`` (without an error): the receiver's hot path.

        Returns and raises as :meth:`append`.
        """
        ts_type, ts = msg.timestamp()
        return self._add(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                         ts, TIMESTAMP_TYPES.get(ts_type, 0), msg.headers())

    def _add(self, topic: str, partition: int, offset: int, key: bytes | None,
             value: bytes | None, ts: int, ts_type: int, headers: Any) -> bool:
        if (partition != self._partition or topic != self._topic or offset <= self._last
                or self._sealed is not None or len(self._offsets) >= BLOCK_RECORDS
                or self._block_bytes >= BLOCK_BYTES):
            self._switch_block(topic, partition, offset)
        self._offsets.append(offset)
        self._timestamps.append(ts)
        self._timestamp_types.append(ts_type)
        self._keys.append(key)
        self._values.append(value)
        self._headers.append(headers or None)
        self._last = offset
        self._records += 1
        # + roughly the per-record share of the block's columns
        self._block_bytes += 16 + (len(key) if key is not None else 0) + (
            len(value) if value is not None else 0)
        # No clock call a record: the age threshold is for should_seal, between polls.
        return (self._frame_bytes + self._block_bytes >= self.max_bytes
                or self._records >= self.max_records)

    def should_seal(self) -> bool:
        """True when records are buffered and a size, count or age threshold is reached."""
        if not self._records:
            return False
        return (self._frame_bytes + self._block_bytes >= self.max_bytes
                or self._records >= self.max_records
                or self._clock() - self._opened_at >= self.max_age_s)

    def seal(self) -> checkpoint_pb2.SegmentRef | None:
        """Write the buffered records as one segment, create-once; then they are durable.

        Steps:
            1. Build the segment bytes (kept, so a retry after a failure writes the same bytes).
            2. ``create`` it in storage under the next ``seg-<epoch>-<seq>.wal`` name.
            3. If that name exists already and holds exactly these bytes (an earlier attempt
               succeeded but reported a failure), count it as written.
            4. Clear the buffer and return the segment's reference.

        Returns:
            The new segment's reference (URI, size, record count, per-partition spans), or
            None when nothing was buffered.

        Raises:
            CheckpointConflictError: another writer with the same epoch wrote this segment name.
            StorageError: the write failed; the records stay buffered, call ``seal`` again.
        """
        if not self._records:
            return None
        # Step 1
        self._close_block()
        spans = [wal_pb2.PartitionSpan(topic=t, partition=p, first_offset=first, last_offset=last)
                 for (t, p), (first, last) in self._spans.items()]
        if self._sealed is None:
            # The first append wrote the magic and header; closed blocks follow them.
            footer = wal_pb2.SegmentFooter(record_count=self._records, spans=spans)
            self._segment += encode_frame(KIND_FOOTER, footer.SerializeToString())
            self._sealed, self._segment = self._segment, bytearray()
        data = self._sealed
        name = segment_name(self.epoch, self._next_seq)
        # Step 2
        try:
            self.storage.create(name, data)
        except ObjectExistsError:
            # Step 3
            if self.storage.read(name) != data:
                raise CheckpointConflictError(
                    f"WAL segment {self.storage.uri(name)} was written by another writer with "
                    f"epoch {self.epoch} (this is {self.writer_id!r}); two writers must never "
                    "share an epoch: stop the other one, or claim a new epoch") from None
            _LOGGER.info("WAL segment %s already holds this seal's bytes (retried write)",
                         self.storage.uri(name))
        # Step 4
        ref = checkpoint_pb2.SegmentRef(uri=self.storage.uri(name), size_bytes=len(data),
                                        record_count=self._records, spans=spans)
        _LOGGER.debug("sealed WAL segment %s: %d records, %d bytes",
                      ref.uri, ref.record_count, ref.size_bytes)
        self._next_seq += 1
        self._frame_bytes = 0
        self._records = 0
        self._opened_at = None
        self._spans = {}
        self._sealed = None
        self._open_block(None, -1)
        return ref

