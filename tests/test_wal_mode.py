"""WAL mode end to end on a real broker and real storage, including SIGKILLed processes.

The driver runs as ``tests.driver_proc`` (its sink writes batch-<id>.jsonl
idempotently); the receiver is its child process, which dies with it
(PR_SET_PDEATHSIG), and a crash point that kills the receiver kills the
driver too. Every test checks, at the end, that each
produced record is in the output exactly once, that the WAL holds each
offset exactly once (the receiver never re-read what it had sealed), that
no planned segment is missing, and that the group's offsets are at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import apache_beam as beam
import pytest

import beam_zdl
from beam_zdl.coordinator import CheckpointCoordinator
from beam_zdl.progress_history import read_history
from tests.driver_proc import read_batches, run_driver
from beam_zdl.errors import WalCorruptionError, ZdlError
from beam_zdl.options import ZdlConfig, ZdlOptions
from beam_zdl.receiver import Receiver
from beam_zdl.records import KafkaRecord
from beam_zdl.runners import pipeline_runner
from beam_zdl.testing._process import wait_until
from beam_zdl.wal import list_segments, read_segment, read_segment_blocks
from tests.beam_helpers import WriteElements, assert_record_batches, read_elements

ROOT = Path(__file__).resolve().parents[1]
# Fast group rejoin after a SIGKILLed member (the broker allows >= 1 s).
FAST_GROUP = '--consumer_config={"session.timeout.ms": 4000, "heartbeat.interval.ms": 500}'


def _flags(kafka, topic, ckpt, wal, *extra):
    return [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
            f"--checkpoint_dir={ckpt}", f"--wal_dir={wal}", "--zdl_mode=wal",
            f"--consumer_group=g-{topic}", "--starting_offsets=earliest", FAST_GROUP,
            "--wal_segment_records=250", "--wal_segment_age_s=0.5",
            "--max_records_per_partition=300", *extra]



def _summary(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])



def _wal_offsets(wal) -> list[tuple]:
    return [(r.topic, r.partition, r.offset)
            for seg in list_segments(wal) for r in read_segment(seg.uri)]


def _assert_exactly_once(kafka, topic, out_dir, ckpt, wal, *, all_retained=True):
    ckpt, wal = str(ckpt), str(wal)
    ends = kafka.end_offsets(topic)
    expected = sorted((topic, p, o) for p, end in ends.items() for o in range(end))
    batches = read_batches(out_dir)
    rows = [row for batch in batches.values() for row in batch]
    assert len(rows) == len(set(rows)), "a record appears twice in the output"
    assert sorted(rows) == expected, "records missing from the output"
    coord = CheckpointCoordinator(str(ckpt))
    assert coord.pending() == []
    segments = {s.name: s for s in list_segments(wal)}
    referenced = []
    for batch_id in coord.planned_ids():
        plan = coord.read_plan(batch_id)
        names = [seg.uri.rpartition("/")[2] for seg in plan.segments]
        referenced.extend(names)
        if all_retained:
            # the batch's output is exactly its segments' records: replays were identical
            assert all(n in segments for n in names), "a planned segment is missing"
            planned = sorted((r.topic, r.partition, r.offset)
                             for seg in plan.segments for r in read_segment(seg.uri))
            assert sorted(batches[batch_id]) == planned
    assert len(referenced) == len(set(referenced)), "a segment was planned twice"
    assert set(segments) <= set(referenced), "a sealed segment was never planned"
    if all_retained:
        wal_rows = _wal_offsets(wal)
        assert len(wal_rows) == len(set(wal_rows)), "the WAL holds a record twice"
        assert sorted(wal_rows) == expected
    assert kafka.committed(f"g-{topic}", topic) == ends


def _produce(kafka, topic, n, partitions=4, start=0):
    kafka.produce(topic, ((f"k{i}".encode(), f"v{i}".encode(), i % partitions)
                          for i in range(start, start + n)))


def _config(kafka, topic, wal, *extra) -> ZdlConfig:
    return ZdlConfig.from_options(ZdlOptions([
        f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
        f"--wal_dir={wal}", "--zdl_mode=wal", f"--consumer_group=g-{topic}",
        "--starting_offsets=earliest", FAST_GROUP, "--wal_segment_records=200",
        "--wal_segment_age_s=0.3", *extra]))


# --- end to end ------------------------------------------------------------------------------

@pytest.mark.parametrize("any_storage_uri", [
    "local", "gcs", pytest.param("hdfs", marks=pytest.mark.slow)], indirect=True)
def test_wal_mode_end_to_end(kafka, tmp_path, any_storage_uri):
    topic = kafka.create_topic(partitions=4)
    _produce(kafka, topic, 2000)
    ckpt, wal = f"{any_storage_uri}/ckpt", f"{any_storage_uri}/wal"
    flags = _flags(kafka, topic, ckpt, wal)

    summary = _summary(run_driver(tmp_path / "out", flags))

    assert summary["records"] == 2000 and summary["batches"] >= 2
    _assert_exactly_once(kafka, topic, tmp_path / "out", ckpt, wal)

    _produce(kafka, topic, 300, start=2000)
    summary = _summary(run_driver(tmp_path / "out", flags))
    assert summary["records"] == 300
    _assert_exactly_once(kafka, topic, tmp_path / "out", ckpt, wal)


def test_record_batches_hold_every_record_once_one_partition_in_offset_order(kafka, tmp_path):
    topic = kafka.create_topic(partitions=4)
    _produce(kafka, topic, 2000)
    ckpt, wal = tmp_path / "ckpt", str(tmp_path / "wal")
    element_types = []

    def build(records, batch):
        element_types.append(records.element_type)
        # A shuffle: batches cross it through their coder (a ListCoder of the RowCoder).
        _ = records | beam.Reshuffle() | beam.ParDo(WriteElements(str(tmp_path / "out")))

    summary = beam_zdl.run_micro_batches(build, ZdlOptions(_flags(
        kafka, topic, ckpt, wal, "--record_batches")))

    assert summary.records == 2000 and summary.batches >= 2
    assert element_types == [beam.typehints.List[KafkaRecord]] * summary.batches
    elements = read_elements(tmp_path / "out")
    expected = sorted(_wal_offsets(wal))
    assert len(expected) == 2000 and len(set(expected)) == 2000
    assert sorted(row for element in elements for row in element) == expected
    assert_record_batches(elements)
    blocks = sum(1 for seg in list_segments(wal) for _ in read_segment_blocks(seg.uri))
    assert len(elements) == blocks  # one batch per WAL block

    # The keyword, replaying the whole WAL; without it, records.
    opts = ZdlOptions([])
    with beam.Pipeline(runner=pipeline_runner(opts), options=opts) as p:
        _ = (p | "Batches" >> beam_zdl.ReadFromWal(wal, record_batches=True) | beam.Reshuffle()
             | "B" >> beam.ParDo(WriteElements(str(tmp_path / "replay"))))
        records = p | "Records" >> beam_zdl.ReadFromWal(wal)
        assert records.element_type is KafkaRecord
        _ = records | "R" >> beam.ParDo(WriteElements(str(tmp_path / "records")))
    replayed = read_elements(tmp_path / "replay")
    assert_record_batches(replayed)
    assert sorted(row for element in replayed for row in element) == expected
    assert sorted(row for (row,) in read_elements(tmp_path / "records")) == expected


def test_available_now_on_empty_topic_exits_cleanly(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    summary = beam_zdl.run_micro_batches(lambda records, batch: None, ZdlOptions(_flags(
        kafka, topic, tmp_path / "ckpt", tmp_path / "wal")))
    assert (summary.batches, summary.records) == (0, 0)
    assert list_segments(str(tmp_path / "wal")) == []


def test_cleanup_keeps_the_last_retained_batches(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    _produce(kafka, topic, 3000, partitions=2)
    ckpt, wal = tmp_path / "ckpt", tmp_path / "wal"

    summary = _summary(run_driver(tmp_path / "out", _flags(kafka, topic, ckpt, wal,
                                                     "--retain_batches=2")))

    assert summary["batches"] >= 4
    coord = CheckpointCoordinator(str(ckpt))
    kept = coord.planned_ids()
    assert kept == coord.completed_ids()[-2:]
    # exactly the segments of the kept batches are left
    names = sorted(seg.uri.rpartition("/")[2] for i in kept for seg in coord.read_plan(i).segments)
    assert sorted(s.name for s in list_segments(str(wal))) == names
    _assert_exactly_once(kafka, topic, tmp_path / "out", ckpt, wal, all_retained=False)
    # the progress records of the kept batches: the WAL segments each read, the receiver
    history = read_history(str(ckpt))
    assert [p.batch_id for p in history.progress] == kept and not history.damaged
    for progress in history.progress:
        plan = coord.read_plan(progress.batch_id)
        assert progress.mode == "wal" and progress.wal_segments == len(plan.segments) > 0
        assert [(p.topic, p.partition, p.start_offset, p.end_offset)
                for p in progress.partitions] == [(r.topic, r.partition, r.start, r.stop)
                                                  for r in plan.ranges]
        assert progress.records == coord.read_completion(progress.batch_id).records
        assert progress.receiver_buffered_bytes is not None
        assert progress.receiver_lag is not None and progress.receiver_lag >= 0
    last = history.progress[-1]
    assert last.lag == 0 and last.receiver_lag == 0 and last.receiver_buffered_bytes == 0
    # a restart with nothing new resumes after the WAL and plans nothing
    assert _summary(run_driver(tmp_path / "out", _flags(kafka, topic, ckpt, wal,
                                                  "--retain_batches=2")))["records"] == 0


# --- crash tests -----------------------------------------------------------------------------

CRASH_POINTS = [
    "receiver_append:1100",  # records buffered, not sealed
    "after_seal:2",         # a segment durable, its offsets not committed
    "after_run:2",          # a batch run, not completed
]
SLOW_CRASH_POINTS = ["after_plan:2", "after_complete:2", "after_commit:2", "after_segment_delete:1"]


def _crash_and_recover(kafka, tmp_path, root, point):
    topic = kafka.create_topic(partitions=4)
    _produce(kafka, topic, 3000)
    ckpt, wal = f"{root}/ckpt", f"{root}/wal"
    flags = _flags(kafka, topic, ckpt, wal, "--retain_batches=1000")
    if point.startswith("after_segment_delete"):
        flags[-1] = "--retain_batches=1"

    crashed = run_driver(tmp_path / "out", flags, crash_at=point)

    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-4000:]
    if point.startswith(("after_plan", "after_run")):
        assert [p.batch_id for p in CheckpointCoordinator(ckpt).pending()] == [1]

    restarted = _summary(run_driver(tmp_path / "out", flags))

    if point.startswith(("after_plan", "after_run")):
        assert restarted["replayed"] == 1 and restarted["batch_ids"][0] == 1
        replays = [p.batch_id for p in read_history(ckpt).progress if p.replay]
        assert replays == [1]
    _assert_exactly_once(kafka, topic, tmp_path / "out", ckpt, wal,
                         all_retained=not point.startswith("after_segment_delete"))


@pytest.mark.parametrize("point", CRASH_POINTS + [
    pytest.param(p, marks=pytest.mark.slow) for p in SLOW_CRASH_POINTS])
def test_sigkill_local(kafka, tmp_path, point):
    _crash_and_recover(kafka, tmp_path, str(tmp_path / "storage"), point)


@pytest.mark.slow
@pytest.mark.parametrize("any_storage_uri", ["gcs", "hdfs"], indirect=True)
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_remote_storage(kafka, tmp_path, any_storage_uri, point):
    _crash_and_recover(kafka, tmp_path, any_storage_uri, point)


# --- receiver on its own ---------------------------------------------------------------------

def _receive_in_thread(config, **kwargs):
    stop = threading.Event()
    receiver = Receiver(config, **kwargs)
    errors = []

    def run():
        try:
            receiver.run(stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return receiver, stop, thread, errors


def _wait_wal_holds(wal, expected, timeout_s=90, errors=()):
    """The WAL's rows once it holds at least ``len(expected)``; fails on a receiver
    error or at the timeout, saying how far it got."""
    rows: list = []

    def holds() -> bool:
        if errors:
            pytest.fail(f"the receiver failed: {errors}")
        rows[:] = _wal_offsets(wal)
        return len(rows) >= len(expected)

    try:
        wait_until(holds, timeout_s, f"the WAL in {wal} holding {len(expected)} records")
    except ZdlError as exc:
        pytest.fail(f"{exc} (it held {len(rows)})")
    return rows


def test_two_receivers_split_partitions_without_reading_twice(kafka, tmp_path):
    topic = kafka.create_topic(partitions=4)
    wal = str(tmp_path / "wal")
    config = _config(kafka, topic, wal)
    _produce(kafka, topic, 2000)
    first = _receive_in_thread(config, name="first")
    _wait_wal_holds(wal, range(2000), errors=first[3])  # the first holds every partition
    second = _receive_in_thread(config, name="second")  # the first's are revoked, split
    wait_until(lambda: second[0].assigned and first[0].assigned, 60,
               "both receivers holding partitions")
    _produce(kafka, topic, 2000, start=2000)
    expected = sorted((topic, p, o) for p, end in kafka.end_offsets(topic).items()
                      for o in range(end))

    rows = _wait_wal_holds(wal, expected)
    for _, stop, thread, _ in (first, second):
        stop.set()
    for _, _, thread, errors in (first, second):
        thread.join(60)
        assert not errors, errors

    assert len(rows) == len(set(rows)), "a record was written to the WAL twice"
    assert sorted(rows) == expected
    assert first[0].stats.rebalances >= 3, first[0].stats  # assign, revoke, assign
    assert first[0].assigned_ever and second[0].assigned_ever, "the group did not split"
    assert first[0].epoch != second[0].epoch
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)


@pytest.mark.slow  # make test: test_finished kills the broker under a WAL run
def test_receiver_survives_a_broker_restart(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    wal = str(tmp_path / "wal")
    receiver, stop, thread, errors = _receive_in_thread(_config(kafka, topic, wal))
    try:
        _produce(kafka, topic, 1000, partitions=2)
        _wait_wal_holds(wal, range(1000))
        kafka.kill()
        time.sleep(3)
    finally:
        kafka.restart()
    _produce(kafka, topic, 1000, partitions=2, start=1000)
    expected = sorted((topic, p, o) for p, end in kafka.end_offsets(topic).items()
                      for o in range(end))

    rows = _wait_wal_holds(wal, expected, timeout_s=120)
    stop.set()
    thread.join(60)

    assert not errors, errors
    assert len(rows) == len(set(rows)) and sorted(rows) == expected
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)


def test_receiver_restarts_after_the_wal_not_after_a_stale_commit(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    wal = str(tmp_path / "wal")
    config = _config(kafka, topic, wal)
    _produce(kafka, topic, 500, partitions=2)
    Receiver(config).run(threading.Event(), drain_to_end=True)
    # Rewind the group's commit, as a crash between seal and commit would leave it.
    from beam_zdl import kafka as kafka_ops
    consumer = kafka_ops.new_consumer(kafka.bootstrap_servers, f"g-{topic}")
    kafka_ops.commit_offsets(consumer, {(topic, 0): 10, (topic, 1): 0})
    consumer.close()
    _produce(kafka, topic, 100, partitions=2, start=500)

    Receiver(config).run(threading.Event(), drain_to_end=True)

    rows = _wal_offsets(wal)
    assert len(rows) == len(set(rows)) == 600
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)


# --- ReadFromWal and corruption ----------------------------------------------------------------

class _WriteFull(beam.DoFn):
    """Writes every field of each record and its element timestamp, one file per bundle."""

    def __init__(self, out_dir: str) -> None:
        self._out_dir = out_dir

    def start_bundle(self) -> None:
        self._rows = []

    def process(self, r, ts=beam.DoFn.TimestampParam) -> None:
        self._rows.append(repr((r.topic, r.partition, r.offset, r.key, r.value, r.timestamp_ms,
                                [tuple(h) for h in r.headers], float(ts))))

    def finish_bundle(self) -> None:
        if self._rows:
            os.makedirs(self._out_dir, exist_ok=True)
            Path(self._out_dir, f"{id(self)}-{time.monotonic_ns()}.txt").write_text(
                "\n".join(self._rows) + "\n")


def _read_full(out_dir) -> list[str]:
    return sorted(line for p in Path(out_dir).glob("*.txt") for line in p.read_text().splitlines())


def test_read_from_wal_yields_what_direct_mode_reads(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, [(b"k", b"v", 0, [("h", b"x"), ("h", None)]), (None, None, 1),
                          (b"", b"", 0)] + [(None, f"v{i}".encode(), i % 2) for i in range(300)])
    wal = str(tmp_path / "wal")
    Receiver(_config(kafka, topic, wal)).run(threading.Event(), drain_to_end=True)
    from tests.beam_helpers import options as kafka_options
    opts = kafka_options(kafka, topic, "--starting_offsets=earliest")

    with beam.Pipeline(runner=pipeline_runner(opts), options=opts) as p:
        _ = p | "Direct" >> beam_zdl.ReadFromKafka(opts) | "D" >> beam.ParDo(
            _WriteFull(str(tmp_path / "direct")))
        _ = p | "Wal" >> beam_zdl.ReadFromWal(wal) | "W" >> beam.ParDo(
            _WriteFull(str(tmp_path / "wal-out")))

    direct = _read_full(tmp_path / "direct")
    assert len(direct) == 303
    assert _read_full(tmp_path / "wal-out") == direct


def test_corrupt_segment_stops_the_batch_naming_segment_and_byte(kafka, tmp_path):
    topic = kafka.create_topic(partitions=1)
    _produce(kafka, topic, 600, partitions=1)
    ckpt, wal = tmp_path / "ckpt", tmp_path / "wal"
    Receiver(_config(kafka, topic, str(wal))).run(threading.Event(), drain_to_end=True)
    segments = list_segments(str(wal))
    assert len(segments) >= 2
    # flip one byte inside one record's value: its block frame's CRC fails, nothing else
    value = b"\x3a\x04v300"  # RecordBlock field 7 (values), 4 bytes: the record at offset 300
    victim = next(s for s in segments if value in Path(s.uri).read_bytes())
    lost = list(next(b for b in read_segment_blocks(victim.uri) if 300 in b.offsets).offsets)
    data = bytearray(Path(victim.uri).read_bytes())
    at = data.index(value) + 3
    data[at] ^= 0xFF
    Path(victim.uri).write_bytes(bytes(data))

    with pytest.raises(WalCorruptionError, match=rf"{victim.name} is corrupt at byte \d+"):
        beam_zdl.run_micro_batches(lambda r, b: None, ZdlOptions(_flags(
            kafka, topic, ckpt, wal, "--max_records_per_partition=0")))
    assert [p.batch_id for p in CheckpointCoordinator(str(ckpt)).pending()] == [0]

    # Replaying the WAL on its own with --fail_on_data_loss=false skips and counts it.
    opts = ZdlOptions(["--fail_on_data_loss=false"])
    p = beam.Pipeline(runner=pipeline_runner(opts), options=opts)
    _ = p | beam_zdl.ReadFromWal(str(wal)) | beam.ParDo(_WriteFull(str(tmp_path / "replay")))
    result = p.run()
    result.wait_until_finish()
    from apache_beam.metrics.metric import MetricsFilter
    lost_frames = result.metrics().query(
        MetricsFilter().with_name("wal_lost_frames"))["counters"]
    assert sum(c.committed for c in lost_frames) == 1
    assert len(_read_full(tmp_path / "replay")) == 600 - len(lost)

    # The pending batch is replayed with the same segments and the frame skipped.
    summary = _summary(run_driver(tmp_path / "out", _flags(
        kafka, topic, ckpt, wal, "--max_records_per_partition=0", "--fail_on_data_loss=false")))
    rows = [row for batch in read_batches(tmp_path / "out").values() for row in batch]
    assert summary["replayed"] == 1 and summary["records"] == 600 - len(lost)
    assert len(rows) == len(set(rows)) == 600 - len(lost)
    assert not {(topic, 0, offset) for offset in lost} & set(rows)


def test_standalone_receive_command_killed_restarted_then_batches(kafka, tmp_path):
    """``beam-zdl receive`` alone: SIGKILL after a seal, restart, SIGTERM; then batches."""
    topic = kafka.create_topic(partitions=4)
    _produce(kafka, topic, 2000)
    ckpt, wal = tmp_path / "ckpt", tmp_path / "wal"
    flags = _flags(kafka, topic, ckpt, wal)
    env = dict(os.environ, PYTHONPATH=str(ROOT), BEAM_ZDL_CRASH_AT="after_seal:2")
    command = [sys.executable, "-m", "beam_zdl.cli", "receive", *flags]

    crashed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert len(list_segments(str(wal))) == 2

    env.pop("BEAM_ZDL_CRASH_AT")
    receiving = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    try:
        rows = _wait_wal_holds(str(wal), range(2000))
    finally:
        receiving.send_signal(signal.SIGTERM)
        out, err = receiving.communicate(timeout=60)
    assert receiving.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["segments"] >= 1
    assert len(rows) == len(set(rows)) == 2000

    summary = _summary(run_driver(tmp_path / "out", flags))

    assert summary["records"] == 2000
    _assert_exactly_once(kafka, topic, tmp_path / "out", ckpt, wal)


def test_storage_outage_pauses_the_receiver_within_max_buffered_bytes(kafka, hdfs, tmp_path):
    """HDFS down while receiving: seals fail, partitions pause, memory stays bounded;
    HDFS back: the buffer is sealed, receiving resumes, nothing lost or doubled."""
    if not hdfs.alive():
        hdfs.restart()
    topic = kafka.create_topic(partitions=2)
    wal = f"{hdfs.url}/{topic}/wal"
    limit = 256 * 1024
    config = _config(kafka, topic, wal, f"--max_buffered_bytes={limit}",
                     "--wal_segment_records=100000")
    receiver, stop, thread, errors = _receive_in_thread(config)
    payload = b"x" * 500
    try:
        kafka.produce(topic, ((None, payload, i % 2) for i in range(200)))
        _wait_wal_holds(wal, range(200), errors=errors)
        hdfs.kill()
        kafka.produce(topic, ((None, payload, i % 2) for i in range(4000)))  # ~2 MB
        wait_until(lambda: receiver.stats.pauses >= 1, 60,
                   "the receiver pausing its partitions while HDFS is down")
        time.sleep(3)
        assert thread.is_alive() and not errors, errors
    finally:
        hdfs.restart()
    expected = sorted((topic, p, o) for p, end in kafka.end_offsets(topic).items()
                      for o in range(end))

    rows = _wait_wal_holds(wal, expected, timeout_s=120, errors=errors)
    stop.set()
    thread.join(60)

    assert not errors, errors
    assert receiver.stats.peak_buffered_bytes <= limit, receiver.stats
    assert len(rows) == len(set(rows)) and sorted(rows) == expected
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)


def test_continuous_trigger_then_available_now(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    _produce(kafka, topic, 1500, partitions=2)
    ckpt, wal = tmp_path / "ckpt", tmp_path / "wal"
    continuous = _summary(run_driver(tmp_path / "out", _flags(
        kafka, topic, ckpt, wal, "--trigger=continuous", "--batch_interval_s=0.5",
        "--max_batches=2")))
    assert continuous["batches"] == 2 and 0 < continuous["records"] <= 1500
    _produce(kafka, topic, 500, partitions=2, start=1500)

    rest = _summary(run_driver(tmp_path / "out", _flags(kafka, topic, ckpt, wal)))

    assert continuous["records"] + rest["records"] == 2000
    _assert_exactly_once(kafka, topic, tmp_path / "out", ckpt, wal)


# --- pieces without a broker -------------------------------------------------------------------

def test_read_footer_finds_the_footer_from_the_end(tmp_path):
    from types import SimpleNamespace

    from beam_zdl.wal import WalWriter, read_footer, verify_segment
    writer = WalWriter(str(tmp_path), "w", epoch=1)
    for i in range(500):
        writer.append(SimpleNamespace(topic="t", partition=i % 7, offset=i, key=None,
                                      value=b"v" * (i % 50), timestamp_ms=i, headers=[]))
    ref = writer.seal()
    data = Path(ref.uri).read_bytes()

    assert read_footer(data, ref.uri) == verify_segment(ref.uri)[1]
    with pytest.raises(WalCorruptionError, match="no intact footer"):
        read_footer(data[:-1], ref.uri)
    damaged = bytearray(data)
    damaged[-6] ^= 1
    with pytest.raises(WalCorruptionError, match="no intact footer"):
        read_footer(bytes(damaged), ref.uri)


def test_segment_refs_read_footers_by_range_on_every_storage(any_storage_uri):
    """Planning's refs come from the footer (ranged reads), and match a full verification;
    a segment whose footer is damaged still gets its spans from the records that verify."""
    from types import SimpleNamespace

    import beam_zdl.wal as wal_
    from beam_zdl.storage import open_storage
    writer = wal_.WalWriter(any_storage_uri, "w", epoch=1)
    refs = []
    for seg in range(2):
        for i in range(seg * 2000, seg * 2000 + 2000):  # ~250 KB: above the tail read
            writer.append(SimpleNamespace(topic="t", partition=i % 3, offset=i, key=None,
                                          value=b"v" * 100, timestamp_ms=i, headers=[]))
        refs.append(writer.seal())
    store = open_storage(any_storage_uri)
    damaged_name = refs[1].uri.rpartition("/")[2]
    data = bytearray(store.read(damaged_name))
    data[-6] ^= 1  # break the footer's CRC
    store.delete(damaged_name)
    store.create(damaged_name, bytes(data))

    found = wal_.segment_refs(wal_.list_segments(any_storage_uri))

    assert [r.uri for r in found] == [r.uri for r in refs]
    assert found[0] == refs[0]
    assert found[0].size_bytes > 64 * 1024  # above the tail read: footers came by range
    assert found[1].record_count == refs[1].record_count
    assert sorted((s.partition, s.first_offset, s.last_offset) for s in found[1].spans) == \
        sorted((s.partition, s.first_offset, s.last_offset) for s in refs[1].spans)


def test_writer_epochs_are_unique_and_not_segments(any_storage_uri):
    from concurrent.futures import ThreadPoolExecutor

    from beam_zdl.wal import claim_writer_epoch
    with ThreadPoolExecutor(4) as pool:
        epochs = list(pool.map(lambda i: claim_writer_epoch(any_storage_uri, f"r{i}"), range(8)))
    assert sorted(epochs) == list(range(1, 9))
    assert list_segments(any_storage_uri) == []


def test_overlapping_segments_are_refused_not_duplicated(kafka, tmp_path):
    """A segment holding offsets another segment holds (a zombie receiver) stops planning."""
    from beam_zdl.wal import WalWriter
    topic = kafka.create_topic(partitions=1)
    _produce(kafka, topic, 300, partitions=1)
    ckpt, wal = tmp_path / "ckpt", tmp_path / "wal"
    Receiver(_config(kafka, topic, str(wal))).run(threading.Event(), drain_to_end=True)
    zombie = WalWriter(str(wal), "zombie", epoch=99)
    for offset in (250, 251):
        zombie.append(next(r for seg in list_segments(str(wal)) for r in read_segment(seg.uri)
                           if r.offset == offset))
    zombie.seal()

    with pytest.raises(beam_zdl.WalOverlapError, match=r"both hold .*offsets \[250, 251\]"):
        beam_zdl.run_micro_batches(lambda r, b: None, ZdlOptions(_flags(kafka, topic, ckpt, wal)))
    assert CheckpointCoordinator(str(ckpt)).planned_ids() == []


@pytest.mark.integration  # (no kill: its docstring speaks of one)
def test_an_assignment_that_arrives_while_closing_is_not_taken(kafka, tmp_path):
    """close() can serve one last rebalance (a killed member's session ended); its lookups
    would fail on the terminating client and fail the run, so the partitions are left."""
    from confluent_kafka import Consumer, TopicPartition

    topic = kafka.create_topic(partitions=1)
    receiver = Receiver(_config(kafka, topic, str(tmp_path / "wal")))
    closed = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "closed"})
    closed.close()
    receiver._closing = True
    receiver._on_assign(closed, [TopicPartition(topic, 0)])  # a closed client: any call raises
    assert not receiver.assigned_ever
