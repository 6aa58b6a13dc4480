"""Kafka → run_micro_batches → WriteToKafka → Kafka with the driver SIGKILLed again and
again, in direct and WAL modes: a ``read_committed`` consumer of the output topic sees
each input record's output exactly once. Kills land at named crash points — between a
shard's commit and the batch's completion (``after_shard_commit``, ``after_run``), with
a transaction open (``before_shard_commit``), around the checkpoint writes — and at
random moments timed from the driver's progress. A zombie driver (SIGSTOPped while a
newer one takes over) is fenced and adds nothing to the output.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.kafka_sink_proc import (output_counts, run_sink_driver, start_sink_driver)
from tests.test_chaos import _Producer, _kill_while_busy

SHARDS = 3
# Named points, each where a driver process SIGKILLs itself (<point>:<n> = the n-th time).
CRASH_POINTS = ["after_shard_commit:1", "after_run", "before_shard_commit:2",
                "after_shard_commit:2", "after_complete", "after_shard_commit:4",
                "after_plan:2", "after_shard_commit:3"]


def _flags(kafka, topic, tmp_path, mode, *extra):
    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--consumer_group=g-{topic}",
             "--starting_offsets=earliest", "--max_records_per_partition=100",
             '--consumer_config={"session.timeout.ms": 4000, "heartbeat.interval.ms": 500}']
    if mode == "wal":
        flags += ["--zdl_mode=wal", f"--wal_dir={tmp_path / 'wal'}",
                  "--wal_segment_records=300", "--wal_segment_age_s=0.5"]
    return flags + list(extra)


def _progress(ckpt: Path):
    def count(sub: str) -> int:
        try:
            return len(os.listdir(ckpt / sub))
        except FileNotFoundError:
            return 0
    return lambda: (count("plans"), count("completions"))


def _summary(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_each_input_once(kafka, topic, out_topic) -> tuple[int, int, int]:
    """Output counts against every input record; returns (records, duplicates, lost)."""
    expected = {f"out:{topic}/{p}/{o}" for p, end in kafka.end_offsets(topic).items()
                for o in range(end)}
    counts = output_counts(kafka.bootstrap_servers, out_topic)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    lost = len(expected - set(counts))
    unexpected = set(counts) - expected
    print(f"output: {sum(counts.values())} records for {len(expected)} inputs; "
          f"duplicates {duplicates}, lost {lost}")
    assert not unexpected, f"unexpected output records, e.g. {sorted(unexpected)[:3]}"
    assert duplicates == 0 and lost == 0, (
        f"{duplicates} duplicates, e.g. {[v for v, c in counts.items() if c > 1][:3]}; "
        f"{lost} lost, e.g. {sorted(expected - set(counts))[:3]}")
    return len(expected), duplicates, lost


def _chaos(kafka, tmp_path, mode, crash_points, random_kills, records=4000,
           producing=False) -> None:
    topic = kafka.create_topic(partitions=4)
    out_topic = kafka.create_topic(partitions=3)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 4) for i in range(records)))
    flags = _flags(kafka, topic, tmp_path, mode)
    rng = random.Random(f"{topic}-sink")
    kills = named = 0
    producer = _Producer(kafka, topic, 4) if producing else None
    if producer:
        producer.__enter__()
    try:
        for point in crash_points:
            run = run_sink_driver(out_topic, SHARDS, flags, crash_at=point)
            assert run.returncode in (0, -signal.SIGKILL), run.stderr[-4000:]
            named += run.returncode == -signal.SIGKILL
        for i in range(random_kills):
            driver = start_sink_driver(out_topic, SHARDS, flags, tmp_path / f"driver-{i}.log")
            kills += _kill_while_busy(driver, _progress(tmp_path / "ckpt"), rng)
    finally:
        if producer:
            producer.__exit__(None, None, None)

    summary = _summary(run_sink_driver(out_topic, SHARDS, flags))

    print(f"{mode}: SIGKILLs delivered: {named} at named points of {len(crash_points)}, "
          f"{kills} at random moments of {random_kills}; final run {summary['batches']} "
          f"batches ({summary['replayed']} replayed), {summary['records']} records")
    assert named + kills >= 8, f"only {named + kills} kills landed on a running driver"
    _assert_each_input_once(kafka, topic, out_topic)


@pytest.mark.parametrize("mode", ["direct", pytest.param("wal", marks=pytest.mark.slow)])
def test_kafka_to_kafka_exactly_once_through_driver_sigkills(kafka, tmp_path, mode):
    _chaos(kafka, tmp_path, mode, CRASH_POINTS[:6], random_kills=3,
           records=4000 if mode == "direct" else 3000)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["direct", "wal"])
def test_kafka_to_kafka_exactly_once_many_sigkills_while_producing(kafka, tmp_path, mode):
    _chaos(kafka, tmp_path, mode, CRASH_POINTS, random_kills=12, records=8000,
           producing=True)


def test_zombie_driver_is_fenced_and_adds_nothing(kafka, tmp_path):
    """Driver A is frozen (SIGSTOP) mid-run — maybe inside a shard's transaction; driver B
    takes over and finishes; then A resumes. B's writers fenced A's (same
    transactional.id) and B's epoch fenced A's checkpoint writes: A fails, and the
    output holds each input once."""
    topic = kafka.create_topic(partitions=4)
    out_topic = kafka.create_topic(partitions=3)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 4) for i in range(2000)))
    flags = _flags(kafka, topic, tmp_path, "direct")
    zombie = start_sink_driver(out_topic, SHARDS, flags, tmp_path / "zombie.log")
    try:
        progress = _progress(tmp_path / "ckpt")
        deadline = time.monotonic() + 120
        while progress()[1] < 1 and zombie.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(random.Random(topic).uniform(0.0, 0.8))
        assert zombie.poll() is None, "driver A finished before it could be frozen"
        zombie.send_signal(signal.SIGSTOP)

        summary = _summary(run_sink_driver(out_topic, SHARDS, flags))

        zombie.send_signal(signal.SIGCONT)
        code = zombie.wait(timeout=180)
    finally:
        if zombie.poll() is None:
            zombie.kill()
            zombie.wait()
    log = (tmp_path / "zombie.log").read_text()
    print(f"driver B: {summary}; zombie A exit {code}: "
          f"{[l for l in log.splitlines() if 'Error' in l][-1:]}")
    assert code != 0, "the zombie driver should have been fenced"
    assert any(why in log for why in ("CheckpointConflictError", "fenced by a newer writer",
                                      "so it cannot write batch")), log[-3000:]
    _assert_each_input_once(kafka, topic, out_topic)
