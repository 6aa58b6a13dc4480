"""WAL segments: round trips, every flipped byte and truncation detected, sealing, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_zdl.errors import CheckpointConflictError, WalCorruptionError
from beam_zdl.storage import open_storage
from beam_zdl.v1 import wal_pb2
from beam_zdl.wal import (FORMAT_VERSION, MAGIC, ReadReport, WalWriter, decode_segment, list_segments,
                          read_segment, verify_segment)

REPO = Path(__file__).resolve().parent.parent


_opt_bytes = st.one_of(st.none(), st.binary(max_size=40))
_record_fields = st.tuples(
    st.text(min_size=1, max_size=12),  # topic: any unicode
    st.integers(0, 3),  # partition
    _opt_bytes,  # key
    _opt_bytes,  # value
    st.integers(-2**63, 2**63 - 1),  # timestamp_ms
    st.sampled_from([0, 1, 2, 3]),  # timestamp_type
    st.lists(st.tuples(st.text(max_size=8), _opt_bytes), max_size=3),  # headers
)


def _records(fields: list[tuple]) -> list[wal_pb2.WalRecord]:
    """WalRecords with offsets increasing per partition (gaps allowed)."""
    next_offset: dict[tuple[str, int], int] = {}
    out = []
    for i, (topic, partition, key, value, ts, ts_type, headers) in enumerate(fields):
        offset = next_offset.get((topic, partition), i * 3)
        next_offset[(topic, partition)] = offset + 1 + i % 2
        rec = wal_pb2.WalRecord(topic=topic, partition=partition, offset=offset,
                                timestamp_ms=ts, timestamp_type=ts_type)
        if key is not None:
            rec.key = key
        if value is not None:
            rec.value = value
        for hk, hv in headers:
            h = rec.headers.add(key=hk)
            if hv is not None:
                h.value = hv
        out.append(rec)
    return out


def _segment_bytes(records: list[wal_pb2.WalRecord]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        writer = WalWriter(tmp, "w", 7)
        for rec in records:
            writer.append(rec)
        ref = writer.seal()
        return Path(ref.uri).read_bytes()


def _small_segment() -> bytes:
    return _segment_bytes(_records([
        ("t", 0, None, b"v0", 1, 1, []),
        ("t", 1, b"", None, 2, 2, [("h", None), ("h", b"x")]),
        ("\u00e9v\u00e9", 0, b"k", b"", 3, 0, []),
    ]))


# --- round trip -----------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_record_fields, min_size=1, max_size=20))
def test_round_trip_of_arbitrary_records(fields: list[tuple]) -> None:
    records = _records(fields)
    with tempfile.TemporaryDirectory() as tmp:
        writer = WalWriter(tmp, "writer-\u2603", 5)
        for rec in records:
            writer.append(rec)
        ref = writer.seal()
        back = list(read_segment(ref.uri))
        assert back == records
        for got, want in zip(back, records):
            assert got.HasField("key") == want.HasField("key")
            assert got.HasField("value") == want.HasField("value")
        assert ref.record_count == len(records)
        spans = {(s.topic, s.partition): (s.first_offset, s.last_offset) for s in ref.spans}
        for rec in records:
            first, last = spans[(rec.topic, rec.partition)]
            assert first <= rec.offset <= last
        header, footer = verify_segment(ref.uri)
        assert (header.writer_id, header.epoch, footer.record_count) == ("writer-\u2603", 5,
                                                                         len(records))


def test_kafka_record_like_tuples_keep_none_distinct_from_empty(any_storage_uri: str) -> None:
    from beam_zdl.records import KafkaRecord

    writer = WalWriter(any_storage_uri, "w", 1)
    writer.append(KafkaRecord("t", 0, 10, None, b"", 123, [("a", None), ("a", b"")]))
    writer.append(KafkaRecord("t", 0, 11, b"", None, 124, []))
    ref = writer.seal()
    assert ref.uri == open_storage(any_storage_uri).uri("seg-00000001-000000000000.wal")
    a, b = read_segment(ref.uri)
    assert (a.HasField("key"), a.value, b.key, b.HasField("value")) == (False, b"", b"", False)
    assert [h.HasField("value") for h in a.headers] == [False, True]
    assert [(s.topic, s.partition, s.first_offset, s.last_offset) for s in ref.spans] == [
        ("t", 0, 10, 11)]
    assert [s.name for s in list_segments(any_storage_uri)] == ["seg-00000001-000000000000.wal"]
    storage = open_storage(any_storage_uri)
    assert list(read_segment((storage, "seg-00000001-000000000000.wal"))) == [a, b]


# --- corruption ----------------------------------------------------------------------------

def _assert_detected(data: bytes, what: str) -> None:
    with pytest.raises(WalCorruptionError) as err:
        list(decode_segment(data, "mem://seg"))
    assert "mem://seg" in str(err.value) and "at byte " in str(err.value), what


def test_every_single_byte_flip_with_every_mask_is_detected() -> None:
    data = _small_segment()
    for pos in range(len(data)):
        for mask in range(1, 256):
            corrupt = bytearray(data)
            corrupt[pos] ^= mask
            _assert_detected(bytes(corrupt), f"flip {mask:#x} at {pos}")


@settings(max_examples=25, deadline=None)
@given(st.lists(_record_fields, min_size=1, max_size=6), st.integers(1, 255))
def test_every_byte_flip_is_detected_and_skip_mode_yields_only_true_records(
        fields: list[tuple], mask: int) -> None:
    records = _records(fields)
    data = _segment_bytes(records)
    for pos in range(len(data)):
        corrupt = bytearray(data)
        corrupt[pos] ^= mask
        _assert_detected(bytes(corrupt), f"flip {mask:#x} at {pos}")
        report = ReadReport()
        got = list(decode_segment(bytes(corrupt), "mem://seg", fail_on_data_loss=False,
                                  report=report))
        # Never wrong data: what is yielded is a subsequence of what was written.
        it = iter(records)
        assert all(any(rec == want for want in it) for rec in got)
        assert report.lost and report.records == len(got)
        assert all(0 <= lost.start <= pos <= lost.stop <= len(data) for lost in report.lost[:1])


def test_every_truncation_is_detected() -> None:
    data = _small_segment()
    for cut in range(len(data)):
        _assert_detected(data[:cut], f"truncated to {cut}")
        report = ReadReport()
        got = list(decode_segment(data[:cut], "mem://seg", fail_on_data_loss=False, report=report))
        assert report.lost, cut
        assert len(got) <= 3


def test_error_names_uri_and_byte_of_the_bad_frame(tmp_path: Path) -> None:
    writer = WalWriter(str(tmp_path), "w", 0)
    # A partition change closes a block: three blocks of one record each.
    for partition, offset in ((0, 0), (1, 5), (0, 1)):
        writer.append(wal_pb2.WalRecord(topic="t", partition=partition, offset=offset,
                                        value=b"x" * 10))
    ref = writer.seal()
    data = bytearray(Path(ref.uri).read_bytes())
    header_frame_end = len(MAGIC) + 13 + len(wal_pb2.SegmentHeader(
        format_version=FORMAT_VERSION, writer_id="w", epoch=0,
        created_ms=verify_segment(ref.uri)[0].created_ms).SerializeToString())
    data[header_frame_end + 15] ^= 0x40  # inside the first block's payload
    Path(ref.uri).write_bytes(bytes(data))
    with pytest.raises(WalCorruptionError, match=f"{ref.uri} is corrupt at byte "
                                                 f"{header_frame_end}: block frame CRC"):
        read_segment(ref.uri)
    report = ReadReport()
    got = list(read_segment(ref.uri, fail_on_data_loss=False, report=report))
    assert [(r.partition, r.offset) for r in got] == [(1, 5), (0, 1)]  # one frame skipped
    assert report.lost_records == 1 and report.lost[0].start == header_frame_end
    # A bad length (head CRC) loses the rest of the segment, never parses garbage.
    data[header_frame_end + 15] ^= 0x40
    data[header_frame_end] ^= 0x01
    Path(ref.uri).write_bytes(bytes(data))
    report = ReadReport()
    assert list(read_segment(ref.uri, fail_on_data_loss=False, report=report)) == []
    assert (report.lost[0].start, report.lost[0].stop) == (header_frame_end, len(data))
    assert report.unknown_loss == 1


# --- blocks and format version 1 -------------------------------------------------------------

def test_blocks_close_at_partition_changes_and_size_and_keep_the_order(tmp_path: Path) -> None:
    from beam_zdl import wal

    writer = WalWriter(str(tmp_path), "w", 0)
    wanted = [wal_pb2.WalRecord(topic="t", partition=0, offset=i, value=b"v")
              for i in range(wal.BLOCK_RECORDS + 10)]
    wanted.insert(7, wal_pb2.WalRecord(topic="t", partition=1, offset=3))
    for rec in wanted:
        writer.append(rec)
    ref = writer.seal()
    blocks = list(wal.read_segment_blocks(ref.uri))
    # partition 0 (7 records), partition 1, partition 0 until full, the rest
    assert [(b.partition, len(b.offsets)) for b in blocks] == [
        (0, 7), (1, 1), (0, wal.BLOCK_RECORDS), (0, 3)]
    assert list(read_segment(ref.uri)) == wanted
    assert not blocks[1].keys and not blocks[1].values  # all null: columns left empty


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_record_fields, min_size=1, max_size=20))
def test_kafka_records_of_blocks_match_the_wal_records(fields: list[tuple]) -> None:
    from beam_zdl.records import KafkaRecord
    from beam_zdl.wal_read import from_block

    records = _records(fields)
    got = [r for block in _blocks_of(_segment_bytes(records)) for r in from_block(block)]
    assert got == [KafkaRecord(
        rec.topic, rec.partition, rec.offset, rec.key if rec.HasField("key") else None,
        rec.value if rec.HasField("value") else None, rec.timestamp_ms,
        [(h.key, h.value if h.HasField("value") else None) for h in rec.headers])
        for rec in records]


def _blocks_of(data: bytes) -> list[wal_pb2.RecordBlock]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seg-00000001-000000000000.wal"
        path.write_bytes(data)
        from beam_zdl import wal
        return list(wal.read_segment_blocks(str(path)))


def _format_1_segment(records: list[wal_pb2.WalRecord]) -> bytes:
    """A segment as beam_zdl's format version 1 wrote it: one WalRecord frame per record."""
    from beam_zdl.wal import KIND_FOOTER, KIND_HEADER, KIND_RECORD, encode_frame

    spans: dict[tuple[str, int], list[int]] = {}
    for rec in records:
        spans.setdefault((rec.topic, rec.partition), [rec.offset, rec.offset])[1] = rec.offset
    footer = wal_pb2.SegmentFooter(record_count=len(records), spans=[
        wal_pb2.PartitionSpan(topic=t, partition=p, first_offset=a, last_offset=b)
        for (t, p), (a, b) in spans.items()])
    header = wal_pb2.SegmentHeader(format_version=1, writer_id="old", epoch=1, created_ms=5)
    return b"".join([b"BZDLWAL\x01", encode_frame(KIND_HEADER, header.SerializeToString()),
                     *[encode_frame(KIND_RECORD, r.SerializeToString()) for r in records],
                     encode_frame(KIND_FOOTER, footer.SerializeToString())])


def test_format_1_segments_are_still_read_and_checked(tmp_path: Path) -> None:
    from beam_zdl import wal
    from beam_zdl.wal_read import from_block

    records = _records([("t", 0, None, b"v0", 1, 1, []),
                        ("t", 1, b"", None, 2, 2, [("h", None), ("h", b"x")]),
                        ("t", 0, b"k", b"", 3, 0, [])])
    data = _format_1_segment(records)
    (tmp_path / "seg-00000001-000000000000.wal").write_bytes(data)
    uri = str(tmp_path / "seg-00000001-000000000000.wal")
    assert list(read_segment(uri)) == records
    assert [r.offset for b in wal.read_segment_blocks(uri) for r in from_block(b)] == [
        r.offset for r in records]
    assert verify_segment(uri)[1].record_count == 3
    [ref] = wal.segment_refs(list_segments(str(tmp_path)))
    assert (ref.record_count, len(ref.spans)) == (3, 2)
    corrupt = bytearray(data)
    corrupt[-20] ^= 0x01
    _assert_detected(bytes(corrupt), "a flip in a format-1 segment")


def test_an_unknown_format_version_is_named(tmp_path: Path) -> None:
    data = bytearray(_small_segment())
    data[len(MAGIC) - 1] = 9
    with pytest.raises(WalCorruptionError, match="at byte 0: unknown format version 9"):
        list(decode_segment(bytes(data), "mem://seg"))


def test_a_block_whose_columns_disagree_is_a_corrupt_frame() -> None:
    from beam_zdl.wal import KIND_BLOCK, encode_frame

    good = _small_segment()
    header_end = len(MAGIC) + 13 + int.from_bytes(good[len(MAGIC):len(MAGIC) + 4], "little")
    bad = wal_pb2.RecordBlock(topic="t", partition=0, offsets=[4, 3], timestamps_ms=[1, 1],
                              timestamp_types=[0, 0])
    data = good[:header_end] + encode_frame(KIND_BLOCK, bad.SerializeToString()) + good[header_end:]
    with pytest.raises(WalCorruptionError,
                       match=f"at byte {header_end}: block frame with offsets that do not "
                             "increase"):
        list(decode_segment(data, "mem://seg"))
    short = wal_pb2.RecordBlock(topic="t", partition=0, offsets=[1, 2], timestamps_ms=[1, 1],
                                timestamp_types=[0, 0], values=[b"only one"])
    data = good[:header_end] + encode_frame(KIND_BLOCK, short.SerializeToString()) + good[header_end:]
    with pytest.raises(WalCorruptionError, match="1 values .* for 2 records"):
        list(decode_segment(data, "mem://seg"))


# --- sealing ------------------------------------------------------------------------------

def test_seal_thresholds(tmp_path: Path) -> None:
    now = [1000.0]
    by_count = WalWriter(str(tmp_path / "a"), "w", 0, max_records=3, clock=lambda: now[0])
    assert by_count.seal() is None and not by_count.should_seal()
    assert [by_count.append(wal_pb2.WalRecord(topic="t", offset=i)) for i in range(3)] == [
        False, False, True]
    assert by_count.seal().record_count == 3 and by_count.buffered_records == 0

    by_size = WalWriter(str(tmp_path / "b"), "w", 0, max_bytes=1000, clock=lambda: now[0])
    appended = 0
    while not by_size.append(wal_pb2.WalRecord(topic="t", offset=appended, value=b"v" * 100)):
        appended += 1
    assert 1000 <= by_size.buffered_bytes < 1200
    ref = by_size.seal()
    assert abs(ref.size_bytes - 1000) < 200

    by_age = WalWriter(str(tmp_path / "c"), "w", 0, max_age_s=5, clock=lambda: now[0])
    assert not by_age.append(wal_pb2.WalRecord(topic="t", offset=0))
    now[0] += 4.9
    assert not by_age.should_seal()
    now[0] += 0.2
    assert by_age.should_seal()
    by_age.seal()
    assert [s.seq for s in list_segments(str(tmp_path / "c"))] == [0]


def test_offsets_must_increase_and_names_continue_after_restart(tmp_path: Path) -> None:
    writer = WalWriter(str(tmp_path), "w", 2)
    writer.append(wal_pb2.WalRecord(topic="t", partition=1, offset=5))
    with pytest.raises(ValueError, match="offset 5 of t/1 does not exceed"):
        writer.append(wal_pb2.WalRecord(topic="t", partition=1, offset=5))
    writer.seal()
    writer.append(wal_pb2.WalRecord(topic="t", partition=1, offset=6))
    writer.seal()
    again = WalWriter(str(tmp_path), "w2", 2)
    again.append(wal_pb2.WalRecord(topic="t", partition=1, offset=7))
    again.seal()
    newer = WalWriter(str(tmp_path), "w3", 3)
    newer.append(wal_pb2.WalRecord(topic="t", partition=1, offset=8))
    newer.seal()
    assert [(s.epoch, s.seq) for s in list_segments(str(tmp_path))] == [
        (2, 0), (2, 1), (2, 2), (3, 0)]


def test_two_writers_sharing_an_epoch_conflict(tmp_path: Path) -> None:
    a = WalWriter(str(tmp_path), "a", 4)
    b = WalWriter(str(tmp_path), "b", 4)
    a.append(wal_pb2.WalRecord(topic="t", offset=1))
    b.append(wal_pb2.WalRecord(topic="t", offset=2))
    a.seal()
    with pytest.raises(CheckpointConflictError, match="another writer with epoch 4"):
        b.seal()


def test_failed_seal_is_retried_with_identical_bytes(tmp_path: Path, monkeypatch) -> None:
    writer = WalWriter(str(tmp_path), "w", 0)
    writer.append(wal_pb2.WalRecord(topic="t", offset=1))
    real_create = writer.storage.create

    def create_then_fail(name: str, data: bytes) -> None:
        real_create(name, data)
        raise OSError("connection reset after upload")

    monkeypatch.setattr(writer.storage, "create", create_then_fail)
    with pytest.raises(OSError):
        writer.seal()
    monkeypatch.setattr(writer.storage, "create", real_create)
    ref = writer.seal()  # finds its own bytes there: success, not a conflict
    assert [r.offset for r in read_segment(ref.uri)] == [1]
    assert len(list_segments(str(tmp_path))) == 1


# --- crash --------------------------------------------------------------------------------

_WRITER_SCRIPT = textwrap.dedent("""
    import sys
    from beam_zdl.v1 import wal_pb2
    from beam_zdl.wal import WalWriter
    writer = WalWriter(sys.argv[1], "crashy", 9, max_records=50)
    offset = 0
    while True:
        if writer.append(wal_pb2.WalRecord(topic="t", offset=offset, value=b"x" * 2000)):
            writer.seal()
            print(offset, flush=True)
        offset += 1
""")


def test_sigkill_mid_write_leaves_only_complete_sealed_segments(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER_SCRIPT, str(wal_dir)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        sealed = [int(proc.stdout.readline()) for _ in range(20)]
        time.sleep(0.05)  # let it get somewhere inside the next seal or append
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    segments = list_segments(str(wal_dir))
    assert len(segments) >= len(sealed)
    offsets = [r.offset for seg in segments for r in read_segment(seg.uri)]
    assert offsets == list(range(len(offsets)))  # complete, in order, no gap
    assert len(offsets) == 50 * len(segments) and len(offsets) >= sealed[-1] + 1


def test_the_ref_cache_is_bounded_and_refs_beyond_it_are_still_given(tmp_path: Path) -> None:
    """A stand-alone receiver seals for as long as it runs: its ref cache must not grow
    without end, and a list longer than the cache still gets every ref."""
    from beam_zdl import wal

    index = wal.SegmentIndex(max_refs=3)
    writer = WalWriter(str(tmp_path), "w", 1)
    for offset in range(5):
        writer.append(wal_pb2.WalRecord(topic="t", offset=offset, value=b"v"))
        index.remember(writer.seal())
    assert len(index) == 3
    refs = wal.segment_refs(list_segments(str(tmp_path)), index)
    assert [r.spans[0].first_offset for r in refs] == [0, 1, 2, 3, 4]
    assert len(index) == 3
