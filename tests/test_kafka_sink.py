"""WriteToKafka on a real broker: transactions keyed by batch, replays skipping the
shards already committed, a zombie writer fenced, and the error cases — each
checked with a ``read_committed`` consumer of the output topic."""

from __future__ import annotations

import os
from collections import Counter

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import beam_zdl
from beam_zdl.errors import (ConfigError, SinkConflictError, SinkFencedError, TopicNotFoundError,
                             ZdlError)
from beam_zdl.kafka_sink import ShardWriter, WriteToKafka, progress_group, shard_of, to_record
from beam_zdl.runners import pipeline_runner
from beam_zdl.testing import LocalKafka
from tests.kafka_sink_proc import read_committed

SHARDS = 3


def _elements(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(f"k{i}".encode(), f"v{i}".encode()) for i in range(start, start + n)]


def _write(kafka, topic, elements, **kwargs):
    """Run a bounded pipeline writing ``elements``; return its metrics' counters by name."""
    options = PipelineOptions([])
    pipeline = beam.Pipeline(runner=pipeline_runner(options), options=options)
    (pipeline | beam.Create(elements)
     | WriteToKafka(topic, kafka.bootstrap_servers, shards=SHARDS, **kwargs))
    result = pipeline.run()
    result.wait_until_finish()
    return {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]
            if c.key.metric.namespace == "beam_zdl"}


def _shard_writer(kafka, topic, shard, sink_id=None) -> ShardWriter:
    writer = ShardWriter(topic, kafka.bootstrap_servers, {}, sink_id or topic, shard, topic,
                         timeout_s=30)
    writer.open()
    return writer


def test_batch_written_once_and_a_replay_writes_nothing(kafka):
    topic = kafka.create_topic(partitions=2)
    elements = _elements(300)

    first = _write(kafka, topic, elements, batch=7)
    again = _write(kafka, topic, elements, batch=7)
    _write(kafka, topic, _elements(100, start=300), batch=8)

    assert first["sink_records_written"] == 300 and first["sink_shards_committed"] == SHARDS
    assert again["sink_shards_skipped"] == SHARDS and not again.get("sink_records_written")
    seen = Counter(read_committed(kafka.bootstrap_servers, topic))
    assert seen == Counter(_elements(400))
    # The progress record of every shard is the last batch, committed with its records.
    for shard in range(SHARDS):
        assert kafka.committed(progress_group(topic, shard), topic)[0] == 8 + 1


def test_replay_writes_only_the_shards_not_yet_committed(kafka):
    """Shard 0 of batch 5 committed before a crash: the replay skips it, writes the rest."""
    topic = kafka.create_topic(partitions=2)
    elements = _elements(300)
    shard0 = [to_record(e) for e in elements if shard_of(to_record(e), SHARDS) == 0]
    writer = _shard_writer(kafka, topic, 0)
    try:
        assert writer.write_batch(5, shard0) == len(shard0)
    finally:
        writer.close()

    counters = _write(kafka, topic, elements, batch=5)

    assert counters["sink_shards_skipped"] == 1
    assert counters["sink_records_written"] == 300 - len(shard0)
    assert Counter(read_committed(kafka.bootstrap_servers, topic)) == Counter(elements)


def test_a_zombie_writer_is_fenced_and_its_records_never_visible(kafka):
    """A writer (an old driver's) produced shard 0 of batch 3 but has not committed when
    a newer run writes batch 3: its commit fails as fenced; each record is seen once."""
    topic = kafka.create_topic(partitions=2)
    elements = _elements(200)
    shard0 = [to_record(e) for e in elements if shard_of(to_record(e), SHARDS) == 0]
    zombie = _shard_writer(kafka, topic, 0)
    try:
        zombie.begin()
        zombie.produce(shard0)

        counters = _write(kafka, topic, elements, batch=3)

        with pytest.raises(SinkFencedError, match="fenced by a newer writer"):
            zombie.commit(3)
    finally:
        zombie.close()
    assert counters["sink_shards_committed"] == SHARDS
    assert Counter(read_committed(kafka.bootstrap_servers, topic)) == Counter(elements)


def test_a_sink_id_shared_with_another_input_fails_instead_of_skipping(kafka):
    """A progress record past the batch, or at it for another input, means a second
    pipeline (or a new checkpoint) writes with this sink_id: fail, write nothing."""
    from beam_zdl.ranges import PartitionRange
    topic = kafka.create_topic(partitions=2)
    ours = beam_zdl.Batch(3, (PartitionRange("in", 0, 0, 10),))
    theirs = beam_zdl.Batch(3, (PartitionRange("in", 0, 0, 20),))
    _write(kafka, topic, _elements(60), batch=ours)
    assert _write(kafka, topic, _elements(60), batch=ours)["sink_shards_skipped"] == SHARDS
    with pytest.raises(SinkConflictError, match="already committed batch 3"):
        _write(kafka, topic, _elements(60, start=60), batch=theirs)
    with pytest.raises(SinkConflictError, match="already committed batch 3"):
        _write(kafka, topic, _elements(60, start=60), batch=1)
    assert Counter(read_committed(kafka.bootstrap_servers, topic)) == Counter(_elements(60))


def test_without_a_batch_writes_at_least_once_with_an_idempotent_producer(kafka):
    topic = kafka.create_topic(partitions=2)
    _write(kafka, topic, _elements(100))
    _write(kafka, topic, _elements(100))  # no batch id: a second run writes again
    assert Counter(read_committed(kafka.bootstrap_servers, topic)) == Counter(
        {e: 2 for e in _elements(100)})


def test_elements_kafka_records_key_value_fns_and_headers(kafka):
    topic = kafka.create_topic()
    record = beam_zdl.KafkaRecord("in", 0, 4, b"k", b"v", 0, [beam_zdl.KafkaHeader("h", b"x")])
    assert to_record(record) == (b"k", b"v", [("h", b"x")])
    assert to_record("text") == (None, b"text", [])
    assert to_record(7, key_fn=str, value_fn=lambda e: f"n{e}") == (b"7", b"n7", [])
    _write(kafka, topic, [record], batch=0)
    assert read_committed(kafka.bootstrap_servers, topic) == [(b"k", b"v")]


# --- errors ------------------------------------------------------------------------------

def test_exactly_once_needs_a_batch_and_refuses_streaming(kafka):
    with pytest.raises(ConfigError, match="needs batch="):
        WriteToKafka("t", kafka.bootstrap_servers, exactly_once=True)
    topic = kafka.create_topic()
    options = PipelineOptions(["--streaming"])
    pipeline = beam.Pipeline(options=options)
    with pytest.raises(ConfigError, match="run_micro_batches"):
        _ = (pipeline | beam.Create([b"x"])
             | WriteToKafka(topic, kafka.bootstrap_servers, batch=0))


def test_a_missing_topic_is_named_before_anything_runs(kafka):
    with pytest.raises(TopicNotFoundError, match="topic 'no-such-topic-x' does not exist"):
        _write(kafka, "no-such-topic-x", _elements(3), batch=0)


def test_a_record_too_large_fails_the_batch_before_any_shard_writes(kafka):
    topic = kafka.create_topic(partitions=2, max_message_bytes=4096)
    elements = _elements(200) + [(b"big", b"x" * 8000)]
    with pytest.raises(ZdlError, match=f"too large.*{topic}|{topic}.*too large"):
        _write(kafka, topic, elements, batch=0)
    assert read_committed(kafka.bootstrap_servers, topic) == []
    assert all(kafka.committed(progress_group(topic, s), topic)[0] < 0 for s in range(SHARDS))
    # Without the big record the same batch then goes through.
    _write(kafka, topic, _elements(200), batch=0)
    assert Counter(read_committed(kafka.bootstrap_servers, topic)) == Counter(_elements(200))


class _NoTransactionsKafka(LocalKafka):
    """A broker whose transaction state log cannot be created (replication factor 3 on one
    broker): it refuses every transactional producer."""

    def _write_config(self):
        props = super()._write_config()
        props.write_text(props.read_text().replace(
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.replication.factor=3"))
        return props


@pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
                    reason="needs a broker of its own")
@pytest.mark.slow  # starts a broker of its own
def test_a_broker_refusing_transactions_is_named_and_nothing_is_written(tmp_path):
    with _NoTransactionsKafka(workdir=tmp_path / "kafka") as broker:
        topic = broker.create_topic(partitions=2)
        with pytest.raises(ZdlError, match="refused transactions for transactional.id "
                                            f"beam-zdl-sink-{topic}-"):
            _write(broker, topic, _elements(50), batch=0, timeout_s=8)
        assert read_committed(broker.bootstrap_servers, topic) == []


def test_inside_build_fn_the_sink_finds_its_batch_and_is_exactly_once(kafka, tmp_path):
    """Users need not pass batch=: a replayed batch still writes nothing twice."""
    source, out = kafka.create_topic(partitions=2), kafka.create_topic(partitions=2)
    kafka.produce(source, ((None, f"v{i}".encode(), i % 2) for i in range(60)))
    sinks = []

    def build(records, batch):
        sink = WriteToKafka(out, kafka.bootstrap_servers, shards=SHARDS,
                            value_fn=lambda r: r.value)
        sinks.append((batch.batch_id, sink._batch_id, sink._exactly_once))
        _ = records | sink

    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={source}",
             f"--checkpoint_dir={tmp_path / 'ckpt'}", "--starting_offsets=earliest"]
    beam_zdl.run_micro_batches(build, beam_zdl.ZdlOptions(flags))
    # replay batch 0 by hand, as a restart after a crash before its completion would
    from beam_zdl.microbatch.loop import Batch, run_batch_pipeline
    from beam_zdl.ranges import PartitionRange
    from beam_zdl.io import ReadFromKafka
    options = beam_zdl.ZdlOptions(flags)
    ranges = tuple(PartitionRange(source, p, 0, 30) for p in range(2))
    run_batch_pipeline(build, options, Batch(0, ranges, replay=True),
                       ReadFromKafka(ranges=ranges, options=options))

    assert sinks == [(0, 0, True), (0, 0, True)]
    assert WriteToKafka(out, kafka.bootstrap_servers)._exactly_once is False  # outside
    assert Counter(v for _, v in read_committed(kafka.bootstrap_servers, out)) == Counter(
        f"v{i}".encode() for i in range(60))
