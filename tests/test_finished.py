"""A finished run is finished: ``--trigger=available_now`` exits 0 only when every
partition is processed up to the end offsets seen at start and the group's offsets
are there — with partitions held by killed members, transactional input, and a
broker that dies mid-run. Real broker, real driver processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import beam_zdl
from beam_zdl.errors import PartitionsUnavailableError
from beam_zdl.options import ZdlOptions
from beam_zdl.wal import list_segments
from tests.driver_proc import read_batches, run_driver, start_driver

ROOT = Path(__file__).resolve().parents[1]


def _flags(kafka, topic, tmp_path, mode, *extra, session_ms=4000):
    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--consumer_group=g-{topic}",
             "--starting_offsets=earliest", "--max_records_per_partition=400",
             '--consumer_config={"session.timeout.ms": %d, "heartbeat.interval.ms": 500}'
             % session_ms]
    if mode == "wal":
        flags += ["--zdl_mode=wal", f"--wal_dir={tmp_path / 'wal'}",
                  "--wal_segment_records=250", "--wal_segment_age_s=0.5"]
    return flags + list(extra)


def _summary(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _output_rows(out_dir) -> list[tuple]:
    return [row for batch in read_batches(out_dir).values() for row in batch]


def _assert_exactly(rows, expected) -> None:
    assert len(rows) == len(set(rows)), "a record appears twice in the output"
    missing = set(expected) - set(rows)
    extra = set(rows) - set(expected)
    assert not missing and not extra, (f"{len(missing)} missing, e.g. {sorted(missing)[:3]}; "
                                       f"{len(extra)} unexpected, e.g. {sorted(extra)[:3]}")


def _all_offsets(kafka, topic) -> list[tuple]:
    return [(topic, p, o) for p, end in kafka.end_offsets(topic).items() for o in range(end)]


# --- transactional input ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["direct", "wal"])
def test_transactional_input_outputs_committed_records_and_commits_the_end(
        kafka, tmp_path, mode):
    """Aborted transactions are never output; the group's offsets pass the markers that end
    each partition (before, WAL mode stayed behind them forever)."""
    topic = kafka.create_topic(partitions=2)
    transactions = [(i % 3 != 2, [(f"k{i}-{j}".encode(), f"v{j}".encode(), j % 2)
                                  for j in range(150)]) for i in range(9)]  # ends in an abort
    committed_records = kafka.produce_transactions(topic, transactions)
    assert len(committed_records) == 6 * 150

    summary = _summary(run_driver(tmp_path / "out", _flags(kafka, topic, tmp_path, mode)))

    assert summary["records"] == len(committed_records)
    _assert_exactly(_output_rows(tmp_path / "out"), committed_records)
    ends = kafka.end_offsets(topic)
    assert all(end > max(o for t, p, o in committed_records if p == part) + 1
               for part, end in ends.items()), "the partitions should end in markers"
    assert kafka.committed(f"g-{topic}", topic) == ends


# --- partitions held by other members ----------------------------------------------------------

def _receive_command(flags):
    return [sys.executable, "-m", "beam_zdl.cli", "receive", *flags]


def _wait(check, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_wal_available_now_waits_for_a_killed_members_partitions(kafka, tmp_path):
    """A stand-alone receiver is SIGKILLed holding every partition: the next available_now
    run cannot get them until the dead member's session times out. It must wait for them
    (logging who holds them), not exit 0 with them unread."""
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 4) for i in range(4000)))
    # A long session, so the dead member is still in the group when the run starts.
    flags = _flags(kafka, topic, tmp_path, "wal", session_ms=20000)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    receiver = subprocess.Popen(_receive_command(flags), env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: len(list_segments(str(tmp_path / "wal"))) >= 2, 90, "the first segments")
    finally:
        receiver.kill()
        receiver.wait()
    killed_at = time.monotonic()
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 4) for i in range(4000, 6000)))

    run = run_driver(tmp_path / "out", flags)
    took = time.monotonic() - killed_at

    summary = _summary(run)
    waits = [line for line in run.stderr.splitlines() if "waiting for" in line]
    print(f"available_now finished {took:.1f} s after the kill; "
          f"{len(waits)} waiting reports, e.g. {waits[:1]}")
    # who holds them: a member id, or (while the group waits for the dead member to
    # rejoin) a rebalance under way
    assert waits and f"{topic}[1]" in waits[0], run.stderr[-3000:]
    assert "held by member" in waits[0] or "rebalance is under way" in waits[0], waits[0]
    _assert_exactly(_output_rows(tmp_path / "out"), _all_offsets(kafka, topic))
    assert summary["records"] == 6000
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)


def test_wal_available_now_fails_naming_partitions_a_live_member_keeps(kafka, tmp_path):
    """A member that holds partitions and never commits them: after --drain_timeout_s the
    run fails naming the partitions and the member, having skipped nothing."""
    from confluent_kafka import Consumer
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 4) for i in range(400)))
    squatter = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"g-{topic}",
                         "enable.auto.commit": False, "session.timeout.ms": 6000,
                         "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest"})
    squatter.subscribe([topic])
    stop = threading.Event()

    def keep_polling() -> None:
        while not stop.is_set():
            squatter.poll(0.2)

    _wait(lambda: squatter.poll(0.2) is not None or bool(squatter.assignment()), 60,
          "the squatter's assignment")
    member = squatter.memberid()  # before the poller starts: calls may not overlap a poll
    poller = threading.Thread(target=keep_polling, daemon=True)
    poller.start()
    try:
        with pytest.raises(PartitionsUnavailableError) as raised:
            beam_zdl.run_micro_batches(lambda records, batch: None, ZdlOptions(_flags(
                kafka, topic, tmp_path, "wal", "--drain_timeout_s=8")))
    finally:
        stop.set()
        poller.join()
        squatter.close()
    message = str(raised.value)
    assert "--drain_timeout_s=8" in message and member in message, message
    assert f"{topic}[" in message and "committed none of 100" in message, message


# --- a broker killed mid-run -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["wal", pytest.param("direct", marks=pytest.mark.slow)])
def test_broker_killed_mid_run_the_same_run_finishes(kafka, tmp_path, mode):
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 4) for i in range(8000)))
    flags = _flags(kafka, topic, tmp_path, mode, "--max_records_per_partition=200")
    driver = start_driver(tmp_path / "out", flags, tmp_path / "driver.log")
    try:
        _wait(lambda: len(read_batches(tmp_path / "out")) >= 2 or driver.poll() is not None,
              120, "two completed batches")
        assert driver.poll() is None, "the run ended before the broker was killed"
        kafka.kill()
        time.sleep(3)
    finally:
        kafka.restart()
    assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()[-4000:]
    _assert_exactly(_output_rows(tmp_path / "out"), _all_offsets(kafka, topic))
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)
