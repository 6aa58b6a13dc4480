"""The WAL segment format: names, framing, CRC32C, the block columns.

The machinery is in the sibling modules: :mod:`beam_zdl.wal.writer` (sealing),
:mod:`beam_zdl.wal.reader` (verified reading), :mod:`beam_zdl.wal.directory` (the
directory's index of segments) and :mod:`beam_zdl.wal.epochs` (writer epochs).

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
``BLOCK_RECORDS`` records or ``BLOCK_BYTES`` of keys and values): one frame,
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

import itertools
import operator
import re
import struct
from typing import Any

from beam_zdl.framing import mcrc
from beam_zdl.v1 import wal_pb2

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAGIC_V1",
    "KIND_HEADER",
    "KIND_RECORD",
    "KIND_FOOTER",
    "KIND_BLOCK",
    "RECORD_KIND",
    "KIND_NAMES",
    "BLOCK_RECORDS",
    "BLOCK_BYTES",
    "HEAD",
    "HEAD_PREFIX",
    "CRC",
    "FRAME_OVERHEAD",
    "TIMESTAMP_TYPES",
    "encode_frame",
    "segment_name",
    "parse_segment_name",
    "timestamp_type",
    "records_of_block",
    "block_columns",
    "block_problem",
]

FORMAT_VERSION = 2
MAGIC = b"BZDLWAL" + bytes([FORMAT_VERSION])
MAGIC_V1 = b"BZDLWAL\x01"
KIND_HEADER = 1
KIND_RECORD = 2  # format version 1 only
KIND_FOOTER = 3
KIND_BLOCK = 4
RECORD_KIND = {MAGIC: KIND_BLOCK, MAGIC_V1: KIND_RECORD}  # record-holding frames, per version
KIND_NAMES = {KIND_HEADER: "header", KIND_RECORD: "record", KIND_FOOTER: "footer",
               KIND_BLOCK: "block"}

# A block closes at this many records or bytes of keys and values: large enough that the
# per-frame and per-message costs vanish, small enough that a damaged block loses little
# and a reader's memory per block stays small.
BLOCK_RECORDS = 4096
BLOCK_BYTES = 1 << 20

HEAD = struct.Struct("<IBI")  # length, kind, head CRC
HEAD_PREFIX = struct.Struct("<IB")
CRC = struct.Struct("<I")
FRAME_OVERHEAD = HEAD.size + CRC.size  # 13 bytes per frame
_SEGMENT_RE = re.compile(r"^seg-(\d{8,})-(\d{12,})\.wal$")

TIMESTAMP_TYPES = {
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
    prefix = HEAD_PREFIX.pack(len(payload), kind)
    head = prefix + CRC.pack(mcrc(prefix)) + payload
    return head + CRC.pack(mcrc(head))


def segment_name(epoch: int, seq: int) -> str:
    """``seg-<epoch:08d>-<seq:012d>.wal``: sorts by (epoch, seq) for realistic values."""
    return f"seg-{epoch:08d}-{seq:012d}.wal"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """``(epoch, seq)`` of a segment name (a bare name or a URI), or None if it is not one."""
    match = _SEGMENT_RE.match(name.rsplit("/", 1)[-1])
    return (int(match.group(1)), int(match.group(2))) if match else None


def timestamp_type(record: Any) -> int:
    """The WAL enum of a KafkaRecord-like's optional confluent-kafka ``timestamp_type``."""
    code = getattr(record, "timestamp_type", None)
    return wal_pb2.TIMESTAMP_TYPE_UNSPECIFIED if code is None else TIMESTAMP_TYPES.get(
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


def block_problem(block: wal_pb2.RecordBlock) -> str | None:
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

