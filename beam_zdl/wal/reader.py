"""Verified reading of WAL segments: the scan that checks every frame (see
:mod:`beam_zdl.wal.format`, "Verification"), records or blocks out, and what was lost."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

from google.protobuf.message import DecodeError

from beam_zdl.errors import WalCorruptionError
from beam_zdl.framing import mcrc
from beam_zdl.storage import open_storage
from beam_zdl.v1 import wal_pb2
from beam_zdl.wal.format import (CRC, FORMAT_VERSION, FRAME_OVERHEAD, HEAD, KIND_BLOCK,
                                 KIND_FOOTER, KIND_HEADER, KIND_NAMES, KIND_RECORD, MAGIC,
                                 MAGIC_V1, RECORD_KIND, block_problem, records_of_block)

__all__ = [
    "LostRange",
    "ReadReport",
    "read_segment",
    "decode_segment",
    "read_segment_blocks",
    "verify_segment",
    "read_footer",
]

_LOGGER = logging.getLogger(__name__)


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
    if head in RECORD_KIND:
        return None
    if len(head) < len(MAGIC) and (MAGIC.startswith(head) or MAGIC_V1.startswith(head)):
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
    record_kind = RECORD_KIND[data[:len(MAGIC)]]
    pos = len(MAGIC)
    index = 0
    while pos < n:
        if scan.footer is not None:
            lose(pos, n, f"{n - pos} unexpected bytes after the footer")
            break
        if n - pos < HEAD.size:
            lose(pos, n, f"truncated frame head ({n - pos} of {HEAD.size} bytes)")
            break
        length, kind, head_crc = HEAD.unpack_from(data, pos)
        if mcrc(data[pos:pos + 5]) != head_crc:
            lose(pos, n, "frame head CRC mismatch (its length cannot be trusted, so the rest "
                         "of the segment is unreadable)")
            break
        end = pos + HEAD.size + length + CRC.size
        if end > n:
            lose(pos, n, f"truncated frame (needs {end - pos} bytes, {n - pos} left)")
            break
        if mcrc(data[pos:end - CRC.size]) != CRC.unpack_from(data, end - CRC.size)[0]:
            lose(pos, end, f"{KIND_NAMES.get(kind, 'unknown')} frame CRC mismatch")
        else:
            start, stop = pos + HEAD.size, end - CRC.size
            expected = "header" if index == 0 else f"{KIND_NAMES[record_kind]} or footer"
            try:
                if kind == KIND_HEADER and index == 0:
                    scan.header = wal_pb2.SegmentHeader.FromString(data[start:stop])
                    said = scan.header.format_version
                    if said != data[len(MAGIC) - 1]:
                        # The magic's version byte has no CRC; the header's copy has.
                        lose(len(MAGIC) - 1, len(MAGIC), f"the magic says format version "
                             f"{data[len(MAGIC) - 1]} but the CRC-checked header says {said} "
                             "(a damaged byte)")
                        record_kind = RECORD_KIND.get(MAGIC[:-1] + bytes([said & 0xFF]),
                                                       record_kind)
                elif kind == record_kind == KIND_BLOCK and index > 0:
                    # Parsed here (and again when read: cheaper than holding every block)
                    # so that a bad block fails the segment before any record is used.
                    block = wal_pb2.RecordBlock.FromString(data[start:stop])
                    problem = block_problem(block)
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
                    lose(pos, end, f"unexpected {KIND_NAMES.get(kind, f'kind-{kind}')} frame "
                                   f"(expected {expected})")
            except DecodeError as exc:
                lose(pos, end, f"undecodable {KIND_NAMES[kind]} frame ({exc})")
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
                           f"undecodable {KIND_NAMES[kind]} frame ({exc})") from None
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
    trailer = (CRC.unpack_from(data, n - CRC.size)[0]
               if n >= len(MAGIC) + FRAME_OVERHEAD else None)
    length = 0
    while trailer is not None and length <= 1 << 20:  # 1 MiB: ~40k partitions
        pos = n - FRAME_OVERHEAD - length
        if pos < len(MAGIC):
            break
        size, kind, head_crc = HEAD.unpack_from(data, pos)
        if (size == length and kind == KIND_FOOTER and mcrc(data[pos:pos + 5]) == head_crc
                and mcrc(data[pos:n - CRC.size]) == trailer):
            try:
                return wal_pb2.SegmentFooter.FromString(data[pos + HEAD.size:n - CRC.size])
            except DecodeError as exc:
                raise _corrupt(uri, pos, f"undecodable footer frame ({exc})") from None
        length += 1
    raise _corrupt(uri, n, "no intact footer frame at the end of the segment (truncated or "
                           "overwritten)")

