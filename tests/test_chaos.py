"""Repeated SIGKILLs at random moments while a producer keeps writing, then one
``available_now`` run: every record exactly once, group offsets at the end.

Kills are timed from the process's own progress (a new WAL segment or batch
output), so they land while it works, not while it imports; each test prints
how many kills it delivered to a running process.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from beam_zdl.wal import list_segments
from tests.driver_proc import read_batches, run_driver, start_driver
from tests.test_wal_mode import _assert_exactly_once, _flags, _summary

ROOT = Path(__file__).resolve().parents[1]


class _Producer:
    """Keeps producing small records to every partition from a thread until stopped."""

    def __init__(self, kafka, topic: str, partitions: int, per_second: int = 300) -> None:
        from confluent_kafka import Producer
        self._producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                                   "linger.ms": 5, "enable.idempotence": True})
        self._topic, self._partitions, self._rate = topic, partitions, per_second
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(self._rate // 10):
                self._producer.produce(self._topic, value=f"p{self.sent}".encode(),
                                       partition=self.sent % self._partitions)
                self.sent += 1
            self._producer.poll(0)
            self._stop.wait(0.1)

    def __enter__(self) -> "_Producer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        assert self._producer.flush(60) == 0, "the producer could not deliver everything"


def _kill_while_busy(proc: subprocess.Popen, progress, rng: random.Random,
                     timeout_s: float = 120) -> bool:
    """SIGKILL ``proc`` a random moment (0-1.5 s) after ``progress()`` first changes.

    Returns True when the kill hit a running process.
    """
    before = progress()
    deadline = time.monotonic() + timeout_s
    while progress() == before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is not None:
        return False
    proc.kill()
    proc.wait()
    return True


def _progress(wal: str, out_dir: Path):
    return lambda: (len(list_segments(wal)), len(read_batches(out_dir)))


def _chaos_driver(kafka, tmp_path, root: str, rounds: int) -> None:
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 4) for i in range(6000)))
    ckpt, wal, out = f"{root}/ckpt", f"{root}/wal", tmp_path / "out"
    # Batches of up to 1500 records per partition: the final run catches up in a few
    # batches, also on slow storage (HDFS, under load).
    flags = _flags(kafka, topic, ckpt, wal, "--retain_batches=1000",
                   "--max_records_per_partition=1500")
    rng = random.Random(f"{topic}-driver")
    kills = 0
    with _Producer(kafka, topic, 4):
        for i in range(rounds):
            driver = start_driver(out, flags, tmp_path / f"driver-{i}.log")
            kills += _kill_while_busy(driver, _progress(wal, out), rng)

    final = run_driver(out, flags, timeout=600)

    summary = _summary(final)
    print(f"driver SIGKILLs delivered mid-run: {kills} of {rounds}; final run: "
          f"{summary['batches']} batches ({summary['replayed']} replayed), "
          f"{summary['records']} records")
    assert kills >= rounds // 2, f"only {kills} of {rounds} kills landed on a running driver"
    _assert_exactly_once(kafka, topic, out, ckpt, wal)


@pytest.mark.parametrize("any_storage_uri", [
    "local",
    pytest.param("gcs", marks=pytest.mark.slow),
    pytest.param("hdfs", marks=pytest.mark.slow)], indirect=True)
def test_wal_driver_sigkilled_repeatedly_then_available_now(kafka, tmp_path, any_storage_uri):
    _chaos_driver(kafka, tmp_path, any_storage_uri, rounds=6)


@pytest.mark.slow
def test_wal_driver_sigkilled_many_times_local(kafka, tmp_path):
    _chaos_driver(kafka, tmp_path, str(tmp_path / "storage"), rounds=16)


@pytest.mark.slow  # make test keeps the driver variant and test_wal_mode's receive kill
def test_standalone_receive_sigkilled_repeatedly_then_available_now(kafka, tmp_path):
    """``beam-zdl receive`` killed >= 10 times while a producer writes; then one
    available_now run outputs every record once and ``beam-zdl verify`` is clean."""
    topic = kafka.create_topic(partitions=4)
    ckpt, wal, out = str(tmp_path / "ckpt"), str(tmp_path / "wal"), tmp_path / "out"
    flags = _flags(kafka, topic, ckpt, wal)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "beam_zdl.cli", "receive", *flags]
    rng = random.Random(f"{topic}-receive")
    rounds, kills = 12, 0
    with _Producer(kafka, topic, 4):
        for i in range(rounds):
            with open(tmp_path / f"receive-{i}.log", "wb") as log:
                receiver = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT)
                kills += _kill_while_busy(receiver, lambda: len(list_segments(wal)), rng)

    summary = _summary(run_driver(out, flags))

    print(f"receiver SIGKILLs delivered mid-run: {kills} of {rounds}; segments "
          f"{len(list_segments(wal))}; final run {summary['records']} records")
    assert kills >= 10, f"only {kills} of {rounds} kills landed on a running receiver"
    _assert_exactly_once(kafka, topic, out, ckpt, wal)
    verify = subprocess.run([sys.executable, "-m", "beam_zdl.cli", "verify", wal], env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
