"""wal_read.ReadSegmentsFn on a real pipeline (in-process FnApiRunner, local WAL files, no
broker): the records of a segment, their timestamps, the counters and lag gauges, and
damage that fails the read or, when allowed, is skipped and counted."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

import beam_zdl.metrics as metrics
from beam_zdl.batch_progress import pipeline_metrics
from beam_zdl.records import KafkaHeader, KafkaRecord
from beam_zdl.v1 import wal_pb2
from beam_zdl.wal import FORMAT_VERSION, MAGIC, WalWriter, verify_segment
from beam_zdl.wal_read import ReadSegmentsFn

NS = metrics.NAMESPACE
# A partition change closes a block: three blocks, of partitions 0, 1 and 0.
RECORDS = [KafkaRecord("t", 0, 0, None, b"a" * 10, 1_000, []),
           KafkaRecord("t", 0, 1, b"k", None, 2_000, [KafkaHeader("h", b"x"),
                                                      KafkaHeader("h", None)]),
           KafkaRecord("t", 1, 5, b"", b"", 3_000, []),
           KafkaRecord("t", 0, 2, b"kk", b"v", 4_000, [])]


def _segment(wal: Path) -> str:
    writer = WalWriter(str(wal), "w", 1)
    for record in RECORDS:
        writer.append(record)
    ref = writer.seal()
    assert ref is not None
    return ref.uri


def _read(uris: list[str], expected: list[tuple[KafkaRecord, int]], **kwargs):
    """Read ``uris``, assert the output is ``expected`` (records with their timestamps in
    ms), and return beam_zdl's counters and gauges."""
    pipeline = beam.Pipeline(runner=FnApiRunner())
    out = (pipeline | beam.Create(uris) | beam.ParDo(ReadSegmentsFn(**kwargs))
           | beam.Map(lambda r, ts=beam.DoFn.TimestampParam: (r, ts.micros // 1000)))
    assert_that(out, equal_to(expected))
    result = pipeline.run()
    result.wait_until_finish()
    counters, _, gauges = pipeline_metrics(result.metrics().query(MetricsFilter()))
    return counters.get(NS, {}), gauges.get(NS, {})


def _stamped(records: list[KafkaRecord]) -> list[tuple[KafkaRecord, int]]:
    return [(r, r.timestamp_ms) for r in records]


def test_segments_are_read_whole_with_kafka_timestamps_counters_and_lag(tmp_path):
    wal = tmp_path / "wal"
    first = _segment(wal)
    writer = WalWriter(str(wal), "w", 1)
    later = KafkaRecord("t", 0, 3, None, b"later", 5_000, [])
    writer.append(later)
    second = writer.seal()
    assert second is not None and second.uri != first
    counters, gauges = _read([first, second.uri], _stamped(RECORDS + [later]),
                             fail_on_data_loss=True,
                             end_offsets={("t", 0): 10, ("t", 1): 6, ("u", 0): 4})
    assert counters[metrics.RECORDS] == 5
    assert counters[metrics.BYTES] == 10 + 1 + 2 + 1 + 5  # null and empty payloads add 0
    assert counters[metrics.WAL_SEGMENTS] == 2
    assert counters.get(metrics.DATA_LOSS_RECORDS, 0) == 0
    # What is left after a segment: up to the planned ends, per partition it holds (the
    # gauge keeps the newest value: segments are read in one bundle, in order).
    assert gauges[metrics.lag_name("t", 0)] in (10 - 2 - 1, 10 - 3 - 1)
    assert gauges[metrics.lag_name("t", 1)] == 0
    assert metrics.lag_name("u", 0) not in gauges


def _damage_first_block(uri: str) -> int:
    """Flip a byte inside the first block's payload; return where that frame starts."""
    header = wal_pb2.SegmentHeader(format_version=FORMAT_VERSION, writer_id="w", epoch=1,
                                   created_ms=verify_segment(uri)[0].created_ms)
    first_block = len(MAGIC) + 13 + len(header.SerializeToString())
    data = bytearray(Path(uri).read_bytes())
    data[first_block + 15] ^= 0x40
    Path(uri).write_bytes(bytes(data))
    return first_block


def test_a_damaged_segment_fails_the_read_naming_segment_and_byte(tmp_path):
    uri = _segment(tmp_path / "wal")
    byte = _damage_first_block(uri)
    with pytest.raises(Exception, match=f"{uri} is corrupt at byte {byte}: block frame CRC"):
        _read([uri], [], fail_on_data_loss=True)


def test_with_data_loss_allowed_the_damaged_block_is_skipped_and_counted(tmp_path, caplog):
    uri = _segment(tmp_path / "wal")
    _damage_first_block(uri)
    # The first block held 2 records of partition 0.
    counters, _ = _read([uri], _stamped(RECORDS[2:]), fail_on_data_loss=False)
    assert counters[metrics.WAL_LOST_FRAMES] == 1
    assert counters[metrics.DATA_LOSS_RECORDS] == 2
    assert counters[metrics.RECORDS] == 2
    assert f"WAL segment {uri}: skipped 1 damaged byte ranges (2 records known lost" \
        in caplog.text
