"""Write-ahead-log segments: the format, a writer, a verified reader, the directory.

One module a concept (Spark splits its WAL the same way):

* :mod:`beam_zdl.wal.format`: the byte layout (a table in its docstring), frames, names,
  the block columns;
* :mod:`beam_zdl.wal.writer`: :class:`WalWriter`, sealing create-once segments;
* :mod:`beam_zdl.wal.reader`: verified reading, :class:`ReadReport`, :class:`LostRange`;
* :mod:`beam_zdl.wal.directory`: the segments of a directory and their refs, cached in a
  :class:`SegmentIndex` its owner (the receiver, the driver) holds;
* :mod:`beam_zdl.wal.epochs`: writer epochs (``_writers/<epoch>``).

This package face re-exports their public names; it imports no Beam.
"""

from __future__ import annotations

from beam_zdl.wal.directory import SegmentIndex, SegmentInfo, list_segments, segment_refs
from beam_zdl.wal.epochs import claim_writer_epoch, parse_writer_claim
from beam_zdl.wal.format import (BLOCK_RECORDS, FORMAT_VERSION, KIND_BLOCK, KIND_FOOTER,
                                 KIND_HEADER, KIND_RECORD, MAGIC, block_columns, encode_frame,
                                 parse_segment_name, records_of_block, segment_name)
from beam_zdl.wal.reader import (LostRange, ReadReport, decode_segment, read_footer,
                                 read_segment, read_segment_blocks, verify_segment)
from beam_zdl.wal.writer import WalWriter

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "KIND_HEADER",
    "KIND_RECORD",
    "KIND_FOOTER",
    "KIND_BLOCK",
    "BLOCK_RECORDS",
    "WalWriter",
    "SegmentInfo",
    "SegmentIndex",
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
    "claim_writer_epoch",
    "parse_writer_claim",
]
