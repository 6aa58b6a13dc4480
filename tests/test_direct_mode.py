"""run_micro_batches end to end on a real broker, including SIGKILLed drivers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pytest

import beam_zdl
from beam_zdl.coordinator import CheckpointCoordinator
from beam_zdl.records import KafkaRecord
from beam_zdl.runners import pipeline_runner
from tests.driver_proc import read_batches, run_driver
from beam_zdl.errors import ConfigError
from tests.beam_helpers import (MULTI_WORKER, WriteElements, assert_record_batches,
                                read_elements)

ROOT = Path(__file__).resolve().parents[1]


def _flags(kafka, topic, tmp_path, *extra):
    return [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
            f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--consumer_group=g-{topic}",
            "--starting_offsets=earliest", *extra]




def _assert_exactly_once(kafka, topic, out_dir, ckpt_dir, group):
    batches = read_batches(out_dir)
    rows = [row for batch in batches.values() for row in batch]
    ends = kafka.end_offsets(topic)
    expected = sorted((topic, p, o) for p, end in ends.items() for o in range(end))
    assert len(rows) == len(set(rows)), "a record appears twice in the output"
    assert sorted(rows) == expected, "records missing from the output"
    coord = CheckpointCoordinator(str(ckpt_dir))
    assert coord.pending() == []
    # every output file holds exactly its recorded plan's ranges: replays were identical
    for batch_id, batch_rows in batches.items():
        plan = coord.read_plan(batch_id)
        planned = sorted((r.topic, r.partition, o) for r in plan.ranges
                         for o in range(r.start, r.stop))
        assert sorted(batch_rows) == planned
    assert kafka.committed(group, topic) == ends


def test_available_now_on_empty_topic_exits_cleanly(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    summary = beam_zdl.run_micro_batches(
        lambda records, batch: None, beam_zdl.ZdlOptions(_flags(kafka, topic, tmp_path)))
    assert (summary.batches, summary.records) == (0, 0)


def test_batches_read_everything_once_and_commit(kafka, tmp_path):
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((None, f"v{i}".encode()) for i in range(2000)))
    flags = _flags(kafka, topic, tmp_path, "--max_records_per_partition=200")

    proc = run_driver(tmp_path / "out", flags)

    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["records"] == 2000 and summary["batches"] == len(read_batches(tmp_path / "out"))
    _assert_exactly_once(kafka, topic, tmp_path / "out", tmp_path / "ckpt", f"g-{topic}")

    kafka.produce(topic, ((None, b"more") for _ in range(100)))
    proc = run_driver(tmp_path / "out", flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["records"] == 100
    _assert_exactly_once(kafka, topic, tmp_path / "out", tmp_path / "ckpt", f"g-{topic}")


@pytest.mark.parametrize("record_batches", [True, False])
def test_record_batches_hold_every_record_once_one_partition_in_offset_order(
        kafka, tmp_path, record_batches):
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((f"k{i}".encode(), f"v{i}".encode(), i % 4) for i in range(12_000)))
    flags = _flags(kafka, topic, tmp_path, "--max_records_per_partition=2000",
                   *(["--record_batches"] if record_batches else []))
    element_types = []

    def build(records, batch):
        element_types.append(records.element_type)
        # A shuffle: batches cross it through their coder (a ListCoder of the RowCoder).
        _ = records | beam.Reshuffle() | beam.ParDo(WriteElements(str(tmp_path / "out")))

    summary = beam_zdl.run_micro_batches(build, beam_zdl.ZdlOptions(flags))

    elements = read_elements(tmp_path / "out")
    rows = [row for element in elements for row in element]
    ends = kafka.end_offsets(topic)
    assert sorted(rows) == sorted((topic, p, o) for p, end in ends.items() for o in range(end))
    assert summary.records == 12_000 and summary.batches == 2
    if not record_batches:  # the default: one record per element
        assert element_types == [KafkaRecord] * 2 and len(elements) == 12_000
        return
    assert element_types == [beam.typehints.List[KafkaRecord]] * 2
    assert beam.coders.registry.get_coder(element_types[0]) == beam.coders.ListCoder(
        beam.coders.registry.get_coder(KafkaRecord))
    assert_record_batches(elements)
    assert len(elements) <= 12_000 / 100, "records were not batched"

    # The keyword on a bounded read, the same.
    opts = beam_zdl.ZdlOptions(_flags(kafka, topic, tmp_path))
    with beam.Pipeline(runner=pipeline_runner(opts), options=opts) as p:
        _ = (p | beam_zdl.ReadFromKafka(options=opts, record_batches=True) | beam.Reshuffle()
             | beam.ParDo(WriteElements(str(tmp_path / "bounded"))))
    bounded = read_elements(tmp_path / "bounded")
    assert sorted(row for element in bounded for row in element) == sorted(rows)
    assert_record_batches(bounded)


@pytest.mark.parametrize("point", [
    "after_plan",
    pytest.param("after_run", marks=pytest.mark.slow),
    pytest.param("after_complete", marks=pytest.mark.slow),
])
def test_sigkilled_driver_replays_identically(kafka, tmp_path, point):
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 4) for i in range(3000)))
    flags = _flags(kafka, topic, tmp_path, "--max_records_per_partition=300", *MULTI_WORKER)

    crashed = run_driver(tmp_path / "out", flags, crash_at=f"{point}:2")

    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    coord = CheckpointCoordinator(str(tmp_path / "ckpt"))
    pending = coord.pending()
    if point == "after_complete":
        assert pending == [] and coord.completed_ids() == [0, 1]
        assert sum(kafka.committed(f"g-{topic}", topic).values()) == 4 * 300  # batch 1 not committed
    else:
        assert [p.batch_id for p in pending] == [1]
        before = pending[0].SerializeToString()

    restarted = run_driver(tmp_path / "out", flags)

    assert restarted.returncode == 0, restarted.stderr[-3000:]
    summary = json.loads(restarted.stdout.strip().splitlines()[-1])
    if point != "after_complete":
        assert summary["replayed"] == 1 and summary["batch_ids"][0] == 1
        assert coord.read_plan(1).SerializeToString() == before
    _assert_exactly_once(kafka, topic, tmp_path / "out", tmp_path / "ckpt", f"g-{topic}")


@pytest.mark.parametrize("flags, message", [
    ([], "--topics is required"),
    (["--topics=t", "--trigger=sometimes"], "--trigger must be one of"),
    (["--topics=t", "--zdl_mode=fast"], "--zdl_mode must be one of"),
    (["--topics=t", "--starting_offsets=oldest"],
     "--starting_offsets must be earliest, latest, committed, timestamp"),
    (["--topics=t", "--consumer_config={not json"], "--consumer_config is not valid JSON"),
    (["--topics=t", '--consumer_config={"enable.auto.commit": true}'], "may not set"),
    (["--topics=t", "--max_records_per_partition=-1"], "--max_records_per_partition must be"),
    (["--topics=t", "--batch_interval_s=0"], "--batch_interval_s must be > 0"),
    (["--topics=t", "--checkpoint_dir=/tmp/x", "--zdl_mode=wal"], "--wal_dir is required"),
    (["--topics=t"], "--checkpoint_dir is required"),
    (["--topics=t", "--checkpoint_dir=/tmp/x", "--retain_batches=0"], "--retain_batches"),
])
def test_bad_options_fail_before_anything_runs(flags, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{")):
        beam_zdl.run_micro_batches(lambda r, b: None, beam_zdl.ZdlOptions(flags))


def test_continuous_trigger_picks_up_new_data_and_stops_cleanly_on_ctrl_c(kafka, tmp_path):
    import time
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, b"first", i % 2) for i in range(100)))
    flags = _flags(kafka, topic, tmp_path, "--trigger=continuous", "--batch_interval_s=0.5")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BEAM_ZDL_CRASH_AT", None)
    proc = subprocess.Popen([sys.executable, "-m", "tests.driver_proc", str(tmp_path / "out"),
                             *flags], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def wait_for_batches(n):
        deadline = time.time() + 120
        while len(read_batches(tmp_path / "out")) < n:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no new batch within 120 s"
            time.sleep(0.2)

    try:
        wait_for_batches(1)
        kafka.produce(topic, ((None, b"second", i % 2) for i in range(50)))
        wait_for_batches(2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()

    assert proc.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["records"] == 150
    _assert_exactly_once(kafka, topic, tmp_path / "out", tmp_path / "ckpt", f"g-{topic}")


def test_a_failed_background_commit_is_raised_in_the_driver(kafka, tmp_path: Path) -> None:
    """The Kafka commit runs beside the next batch; what it raises must not vanish there."""
    import beam_zdl.kafka as kafka_client
    from beam_zdl.config import ZdlConfig
    from beam_zdl.coordinator import CONFIG_FORMAT_VERSION
    from beam_zdl.v1 import checkpoint_pb2
    from beam_zdl.microbatch.direct_mode import DirectDriver
    from beam_zdl.microbatch.loop import Batch
    from beam_zdl.ranges import PartitionRange
    topic = kafka.create_topic(partitions=1)
    options = beam_zdl.ZdlOptions(_flags(kafka, topic, tmp_path))
    driver = DirectDriver(lambda records, batch: None, options, ZdlConfig.from_options(options))
    driver.coordinator.open(checkpoint_pb2.CheckpointConfig(
        format_version=CONFIG_FORMAT_VERSION, topics=[topic], mode=driver.mode,
        consumer_group=f"g-{topic}"))
    driver.consumer = kafka_client.new_consumer(kafka.bootstrap_servers, f"g-{topic}")
    driver.consumer.close()  # a commit on a closed client raises RuntimeError
    driver.after_complete(Batch(0, (PartitionRange(topic, 0, 0, 1),), replay=False))
    with pytest.raises(RuntimeError, match="[Cc]losed"):
        driver.on_stop()  # waits for the commit, as the end of a run does
    driver.on_stop()  # raised once
