"""Write-ahead-log segments: framing, CRC32C, sealing, verified reading.

A WAL directory (any :func:`beam_zdl.storage.open_storage` URI) holds sealed
segments named ``seg-<epoch:08d>-<seq:012d>.wal``. A segment is written in
one create-once call when it is sealed, so a segment that is visible is
complete; a writer killed before sealing leaves only earlier segments.

Byte layout
-----------

All integers are little-endian. ``mcrc(b)`` is the *masked* CRC32C of ``b``
(:func:`beam_zdl.framing.mcrc`, as in LevelDB/TFRecord: ``((c >> 15) | (c << 17))
+ 0xA282EAD8`` mod 2**32, so that CRCs of data that itself holds CRCs stay strong)::

    segment := MAGIC frame(HEADER) frame(BLOCK)* frame(FOOTER)
    MAGIC   := b"BZDLWAL" 0x02                      8 bytes; last byte = format version

    frame, at byte offset p (N = payload length):
      p+0      4  N, uint32
      p+4      1  kind: 1 = HEADER (SegmentHeader), 4 = BLOCK (RecordBlock),
                        3 = FOOTER (SegmentFooter)
      p+5      4  head CRC  = mcrc(bytes[p, p+5))         guards length and kind
      p+9      N  payload: the serialized protobuf (beam_zdl.v1, wal.proto)
      p+9+N    4  frame CRC = mcrc(bytes[p, p+9+N))       guards the whole frame

The messages are in ``protos/beam_zdl/v1/wal.proto``. A block holds a run of
consecutive records of one topic-partition, column by column (up to
``_BLOCK_RECORDS`` records or ``_BLOCK_BYTES`` of keys and values): one frame,
two CRCs and one protobuf message for many records, which is what makes the
receiver and the reader cheap per record (format version 1 spent a frame and
a message on every record: ~2 us of framing and ~3 us of parsing each).
Blocks keep the order the records were appended in. The footer repeats the
record count and, per topic-partition, the first and last offset.

Format version 1 (magic byte 0x01: kind 2 = RECORD frames, one ``WalRecord``
each, instead of blocks) is still read, so a WAL written by an older beam_zdl
drains after an upgrade.

Verification
------------

The reader checks the magic, both CRCs of every frame, the frame order
(header, records, footer, then nothing) and the footer's count and spans.
CRC32C catches every error burst of up to 32 bits, so any single flipped byte
is detected; a truncation anywhere is detected because the footer (or a part
of a frame) is then missing. By default any failure raises
:class:`WalCorruptionError` naming the segment URI and the byte offset of the
bad frame, before a single record of that segment is yielded.

With ``fail_on_data_loss=False`` the reader skips what it cannot trust and
records it in a :class:`ReadReport` as :class:`LostRange` byte ranges:

* a frame whose head CRC holds but whose frame CRC fails: its length is
  trustworthy, so only that frame is skipped and reading goes on;
* a bad head CRC, a bad magic or a truncated frame: the length cannot be
  trusted, so the rest of the segment from that byte is reported lost (never
  parsed as garbage).

A block whose CRCs hold but whose columns disagree (lengths, offsets not
increasing) can only come from a writer bug; it is reported like a damaged
frame.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import json
import logging
import operator
import re
import threading
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, NamedTuple

from google.protobuf.message import DecodeError

from beam_zdl.errors import CheckpointConflictError, ObjectExistsError, WalCorruptionError
from beam_zdl.framing import mcrc
from beam_zdl.storage import Storage, open_storage
from beam_zdl.v1 import checkpoint_pb2, wal_pb2

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "KIND_HEADER",
    "KIND_RECORD",
    "KIND_FOOTER",
    "KIND_BLOCK",
    "WalWriter",
    "SegmentInfo",
    "LostRange",
    "ReadReport",
    "encode_frame",
    "segment_name",
    "parse_segment_name",
    "list_segments",
    "read_segment",
    "decode_segment",
    "read_segment_blocks",
    "records_of_block",
    "block_columns",
    "verify_segment",
    "read_footer",
    "segment_refs",
    "remember_segment",
    "forget_segments",
    "claim_writer_epoch",
    "parse_writer_claim",
]

_LOGGER = logging.getLogger(__name__)

FORMAT_VERSION = 2
MAGIC = b"BZDLWAL" + bytes([FORMAT_VERSION])
_MAGIC_V1 = b"BZDLWAL\x01"
KIND_HEADER = 1
KIND_RECORD = 2  # format version 1 only
KIND_FOOTER = 3
KIND_BLOCK = 4
_RECORD_KIND = {MAGIC: KIND_BLOCK, _MAGIC_V1: KIND_RECORD}  # record-holding frames, per version
_KIND_NAMES = {KIND_HEADER: "header", KIND_RECORD: "record", KIND_FOOTER: "footer",
               KIND_BLOCK: "block"}

# A block closes at this many records or bytes of keys and values: large enough that the
# per-frame and per-message costs vanish, small enough that a damaged block loses little
# and a reader's memory per block stays small.
_BLOCK_RECORDS = 4096
_BLOCK_BYTES = 1 << 20

_HEAD = struct.Struct("<IBI")  # length, kind, head CRC
_HEAD_PREFIX = struct.Struct("<IB")
_CRC = struct.Struct("<I")
_FRAME_OVERHEAD = _HEAD.size + _CRC.size  # 13 bytes per frame
_SEGMENT_RE = re.compile(r"^seg-(\d{8,})-(\d{12,})\.wal$")

_TIMESTAMP_TYPES = {
    0: wal_pb2.TIMESTAMP_TYPE_NOT_AVAILABLE,  # confluent_kafka.TIMESTAMP_NOT_AVAILABLE
    1: wal_pb2.TIMESTAMP_TYPE_CREATE_TIME,  # confluent_kafka.TIMESTAMP_CREATE_TIME
    2: wal_pb2.TIMESTAMP_TYPE_LOG_APPEND_TIME,  # confluent_kafka.TIMESTAMP_LOG_APPEND_TIME
}


def encode_frame(kind: int, payload: bytes) -> bytes:
    """One frame: length, kind, head CRC, payload, frame CRC (see module docstring).

    Args:
        kind: ``KIND_HEADER``, ``KIND_RECORD`` or ``KIND_FOOTER``.
        payload: the serialized message.

    Returns:
        The frame's bytes, ``len(payload) + 13`` long.
    """
    prefix = _HEAD_PREFIX.pack(len(payload), kind)
    head = prefix + _CRC.pack(mcrc(prefix)) + payload
    return head + _CRC.pack(mcrc(head))


def segment_name(epoch: int, seq: int) -> str:
    """``seg-<epoch:08d>-<seq:012d>.wal``: sorts by (epoch, seq) for realistic values."""
    return f"seg-{epoch:08d}-{seq:012d}.wal"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """``(epoch, seq)`` of a segment name (a bare name or a URI), or None if it is not one."""
    match = _SEGMENT_RE.match(name.rsplit("/", 1)[-1])
    return (int(match.group(1)), int(match.group(2))) if match else None


def _timestamp_type(record: Any) -> int:
    """The WAL enum of a KafkaRecord-like's optional confluent-kafka ``timestamp_type``."""
    code = getattr(record, "timestamp_type", None)
    return wal_pb2.TIMESTAMP_TYPE_UNSPECIFIED if code is None else _TIMESTAMP_TYPES.get(
        code, wal_pb2.TIMESTAMP_TYPE_UNSPECIFIED)


def records_of_block(block: wal_pb2.RecordBlock) -> list[wal_pb2.WalRecord]:
    """The records of a (verified) block as :class:`WalRecord` messages (absent = null)."""
    keys, values, headers = block_columns(block)
    return [wal_pb2.WalRecord(topic=block.topic, partition=block.partition, offset=offset,
                              timestamp_ms=ts, timestamp_type=ts_type, key=key, value=value,
                              headers=hdrs or ())
            for offset, ts, ts_type, key, value, hdrs in zip(
                block.offsets, block.timestamps_ms, block.timestamp_types, keys, values,
                headers or itertools.repeat(None))]


def block_columns(block: wal_pb2.RecordBlock) -> tuple[
        list[bytes | None], list[bytes | None], list[list[wal_pb2.Header]] | None]:
    """A (verified) block's keys and values with their nulls restored, and each record's
    ``Header`` messages (None when no record has headers): what every reader of blocks
    needs before building its own records."""
    n = len(block.offsets)
    columns = []
    for column, nulls in ((block.keys, block.null_keys), (block.values, block.null_values)):
        out: list[bytes | None] = list(column) or [None] * n  # empty: all null
        for index in nulls:
            out[index] = None
        columns.append(out)
    if not block.header_counts:
        return columns[0], columns[1], None
    flat, headers, at = list(block.headers), [], 0
    for count in block.header_counts:
        headers.append(flat[at:at + count])
        at += count
    return columns[0], columns[1], headers


def _block_problem(block: wal_pb2.RecordBlock) -> str | None:
    """Why a block's columns cannot be right (None when they can): a writer bug, since its
    CRCs held."""
    n = len(block.offsets)
    if n == 0:
        return "an empty block"
    if len(block.timestamps_ms) != n or len(block.timestamp_types) != n:
        return f"{n} offsets but {len(block.timestamps_ms)} timestamps and " \
               f"{len(block.timestamp_types)} timestamp types"
    for name, column, nulls in (("keys", block.keys, block.null_keys),
                                ("values", block.values, block.null_values)):
        if (len(column) not in (0, n) or (nulls and not column)
                or any(index >= n for index in nulls)):
            return f"{len(column)} {name} and null indexes {list(nulls)[:5]} for {n} records"
    if block.header_counts or block.headers:
        if len(block.header_counts) != n or sum(block.header_counts) != len(block.headers):
            return f"{len(block.header_counts)} header counts summing to " \
                   f"{sum(block.header_counts)} for {n} records and {len(block.headers)} headers"
    if not all(map(operator.lt, block.offsets, itertools.islice(block.offsets, 1, None))):
        return "offsets that do not increase"
    return None


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
        return (len(MAGIC) + 2 * _FRAME_OVERHEAD + 64 + self._frame_bytes + self._block_bytes
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
                      _timestamp_type(record))
        key, value, ts_type = fields
        return self._add(record.topic, record.partition, record.offset, key, value,
                         record.timestamp_ms, ts_type, headers)

    def append_message(self, msg: Any) -> bool:
        """Buffer one confluent-kafka ``Message`` (without an error): the receiver's hot path.

        Returns and raises as :meth:`append`.
        """
        ts_type, ts = msg.timestamp()
        return self._add(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                         ts, _TIMESTAMP_TYPES.get(ts_type, 0), msg.headers())

    def _add(self, topic: str, partition: int, offset: int, key: bytes | None,
             value: bytes | None, ts: int, ts_type: int, headers: Any) -> bool:
        if (partition != self._partition or topic != self._topic or offset <= self._last
                or self._sealed is not None or len(self._offsets) >= _BLOCK_RECORDS
                or self._block_bytes >= _BLOCK_BYTES):
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


class SegmentInfo(NamedTuple):
    """A sealed segment found in a WAL directory."""
    name: str
    uri: str
    size_bytes: int
    epoch: int
    seq: int


def list_segments(wal_dir: str) -> list[SegmentInfo]:
    """The segments of a WAL directory, sorted by (epoch, seq); other objects are ignored.

    Args:
        wal_dir: the WAL directory URI.

    Returns:
        One :class:`SegmentInfo` per ``seg-*.wal`` object at the top of the directory.
    """
    storage = open_storage(wal_dir)
    out = []
    for info in storage.list("seg-"):
        parsed = parse_segment_name(info.name)
        if parsed and "/" not in info.name:
            out.append(SegmentInfo(info.name, storage.uri(info.name), info.size, *parsed))
    return sorted(out, key=lambda s: (s.epoch, s.seq))


@dataclass(frozen=True)
class LostRange:
    """Bytes ``[start, stop)`` of a segment that were skipped as untrustworthy."""
    uri: str
    start: int
    stop: int
    reason: str

    def __str__(self) -> str:
        return f"{self.uri} bytes [{self.start}, {self.stop}): {self.reason}"


@dataclass
class ReadReport:
    """What reading one or more segments found; filled in by :func:`read_segment`.

    Attributes:
        segments: segments read.
        records: records yielded.
        lost: byte ranges skipped (only with ``fail_on_data_loss=False``).
        lost_records: records known to be lost (from the footer's count; a segment
            whose footer was lost too adds nothing here, see ``unknown_loss``).
        unknown_loss: segments whose number of lost records is unknown.
    """
    segments: int = 0
    records: int = 0
    lost: list[LostRange] = field(default_factory=list)
    lost_records: int = 0
    unknown_loss: int = 0


@dataclass
class _Scan:
    uri: str
    size: int
    header: wal_pb2.SegmentHeader | None = None
    footer: wal_pb2.SegmentFooter | None = None
    # (frame offset, payload start, payload stop, kind) of every intact record-holding frame
    frames: list[tuple[int, int, int, int]] = field(default_factory=list)
    records: int = 0  # records in those frames
    lost: list[LostRange] = field(default_factory=list)


def _corrupt(uri: str, offset: int, reason: str) -> WalCorruptionError:
    return WalCorruptionError(
        f"WAL segment {uri} is corrupt at byte {offset}: {reason}. No record of this segment "
        "was used. Restore the segment from a copy, or rerun with --fail_on_data_loss=false "
        "to skip what cannot be verified (it is counted and logged as lost).")


def _bad_magic(data: bytes) -> str | None:
    """Why ``data`` does not start with a WAL magic this reader knows (None when it does)."""
    head = data[:len(MAGIC)]
    if head in _RECORD_KIND:
        return None
    if len(head) < len(MAGIC) and (MAGIC.startswith(head) or _MAGIC_V1.startswith(head)):
        return f"truncated to {len(data)} bytes, shorter than the {len(MAGIC)}-byte magic"
    if head[:-1] == MAGIC[:-1]:
        return (f"unknown format version {head[-1]} (this beam_zdl reads versions 1 and "
                f"{FORMAT_VERSION}: a newer beam_zdl wrote it, or the byte is damaged)")
    return "bad magic (not a beam_zdl WAL segment)"


def _scan(data: bytes, uri: str, fail_on_data_loss: bool) -> _Scan:
    """Verify the framing of a whole segment (and every block's columns); record where the
    records are."""
    scan = _Scan(uri, len(data))
    n = len(data)

    def lose(start: int, stop: int, reason: str) -> None:
        if fail_on_data_loss:
            raise _corrupt(uri, start, reason)
        scan.lost.append(LostRange(uri, start, stop, reason))

    bad = _bad_magic(data)
    if bad is not None:
        lose(0, n, bad)
        return scan
    record_kind = _RECORD_KIND[data[:len(MAGIC)]]
    pos = len(MAGIC)
    index = 0
    while pos < n:
        if scan.footer is not None:
            lose(pos, n, f"{n - pos} unexpected bytes after the footer")
            break
        if n - pos < _HEAD.size:
            lose(pos, n, f"truncated frame head ({n - pos} of {_HEAD.size} bytes)")
            break
        length, kind, head_crc = _HEAD.unpack_from(data, pos)
        if mcrc(data[pos:pos + 5]) != head_crc:
            lose(pos, n, "frame head CRC mismatch (its length cannot be trusted, so the rest "
                         "of the segment is unreadable)")
            break
        end = pos + _HEAD.size + length + _CRC.size
        if end > n:
            lose(pos, n, f"truncated frame (needs {end - pos} bytes, {n - pos} left)")
            break
        if mcrc(data[pos:end - _CRC.size]) != _CRC.unpack_from(data, end - _CRC.size)[0]:
            lose(pos, end, f"{_KIND_NAMES.get(kind, 'unknown')} frame CRC mismatch")
        else:
            start, stop = pos + _HEAD.size, end - _CRC.size
            expected = "header" if index == 0 else f"{_KIND_NAMES[record_kind]} or footer"
            try:
                if kind == KIND_HEADER and index == 0:
                    scan.header = wal_pb2.SegmentHeader.FromString(data[start:stop])
                    said = scan.header.format_version
                    if said != data[len(MAGIC) - 1]:
                        # The magic's version byte has no CRC; the header's copy has.
                        lose(len(MAGIC) - 1, len(MAGIC), f"the magic says format version "
                             f"{data[len(MAGIC) - 1]} but the CRC-checked header says {said} "
                             "(a damaged byte)")
                        record_kind = _RECORD_KIND.get(MAGIC[:-1] + bytes([said & 0xFF]),
                                                       record_kind)
                elif kind == record_kind == KIND_BLOCK and index > 0:
                    # Parsed here (and again when read: cheaper than holding every block)
                    # so that a bad block fails the segment before any record is used.
                    block = wal_pb2.RecordBlock.FromString(data[start:stop])
                    problem = _block_problem(block)
                    if problem is None:
                        scan.frames.append((pos, start, stop, kind))
                        scan.records += len(block.offsets)
                    else:
                        lose(pos, end, f"block frame with {problem} (a writer bug)")
                elif kind == record_kind == KIND_RECORD and index > 0:
                    scan.frames.append((pos, start, stop, kind))
                    scan.records += 1
                elif kind == KIND_FOOTER and index > 0:
                    scan.footer = wal_pb2.SegmentFooter.FromString(data[start:stop])
                else:
                    lose(pos, end, f"unexpected {_KIND_NAMES.get(kind, f'kind-{kind}')} frame "
                                   f"(expected {expected})")
            except DecodeError as exc:
                lose(pos, end, f"undecodable {_KIND_NAMES[kind]} frame ({exc})")
        index += 1
        pos = end
    if scan.footer is None and not (scan.lost and scan.lost[-1].stop == n):
        lose(n, n, "no footer: the segment is truncated (every sealed segment ends with one)")
    if scan.footer is not None and not scan.lost and scan.footer.record_count != scan.records:
        lose(len(MAGIC), n, f"footer counts {scan.footer.record_count} records but the segment "
                            f"holds {scan.records}")
    return scan


def _load(source: Any) -> tuple[bytes, str]:
    if isinstance(source, tuple):
        storage, name = source
        return storage.read(name), storage.uri(name)
    uri = str(source)
    parent, _, name = uri.rstrip("/").rpartition("/")
    storage = open_storage(parent or ".")
    return storage.read(name), storage.uri(name)


def read_segment(source: Any, *, fail_on_data_loss: bool = True,
                 report: ReadReport | None = None) -> Iterator[wal_pb2.WalRecord]:
    """The records of one sealed segment, in write order, every frame verified.

    The whole segment is read and its framing verified before this returns, so with
    ``fail_on_data_loss=True`` a corrupt segment raises here and yields nothing.

    Args:
        source: a segment URI (``SegmentRef.uri``), or a ``(storage, name)`` pair.
        fail_on_data_loss: True raises on any corruption; False skips what cannot be
            verified, logs it as an error and records it in ``report``.
        report: receives counts and lost byte ranges (see :class:`ReadReport`).

    Returns:
        An iterator of verified :class:`WalRecord` messages.

    Raises:
        WalCorruptionError: a frame failed verification (names the segment URI and byte).
        StorageError: the segment cannot be read.
    """
    data, uri = _load(source)
    return decode_segment(data, uri, fail_on_data_loss=fail_on_data_loss, report=report)


def read_segment_blocks(source: Any, *, fail_on_data_loss: bool = True,
                        report: ReadReport | None = None) -> Iterator[wal_pb2.RecordBlock]:
    """Like :func:`read_segment`, a block at a time: the reader's fast path.

    A format-1 segment's records come as one-record blocks.
    """
    data, uri = _load(source)
    return _blocks(data, _checked_scan(data, uri, fail_on_data_loss, report), report)


def decode_segment(data: bytes, uri: str = "<bytes>", *, fail_on_data_loss: bool = True,
                   report: ReadReport | None = None) -> Iterator[wal_pb2.WalRecord]:
    """Like :func:`read_segment`, for a segment's bytes already in memory.

    Args:
        data: the whole segment.
        uri: where it came from, for error messages.
        fail_on_data_loss: see :func:`read_segment`.
        report: see :func:`read_segment`.

    Returns:
        An iterator of verified records.

    Raises:
        WalCorruptionError: a frame failed verification (raised here, before iterating).
    """
    blocks = _blocks(data, _checked_scan(data, uri, fail_on_data_loss, report), report)
    return itertools.chain.from_iterable(map(records_of_block, blocks))


def _checked_scan(data: bytes, uri: str, fail_on_data_loss: bool,
                  report: ReadReport | None) -> _Scan:
    """:func:`_scan`, with what was lost logged and added to ``report``."""
    scan = _scan(data, uri, fail_on_data_loss)
    if report is not None:
        report.segments += 1
    if scan.lost:
        known = scan.footer.record_count - scan.records if scan.footer else None
        for lost in scan.lost:
            _LOGGER.error("DATA LOSS (--fail_on_data_loss=false): skipping WAL %s", lost)
        if report is not None:
            report.lost.extend(scan.lost)
            if known is None:
                report.unknown_loss += 1
            else:
                report.lost_records += max(known, 0)
    return scan


def _block_of_record(rec: wal_pb2.WalRecord) -> wal_pb2.RecordBlock:
    """A format-1 record as a one-record block."""
    block = wal_pb2.RecordBlock(topic=rec.topic, partition=rec.partition, offsets=[rec.offset],
                                timestamps_ms=[rec.timestamp_ms],
                                timestamp_types=[rec.timestamp_type])
    for column, nulls, name in ((block.keys, block.null_keys, "key"),
                                (block.values, block.null_values, "value")):
        if rec.HasField(name):
            column.append(getattr(rec, name))
    if rec.headers:
        block.header_counts.append(len(rec.headers))
        block.headers.extend(rec.headers)
    return block


def _blocks(data: bytes, scan: _Scan,
            report: ReadReport | None = None) -> Iterator[wal_pb2.RecordBlock]:
    """Parse the blocks a scan found; at the end, check them against the footer's spans."""
    spans: dict[tuple[str, int], list[int]] = {}
    for frame_pos, start, stop, kind in scan.frames:
        try:
            if kind == KIND_BLOCK:
                block = wal_pb2.RecordBlock.FromString(data[start:stop])
            else:
                block = _block_of_record(wal_pb2.WalRecord.FromString(data[start:stop]))
        except DecodeError as exc:  # the CRC held, so only a writer bug gets here
            raise _corrupt(scan.uri, frame_pos,
                           f"undecodable {_KIND_NAMES[kind]} frame ({exc})") from None
        offsets = block.offsets
        span = spans.get((block.topic, block.partition))
        if span is None:
            spans[(block.topic, block.partition)] = [offsets[0], offsets[-1]]
        else:
            span[1] = offsets[-1]
        if report is not None:
            report.records += len(offsets)
        yield block
    if scan.footer is not None and not scan.lost:
        written = {(s.topic, s.partition): [s.first_offset, s.last_offset]
                   for s in scan.footer.spans}
        if written != spans:
            raise _corrupt(scan.uri, len(MAGIC), f"footer spans {written} differ from the "
                                                 f"records' {spans} (a writer bug)")


def verify_segment(source: Any) -> tuple[wal_pb2.SegmentHeader, wal_pb2.SegmentFooter]:
    """Check every frame of a segment and parse every record; return its header and footer.

    Args:
        source: a segment URI or a ``(storage, name)`` pair.

    Returns:
        The segment's header and footer.

    Raises:
        WalCorruptionError: the first problem found, naming the segment URI and byte.
        StorageError: the segment cannot be read.
    """
    data, uri = _load(source)
    scan = _scan(data, uri, True)
    for _ in _blocks(data, scan):
        pass
    assert scan.header is not None and scan.footer is not None  # _scan raised otherwise
    return scan.header, scan.footer


def read_footer(data: bytes, uri: str = "<bytes>") -> wal_pb2.SegmentFooter:
    """The footer of a segment's bytes, found from the end without scanning the records.

    The footer frame is the last one; its payload length is found by trying each
    candidate length from 0 upward until the frame head (length, kind) and both CRCs
    match. Footers are a few bytes per partition, so this costs a few hundred
    checks, not a pass over every record. Only the footer is verified: use
    :func:`read_segment` to verify the records.

    Args:
        data: the whole segment.
        uri: where it came from, for error messages.

    Returns:
        The verified footer (record count and per-partition spans).

    Raises:
        WalCorruptionError: no intact footer frame ends the segment.
    """
    n = len(data)
    bad = _bad_magic(data)
    if bad is not None:
        raise _corrupt(uri, 0, bad)
    trailer = (_CRC.unpack_from(data, n - _CRC.size)[0]
               if n >= len(MAGIC) + _FRAME_OVERHEAD else None)
    length = 0
    while trailer is not None and length <= 1 << 20:  # 1 MiB: ~40k partitions
        pos = n - _FRAME_OVERHEAD - length
        if pos < len(MAGIC):
            break
        size, kind, head_crc = _HEAD.unpack_from(data, pos)
        if (size == length and kind == KIND_FOOTER and mcrc(data[pos:pos + 5]) == head_crc
                and mcrc(data[pos:n - _CRC.size]) == trailer):
            try:
                return wal_pb2.SegmentFooter.FromString(data[pos + _HEAD.size:n - _CRC.size])
            except DecodeError as exc:
                raise _corrupt(uri, pos, f"undecodable footer frame ({exc})") from None
        length += 1
    raise _corrupt(uri, n, "no intact footer frame at the end of the segment (truncated or "
                           "overwritten)")


# --- The WAL directory's index: segment refs and writer epochs ----------------------------

_WRITERS = "_writers/"

# Segments are immutable: their refs (footer spans) are cached for the process, the most
# recent _REFS_MAX of them (~1.3 KB each): a stand-alone receiver seals for as long as it
# runs, and only a driver deletes segments (forget_segments).
_REFS: collections.OrderedDict[str, checkpoint_pb2.SegmentRef] = collections.OrderedDict()
_REFS_MAX = 20_000
_REFS_LOCK = threading.Lock()


def remember_segment(ref: checkpoint_pb2.SegmentRef) -> None:
    """Cache the ref of a segment (it never changes); the oldest refs beyond ``_REFS_MAX`` go."""
    with _REFS_LOCK:
        _REFS[ref.uri] = ref
        _REFS.move_to_end(ref.uri)
        while len(_REFS) > _REFS_MAX:
            _REFS.popitem(last=False)


def forget_segments(uris: Iterable[str]) -> None:
    """Drop deleted segments from the per-process footer cache."""
    with _REFS_LOCK:
        for uri in uris:
            _REFS.pop(uri, None)


_STORAGES: dict[str, Storage] = {}


def _storage_of(root: str) -> Storage:
    with _REFS_LOCK:
        storage = _STORAGES.get(root)
        if storage is None:
            storage = _STORAGES[root] = open_storage(root)
        return storage


# A footer is ~25 bytes per partition: one tail read covers ~2,500 partitions; a larger
# footer (or a damaged tail) falls back to reading the whole segment.
_FOOTER_TAIL_BYTES = 64 * 1024


def _footer_by_range(storage: Storage, info: SegmentInfo) -> wal_pb2.SegmentFooter | None:
    """The footer from two ranged reads (magic, tail), or None when they do not show it."""
    if info.size_bytes <= _FOOTER_TAIL_BYTES + len(MAGIC):
        return None  # small: one whole read is as cheap
    magic = storage.read_range(info.name, 0, len(MAGIC))
    if magic not in _RECORD_KIND:
        return None  # the whole read reports it
    tail_at = info.size_bytes - _FOOTER_TAIL_BYTES
    tail = storage.read_range(info.name, tail_at, _FOOTER_TAIL_BYTES)
    if len(tail) != _FOOTER_TAIL_BYTES:
        return None  # the size listed is not the size stored: the whole read decides
    try:
        # The magic in front so read_footer's checks apply unchanged to the tail.
        return read_footer(magic + tail, info.uri)
    except WalCorruptionError:
        return None


def _load_ref(info: SegmentInfo) -> checkpoint_pb2.SegmentRef:
    storage = _storage_of(info.uri.rpartition("/")[0] or ".")
    footer = _footer_by_range(storage, info)
    if footer is not None:
        return checkpoint_pb2.SegmentRef(uri=info.uri, size_bytes=info.size_bytes,
                                         record_count=footer.record_count,
                                         spans=list(footer.spans))
    data = storage.read(info.name)
    try:
        footer = read_footer(data, info.uri)
        spans, count = list(footer.spans), footer.record_count
    except WalCorruptionError as exc:
        # The records may still be intact: take the spans from those that verify.
        _LOGGER.warning("%s; taking its offsets from the records that verify", exc)
        found: dict[tuple[str, int], list[int]] = {}
        count = 0
        for rec in decode_segment(data, info.uri, fail_on_data_loss=False):
            span = found.setdefault((rec.topic, rec.partition), [rec.offset, rec.offset])
            span[1] = rec.offset
            count += 1
        spans = [wal_pb2.PartitionSpan(topic=t, partition=p, first_offset=a, last_offset=b)
                 for (t, p), (a, b) in found.items()]
    return checkpoint_pb2.SegmentRef(uri=info.uri, size_bytes=len(data), record_count=count,
                                     spans=spans)


def segment_refs(segments: list[SegmentInfo]) -> list[checkpoint_pb2.SegmentRef]:
    """A :class:`SegmentRef` (size, record count, spans) per segment, footers read in parallel.

    Refs are cached per process (the most recent ``_REFS_MAX``), so a segment's footer is
    read once while its ref stays cached.
    """
    with _REFS_LOCK:
        found = {s.uri: _REFS[s.uri] for s in segments if s.uri in _REFS}
    missing = [s for s in segments if s.uri not in found]
    if missing:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for ref in pool.map(_load_ref, missing):
                remember_segment(ref)
                found[ref.uri] = ref
    return [found[s.uri] for s in segments]


def claim_writer_epoch(wal_dir: str, owner: str) -> int:
    """Claim a writer epoch no receiver of ``wal_dir`` ever used (create-once ``_writers/<n>``).

    Returns:
        The epoch, above every claimed epoch and every segment's epoch.
    """
    storage = open_storage(wal_dir)
    claimed = [int(i.name[len(_WRITERS):]) for i in storage.list(_WRITERS)
               if i.name[len(_WRITERS):].isdigit()]
    used = [s.epoch for s in list_segments(wal_dir)]
    epoch = max(claimed + used, default=0) + 1
    body = json.dumps({"owner": owner, "claimed_ms": int(time.time() * 1000)}).encode()
    while True:
        try:
            storage.create(f"{_WRITERS}{epoch:08d}", body)
            return epoch
        except ObjectExistsError:
            epoch += 1


def parse_writer_claim(wal_dir: str, epoch: int) -> dict[str, Any]:
    """Who claimed a writer epoch (``owner``, ``claimed_ms``), for inspection.

    Raises:
        WalCorruptionError: the claim is not a JSON object; names its URI.
    """
    storage, name = open_storage(wal_dir), f"{_WRITERS}{epoch:08d}"
    try:
        claim = json.loads(storage.read(name))
        if not isinstance(claim, dict):
            raise ValueError(f"a JSON {type(claim).__name__}, not an object")
    except ValueError as exc:
        raise WalCorruptionError(f"WAL writer claim {storage.uri(name)} does not decode ({exc}); "
                                 "it is only informational: delete it or restore it") from None
    return claim
