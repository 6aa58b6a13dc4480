"""records: every conversion into KafkaRecord gives the same record for the same Kafka
record (no broker: real confluent-kafka Message objects, real WAL blocks)."""

from __future__ import annotations

import apache_beam as beam
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message
from hypothesis import given, settings
from hypothesis import strategies as st

import beam_zdl.compat as compat
import beam_zdl.records as records
from beam_zdl.records import KafkaHeader, KafkaRecord
from beam_zdl.wal import WalWriter, read_segment_blocks
from beam_zdl.wal_read import from_block

_payload = st.one_of(st.none(), st.binary(max_size=20))
_headers = st.lists(st.tuples(st.text(max_size=5), _payload), max_size=3)
# (key, value, timestamp_ms, headers) of consecutive offsets of one partition
_fields = st.lists(st.tuples(_payload, _payload, st.integers(0, 2**41), _headers),
                   min_size=1, max_size=30)


def _messages(fields, topic="t", partition=3, first=100):
    return [Message(topic=topic, partition=partition, offset=first + i, key=key, value=value,
                    headers=headers or None, timestamp=(TIMESTAMP_CREATE_TIME, ts))
            for i, (key, value, ts, headers) in enumerate(fields)]


def _expected(fields, topic="t", partition=3, first=100):
    return [KafkaRecord(topic, partition, first + i, key, value, ts,
                        [KafkaHeader(k, v) for k, v in headers])
            for i, (key, value, ts, headers) in enumerate(fields)]


def test_a_record_is_a_typed_named_tuple_with_a_row_coder_and_an_id():
    record = KafkaRecord("t", 1, 7, None, b"v", 5, [KafkaHeader("h", None)])
    assert record.id == "t/1/7"
    coder = beam.coders.registry.get_coder(KafkaRecord)
    assert isinstance(coder, beam.coders.RowCoder)
    assert coder.decode(coder.encode(record)) == record
    assert records.payload_bytes(record) == 1
    assert records.payload_bytes(record._replace(key=b"kk", value=None)) == 2


@settings(max_examples=25, deadline=None)
@given(_fields)
def test_from_message_keeps_nulls_headers_and_timestamps(fields):
    got = [records.from_message(m) for m in _messages(fields)]
    assert got == _expected(fields)
    assert all(type(r) is KafkaRecord and type(r.headers) is list for r in got)


@settings(max_examples=25, deadline=None)
@given(_fields)
def test_append_windowed_builds_what_from_message_builds_and_counts_payload_bytes(fields):
    out: list = []
    make = compat.windowed_value_maker()
    window = beam.transforms.window.GlobalWindow()
    nbytes = records.append_windowed(out, _messages(fields), "t", 3, (window,), make)
    assert [wv.value for wv in out] == _expected(fields)
    assert [wv.timestamp.micros for wv in out] == [ts * 1000 for _, _, ts, _ in fields]
    assert all(tuple(wv.windows) == (window,) for wv in out)
    assert nbytes == sum(records.payload_bytes(r) for r in _expected(fields))


@settings(max_examples=25, deadline=None)
@given(_fields)
def test_a_message_through_the_wal_comes_back_as_from_message_makes_it(fields):
    """The receiver writes messages into WAL blocks; the WAL read builds records from the
    blocks' columns (from_columns): the same records as the direct read's."""
    import tempfile
    with tempfile.TemporaryDirectory() as wal:
        writer = WalWriter(wal, "w", 1)
        for msg in _messages(fields):
            writer.append_message(msg)
        ref = writer.seal()
        assert ref is not None
        got = [r for block in read_segment_blocks(ref.uri) for r in from_block(block)]
    assert got == [records.from_message(m) for m in _messages(fields)] == _expected(fields)


def test_from_columns_without_headers_gives_empty_lists():
    got = records.from_columns("t", 0, [5, 6], [10, 11], [None, b"k"], [b"v", None], None)
    assert got == [KafkaRecord("t", 0, 5, None, b"v", 10, []),
                   KafkaRecord("t", 0, 6, b"k", None, 11, [])]
    assert got[0].headers is not got[1].headers  # each record owns its list
