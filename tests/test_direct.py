"""Direct mode's offset-range SDF against a real broker: exact reads, gaps, data loss."""

from __future__ import annotations

import time

import pytest
from apache_beam.testing.util import assert_that, equal_to
from confluent_kafka import Consumer, Producer, TopicPartition

import beam_zdl.metrics as metrics
from beam_zdl.errors import DataLossError
from beam_zdl.ranges import PartitionRange
from tests.beam_helpers import MULTI_WORKER, read_with_beam


def _plain_read(kafka, topic: str, partition: int, start: int, stop: int) -> list[int]:
    """Offsets a plain read_committed consumer sees in [start, stop)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "probe",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, start)])
    offsets = []
    idle = 0
    while idle < 20:
        msgs = consumer.consume(1000, 0.2)
        idle = 0 if msgs else idle + 1
        for m in msgs:
            if m.error() is None and m.offset() < stop:
                offsets.append(m.offset())
        if consumer.position([TopicPartition(topic, partition)])[0].offset >= stop:
            break
    consumer.close()
    return offsets


def test_reads_exactly_the_planned_ranges_with_two_workers(kafka, tmp_path):
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((f"k{i}".encode(), f"v{i}".encode(), i % 4) for i in range(4000)))
    ranges = [PartitionRange(topic, 0, 0, 1000), PartitionRange(topic, 1, 100, 900),
              PartitionRange(topic, 2, 999, 1000), PartitionRange(topic, 3, 500, 500)]

    rows = read_with_beam(kafka, topic, tmp_path / "out", ranges, MULTI_WORKER)

    got = sorted((p, o) for _, p, o, _, _ in rows)
    want = sorted([(0, o) for o in range(1000)] + [(1, o) for o in range(100, 900)] + [(2, 999)])
    assert got == want  # nothing missing, nothing twice, nothing outside the ranges
    by_offset = {(p, o): v for _, p, o, _, v in rows}
    assert by_offset[(1, 100)] == f"v{100 * 4 + 1}"


def test_large_range_is_split_and_read_once(kafka, tmp_path):
    topic = kafka.create_topic(partitions=1)
    kafka.produce(topic, ((None, b"x" * 10) for _ in range(120_000)))

    rows = read_with_beam(kafka, topic, tmp_path / "out",
                          [PartitionRange(topic, 0, 0, 120_000)], MULTI_WORKER)

    offsets = [o for _, _, o, _, _ in rows]
    assert len(offsets) == 120_000 and len(set(offsets)) == 120_000


def test_bounded_read_without_ranges_uses_starting_offsets(kafka):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from beam_zdl import ReadFromKafka

    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 2, [("h", b"1")]) for i in range(10)))
    argv = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
            "--starting_offsets=earliest"]
    from beam_zdl import ZdlOptions
    with TestPipeline(options=ZdlOptions(argv), runner="FnApiRunner") as p:
        records = p | ReadFromKafka()
        assert_that(records | beam.Map(lambda r: (r.value, r.headers[0].key, r.headers[0].value)),
                    equal_to([(f"v{i}".encode(), "h", b"1") for i in range(10)]))


def test_transactional_topic_skips_aborted_and_completes_on_markers(kafka, tmp_path):
    topic = kafka.create_topic(partitions=1)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                         "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    for tag, commit in (("a", True), ("b", False), ("c", True)):
        producer.begin_transaction()
        for i in range(5):
            producer.produce(topic, value=f"{tag}{i}".encode(), partition=0)
        producer.flush()
        (producer.commit_transaction if commit else producer.abort_transaction)(30)
    end = kafka.end_offsets(topic)[0]
    assert end == 18  # 15 records + 3 markers

    rows = read_with_beam(kafka, topic, tmp_path / "out", [PartitionRange(topic, 0, 0, end)])

    assert sorted(v for *_, v in rows) == sorted([f"a{i}" for i in range(5)] +
                                                 [f"c{i}" for i in range(5)])
    assert sorted(o for _, _, o, _, _ in rows) == _plain_read(kafka, topic, 0, 0, end)


def test_compacted_topic_with_gaps_reads_what_exists(kafka, tmp_path):
    topic = kafka.create_topic(partitions=1, **{
        "cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.001",
        "min.compaction.lag.ms": "0", "delete.retention.ms": "100"})
    for round_ in range(6):
        kafka.produce(topic, ((f"key{i}".encode(), f"r{round_}-{i}".encode())
                              for i in range(50)))
        time.sleep(0.3)  # roll segments so the cleaner has something to compact
    end = kafka.end_offsets(topic)[0]
    deadline = time.time() + 60
    while len(_plain_read(kafka, topic, 0, 0, end)) >= end and time.time() < deadline:
        time.sleep(1)
    expected = _plain_read(kafka, topic, 0, 0, end)
    assert len(expected) < end, "the broker did not compact within 60 s"

    rows = read_with_beam(kafka, topic, tmp_path / "out", [PartitionRange(topic, 0, 0, end)])

    assert sorted(o for _, _, o, _, _ in rows) == expected


def _delete_below(kafka, topic: str, partition: int, offset: int) -> None:
    from confluent_kafka import TopicPartition as TP
    admin = kafka.admin()  # must outlive the futures
    futures = admin.delete_records([TP(topic, partition, offset)])
    for f in futures.values():
        f.result(timeout=30)


def test_data_loss_raises_naming_partition_and_offsets(kafka, tmp_path):
    topic = kafka.create_topic(partitions=1)
    kafka.produce(topic, ((None, f"v{i}".encode()) for i in range(100)))
    _delete_below(kafka, topic, 0, 40)

    with pytest.raises(DataLossError) as info:
        read_with_beam(kafka, topic, tmp_path / "out", [PartitionRange(topic, 0, 10, 100)])

    text = str(info.value)
    assert f"{topic}[0] offsets [10, 40)" in text
    assert "--fail_on_data_loss=false" in text


def test_data_loss_skipped_and_counted_when_allowed(kafka, tmp_path, caplog):
    topic = kafka.create_topic(partitions=1)
    kafka.produce(topic, ((None, f"v{i}".encode()) for i in range(100)))
    _delete_below(kafka, topic, 0, 40)

    counters: dict = {}
    rows = read_with_beam(kafka, topic, tmp_path / "out", [PartitionRange(topic, 0, 10, 100)],
                          ["--fail_on_data_loss=false"], counters=counters)

    assert sorted(o for _, _, o, _, _ in rows) == list(range(40, 100))
    assert counters[metrics.DATA_LOSS_RECORDS] == 30
    assert counters[metrics.RECORDS] == 60
    assert f"DATA LOSS (skipped, --fail_on_data_loss=false): {topic}[0] offsets [10, 40)" \
        in caplog.text
