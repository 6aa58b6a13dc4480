"""Start and end positions, batch caps and lag (log line, inspect, gauges), against a
real broker."""

from __future__ import annotations

import json
import logging
import tempfile
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter

import beam_zdl
import beam_zdl.metrics as metrics
from beam_zdl.cli import main as cli_main
from beam_zdl.errors import ConfigError
from beam_zdl.options import ZdlOptions
from beam_zdl.ranges import PartitionRange
from beam_zdl.records import KafkaRecord
from beam_zdl.runners import pipeline_runner
from beam_zdl.wal import WalWriter
from tests.beam_helpers import WriteRecordIds, read_output

# An hour ago: the broker's retention (7 days) deletes records with older timestamps.
T0 = (int(time.time()) - 3600) * 1000


def _read(kafka, topic, **kwargs):
    """Run a bounded ReadFromKafka; return the (partition, offset) pairs it read."""
    out = tempfile.mkdtemp(prefix="read-")
    opts = ZdlOptions([])
    with beam.Pipeline(runner=pipeline_runner(opts), options=opts) as p:
        _ = (p | beam_zdl.ReadFromKafka(topics=topic, bootstrap_servers=kafka.bootstrap_servers,
                                        consumer_group=f"g-{topic}", **kwargs)
             | beam.ParDo(WriteRecordIds(out)))
    return sorted((row[1], row[2]) for row in read_output(out))


def _timed_topic(kafka):
    """Two partitions, 100 records each, record i at T0 + i seconds."""
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, b"v", p, None, T0 + i * 1000)
                          for p in range(2) for i in range(100)))
    return topic


def test_timestamp_and_exact_offsets_bound_a_read(kafka):
    topic = _timed_topic(kafka)
    assert _read(kafka, topic, starting_offsets=f"timestamp:{T0 + 90_500}") == \
        [(p, o) for p in range(2) for o in range(91, 100)]
    assert _read(kafka, topic, start_read_time=T0 + 98_000) == \
        [(p, o) for p in range(2) for o in range(98, 100)]
    start = json.dumps({topic: {"0": 10, "1": -2}})
    end = json.dumps({topic: {"0": 15, "1": 3}})
    assert _read(kafka, topic, starting_offsets=start, ending_offsets=end) == \
        [(0, o) for o in range(10, 15)] + [(1, o) for o in range(3)]
    assert _read(kafka, topic, starting_offsets="earliest",
                 ending_offsets=f"timestamp:{T0 + 2_000}") == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # every record older than the timestamp: the end offset, nothing to read
    assert _read(kafka, topic, starting_offsets=f"timestamp:{T0 + 10**9}") == []


def test_positions_outside_the_log_are_named_or_clamped_when_allowed(kafka, caplog):
    topic = _timed_topic(kafka)
    start = json.dumps({topic: {"0": 500, "1": 0}})
    with pytest.raises(ConfigError, match=rf"--starting_offsets: {topic}\[0\] offset 500 is "
                                          r"outside the log, which holds offsets \[0, 100\)"):
        _read(kafka, topic, starting_offsets=start)
    with pytest.raises(ConfigError, match=rf"--starting_offsets gives no offset for {topic}\[1\]"):
        _read(kafka, topic, starting_offsets=json.dumps({topic: {"0": 1}}))
    with caplog.at_level(logging.ERROR):
        got = _read(kafka, topic, starting_offsets=start, fail_on_data_loss=False)
    assert got == [(1, o) for o in range(100)]  # partition 0 clamped to its end
    assert "clamped to 100 (--fail_on_data_loss=false)" in caplog.text
    assert "clamped positions skip 400 offsets in all" in caplog.text


def test_micro_batches_stop_at_ending_offsets_with_capped_batches(kafka, tmp_path, caplog,
                                                                 capsys):
    topic = kafka.create_topic(partitions=3)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 3) for i in range(900)))
    seen: dict[int, list] = {}

    def build(records, batch):
        seen[batch.batch_id] = [(r.partition, r.start, r.stop) for r in batch.ranges]
        _ = records | beam.Map(lambda r: r)

    end = json.dumps({topic: {"0": 200, "1": 100, "2": -1}})
    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--checkpoint_dir={tmp_path / 'ckpt'}", "--starting_offsets=earliest",
             "--trigger=continuous", "--batch_interval_s=0.1", f"--ending_offsets={end}",
             "--max_records_per_batch=120"]
    with caplog.at_level(logging.INFO):
        summary = beam_zdl.run_micro_batches(build, ZdlOptions(flags))

    # 200 + 100 + 300 offsets, at most 120 a batch, shared by lag: 5 batches, then it stops
    # although the trigger is continuous.
    assert summary.batches == 5 and summary.records == 600
    assert all(sum(stop - start for _, start, stop in rs) <= 120 for rs in seen.values())
    assert seen[0] == [(0, 0, 40), (1, 0, 20), (2, 0, 60)]  # in proportion to 200:100:300
    assert kafka.committed(f"beam-zdl-{topic}", topic) == {0: 200, 1: 100, 2: 300}
    lines = [r.getMessage() for r in caplog.records if " done: " in r.getMessage()]
    assert "lag 480 offsets" in lines[0] and lines[-1].endswith("lag 0 offsets")

    # inspect shows where every partition stands against Kafka
    kafka.produce(topic, ((None, b"later", 0) for _ in range(7)))
    capsys.readouterr()
    assert cli_main(["inspect", str(tmp_path / "ckpt"), "--json",
                     f"--bootstrap_servers={kafka.bootstrap_servers}"]) == 0
    rows = {r["partition"]: r for r in json.loads(capsys.readouterr().out)["partitions"]}
    assert rows[0] == {"topic": topic, "partition": 0, "planned": 200, "completed": 200,
                       "committed": 200, "end": 307, "lag": 107}
    assert (rows[1]["lag"], rows[2]["lag"]) == (200, 0)


def test_ending_offsets_are_refused_where_they_mean_nothing(kafka, tmp_path):
    with pytest.raises(ConfigError, match="--ending_offsets works in direct mode only"):
        beam_zdl.run_micro_batches(lambda r, b: None, ZdlOptions([
            "--topics=t", f"--checkpoint_dir={tmp_path}", "--zdl_mode=wal",
            f"--wal_dir={tmp_path / 'wal'}", "--ending_offsets=latest"]))
    with pytest.raises(ConfigError, match="ending_offsets .* but the pipeline is --streaming"):
        opts = ZdlOptions(["--streaming"])
        beam.Pipeline(options=opts) | beam_zdl.ReadFromKafka(
            topics="t", bootstrap_servers=kafka.bootstrap_servers, ending_offsets="latest")


def _gauges(result) -> dict[str, int]:
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    return {g.key.metric.name: g.committed.value for g in query["gauges"]}


def test_reads_set_lag_gauges_per_partition(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, b"v", p) for p in range(2) for _ in range(100)))
    opts = ZdlOptions([])
    p = beam.Pipeline(runner=pipeline_runner(opts), options=opts)
    _ = p | beam_zdl.ReadFromKafka(
        topics=topic, bootstrap_servers=kafka.bootstrap_servers,
        ranges=[PartitionRange(topic, 0, 0, 60), PartitionRange(topic, 1, 0, 100)])
    result = p.run()
    result.wait_until_finish()
    gauges = _gauges(result)
    assert gauges[metrics.lag_name(topic, 0)] == 40
    assert gauges[metrics.lag_name(topic, 1)] == 0

    # WAL reads report the lag against the end offsets they are given
    writer = WalWriter(str(tmp_path / "wal"), "w", 1)
    for offset in range(30):
        writer.append(KafkaRecord("t", 0, offset, None, b"v", T0, []))
    ref = writer.seal()
    p = beam.Pipeline(runner=pipeline_runner(opts), options=opts)
    _ = p | beam_zdl.ReadFromWal(segments=[ref.uri], end_offsets={("t", 0): 75})
    result = p.run()
    result.wait_until_finish()
    assert _gauges(result)[metrics.lag_name("t", 0)] == 45


def test_watermarks_of_many_partitions_give_log_start_and_last_stable_offset(kafka):
    from confluent_kafka import Producer, TopicPartition

    from beam_zdl import kafka as zkafka
    topic = kafka.create_topic(partitions=40)
    kafka.produce(topic, ((None, b"v", p) for p in range(39) for _ in range(p + 1)))
    admin = kafka.admin()  # must outlive the futures
    for future in admin.delete_records([TopicPartition(topic, 5, 4)]).values():
        future.result(30)
    # An open transaction on partition 0: a read_committed end stops before it.
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                         "transactional.id": f"open-{topic}"})
    producer.init_transactions(60)
    producer.begin_transaction()
    for _ in range(3):
        producer.produce(topic, value=b"open", partition=0)
    assert producer.flush(30) == 0
    consumer = zkafka.new_consumer(kafka.bootstrap_servers, f"g-{topic}")
    try:
        marks = zkafka.watermarks(consumer, [(topic, p) for p in range(40)],
                                  kafka.bootstrap_servers)
    finally:
        consumer.close()
        producer.abort_transaction(30)
    expected = {(topic, p): (0, p + 1) for p in range(39)}
    expected[(topic, 5)] = (4, 6)
    expected[(topic, 39)] = (0, 0)
    assert marks == expected
