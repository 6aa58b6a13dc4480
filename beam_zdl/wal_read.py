"""ReadSegmentsFn: the DoFn behind :class:`~beam_zdl.ReadFromWal`.

One element is one sealed segment's URI; the DoFn verifies every frame
(:func:`beam_zdl.wal.read_segment_blocks`) and emits its records as
:class:`~beam_zdl.KafkaRecord`, timestamped with their Kafka timestamps.
Damage fails the bundle with :class:`~beam_zdl.errors.WalCorruptionError`
naming the segment and byte, or, with ``fail_on_data_loss=False``, is skipped,
counted (``wal_lost_frames``, ``data_loss_records``) and logged. Given the end
offsets a batch was planned against, it sets the ``lag/<topic>/<partition>``
gauges to what is left after each segment. With ``record_batches`` it emits each
block's records as one element, a ``list`` of KafkaRecord (one topic-partition,
offsets ascending, timestamped with the earliest record's timestamp): Beam's cost
per element is then paid per block. A format-1 segment's blocks hold one record each.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, List, Mapping, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

import beam_zdl.compat as compat
import beam_zdl.metrics as metrics
import beam_zdl.records as records
from beam_zdl.records import KafkaRecord
from beam_zdl.wal import ReadReport, block_columns, read_segment_blocks

__all__ = ["ReadSegmentsFn", "from_block"]

_LOGGER = logging.getLogger(__name__)


def from_block(block: Any) -> List[KafkaRecord]:
    """The records of a verified :class:`beam_zdl.v1.wal_pb2.RecordBlock` (see wal.proto:
    empty key/value columns mean all null, ``null_keys``/``null_values`` list the others)."""
    keys, values, headers = block_columns(block)
    return records.from_columns(block.topic, block.partition, block.offsets,
                                block.timestamps_ms, keys, values, headers)


class ReadSegmentsFn(beam.DoFn):
    """Reads whole WAL segments (every frame verified) as timestamped KafkaRecords."""

    def __init__(self, fail_on_data_loss: bool,
                 end_offsets: Optional[Mapping[tuple[str, int], int]] = None, *,
                 record_batches: bool = False) -> None:
        self._fail_on_data_loss = fail_on_data_loss
        self._record_batches = record_batches
        self._end_offsets = dict(end_offsets or {})
        ns = metrics.NAMESPACE
        self._metrics = metrics.ReadMetrics()
        self._segments = Metrics.counter(ns, metrics.WAL_SEGMENTS)
        self._lost_frames = Metrics.counter(ns, metrics.WAL_LOST_FRAMES)

    def display_data(self) -> dict[str, Any]:
        return {"fail_on_data_loss": self._fail_on_data_loss,
                "record_batches": self._record_batches}

    def process(self, uri: str, window: Any = beam.DoFn.WindowParam) -> Iterator[Any]:
        report = ReadReport()
        blocks = read_segment_blocks(uri, fail_on_data_loss=self._fail_on_data_loss,
                                     report=report)
        if report.lost:
            self._lost_frames.inc(len(report.lost))
            self._metrics.lost(report.lost_records)
            _LOGGER.error("WAL segment %s: skipped %d damaged byte ranges (%d records known "
                          "lost%s), --fail_on_data_loss=false", uri, len(report.lost),
                          report.lost_records,
                          ", and an unknown number more" if report.unknown_loss else "")
        count = nbytes = 0
        windows = (window,)  # the segment URI's window: the global window of a Create
        windowed = compat.windowed_value_maker()
        last: dict[tuple[str, int], int] = {}
        for block in blocks:
            batch = from_block(block)
            count += len(batch)
            # null keys/values are stored as b"" (or not at all): they add 0
            nbytes += sum(map(len, block.keys)) + sum(map(len, block.values))
            last[(block.topic, block.partition)] = block.offsets[-1]
            if self._record_batches:
                yield windowed(batch, min(block.timestamps_ms) * 1000, windows)
                continue
            for record in batch:
                yield windowed(record, record.timestamp_ms * 1000, windows)
        self._metrics.read(count, nbytes)
        self._segments.inc()
        for (topic, partition), offset in last.items():
            end = self._end_offsets.get((topic, partition))
            if end is not None:
                self._metrics.lag(topic, partition).set(
                    max(0, end - offset - 1))
