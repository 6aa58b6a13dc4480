"""Warm SDK workers (beam_zdl.worker_pool): reused across batches, a SIGKILLed worker
replaced and its batch run again exactly, no worker left behind by the driver.

With ``--direct_num_workers=2`` one worker is the driver itself (a harness thread) and
one is a warm worker process."""

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

import beam_zdl
from beam_zdl.coordinator import CheckpointCoordinator
from tests.beam_helpers import MULTI_WORKER
from tests.driver_proc import read_batches

ROOT = Path(__file__).resolve().parents[1]


def _flags(kafka, topic, tmp_path, *extra):
    return [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
            f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--consumer_group=g-{topic}",
            "--starting_offsets=earliest", *MULTI_WORKER, *extra]


def _write_batch(rows: list, out_dir: str, batch_id: int) -> None:
    """The idempotent sink of these tests: one file per batch id, replaced atomically."""
    path = os.path.join(out_dir, f"batch-{batch_id:06d}.jsonl")
    with open(f"{path}.tmp", "w") as out:
        out.writelines(json.dumps(row) + "\n" for row in sorted(rows))
    os.replace(f"{path}.tmp", path)


class _KillOnce(beam.DoFn):
    """SIGKILLs the worker process (not the driver) that first reaches batch ``batch_id``
    (once per marker)."""

    def __init__(self, batch_id: int, current: int, marker: str) -> None:
        self._kill = batch_id == current
        self._marker = marker
        self._driver = os.getpid()

    def process(self, record):
        if self._kill and os.getpid() != self._driver:
            try:
                os.close(os.open(self._marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        yield record


def _build(out_dir: str, kill_marker: str | None = None, kill_batch: int = -1):
    def build(records, batch):
        if kill_marker:
            records = records | beam.ParDo(_KillOnce(kill_batch, batch.batch_id, kill_marker))
        (records
         | beam.Map(lambda r: [r.topic, r.partition, r.offset, os.getpid()])
         | beam.combiners.ToList()
         | beam.Map(_write_batch, out_dir, batch.batch_id))
    return build


def _check_exactly_once(kafka, topic, out_dir, ckpt_dir) -> dict[int, set[int]]:
    """Every record once, each batch exactly its plan; returns the worker pids per batch."""
    batches = read_batches(out_dir)
    rows = [(t, p, o) for batch in batches.values() for t, p, o, _ in batch]
    expected = sorted((topic, p, o) for p, end in kafka.end_offsets(topic).items()
                      for o in range(end))
    assert len(rows) == len(set(rows)), "a record appears twice in the output"
    assert sorted(rows) == expected, "records missing from the output"
    coord = CheckpointCoordinator(str(ckpt_dir))
    assert coord.pending() == []
    for batch_id, batch_rows in batches.items():
        plan = coord.read_plan(batch_id)
        assert sorted((t, p, o) for t, p, o, _ in batch_rows) == sorted(
            (r.topic, r.partition, o) for r in plan.ranges for o in range(r.start, r.stop))
    return {batch_id: {pid for *_, pid in rows} for batch_id, rows in batches.items()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited; only its entry is left


def _wait_gone(pids, timeout_s: float = 60.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


def _worker_children(parent: int) -> set[int]:
    """Warm worker processes whose parent is ``parent``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"\nPPid:\t{parent}\n" in status and b"beam_zdl.worker_pool" in cmdline:
            found.add(int(entry.name))
    return found


def test_worker_processes_are_reused_across_batches_and_stopped_at_the_end(kafka, tmp_path):
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 4) for i in range(800)))
    out = tmp_path / "out"
    out.mkdir()

    summary = beam_zdl.run_micro_batches(_build(str(out)), beam_zdl.ZdlOptions(
        _flags(kafka, topic, tmp_path, "--max_records_per_partition=50")))

    assert summary.batches == 4 and summary.records == 800
    pids = _check_exactly_once(kafka, topic, out, tmp_path / "ckpt")
    used = set().union(*pids.values())
    # The driver and the same worker process read every batch (each gets a share of every
    # batch's ranges).
    assert os.getpid() in used and len(used) == 2, pids
    assert all(p == used for p in pids.values()), pids
    assert _wait_gone(used - {os.getpid()}, timeout_s=10) == set(), \
        "the worker process outlived the run"
    assert not [t for t in threading.enumerate() if t.name == "beam-zdl-driver-worker"], \
        "the driver's own worker harness outlived the run"


def test_sigkilled_worker_is_replaced_and_its_batch_runs_again_exactly(kafka, tmp_path):
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 4) for i in range(800)))
    out = tmp_path / "out"
    out.mkdir()
    marker = str(tmp_path / "killed")

    summary = beam_zdl.run_micro_batches(
        _build(str(out), kill_marker=marker, kill_batch=1),
        beam_zdl.ZdlOptions(_flags(kafka, topic, tmp_path, "--max_records_per_partition=50")))

    assert os.path.exists(marker), "no worker was killed"
    assert summary.batches == 4 and summary.records == 800 and summary.replayed == 0
    pids = _check_exactly_once(kafka, topic, out, tmp_path / "ckpt")
    before, after = pids[0], pids[2] | pids[3]
    assert before - after, f"the killed worker kept serving batches: {pids}"
    assert after - before, f"no replacement worker served later batches: {pids}"


def _start_driver(kafka, topic, tmp_path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BEAM_ZDL_CRASH_AT", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.driver_proc", str(tmp_path / "out"),
         *_flags(kafka, topic, tmp_path, "--trigger=continuous", "--batch_interval_s=0.5")],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _workers_after_first_batch(proc: subprocess.Popen, tmp_path) -> set[int]:
    deadline = time.monotonic() + 120
    while not read_batches(tmp_path / "out"):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no batch within 120 s"
        time.sleep(0.2)
    workers = _worker_children(proc.pid)
    assert len(workers) == 1, f"expected 1 warm worker process under the driver, found {workers}"
    return workers


def test_ctrl_c_stops_the_driver_and_its_workers(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, b"x", i % 2) for i in range(100)))
    proc = _start_driver(kafka, topic, tmp_path)
    try:
        workers = _workers_after_first_batch(proc, tmp_path)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert _wait_gone(workers) == set(), "worker processes outlived the driver"


def test_sigkilled_driver_leaves_no_worker_behind(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, b"x", i % 2) for i in range(100)))
    proc = _start_driver(kafka, topic, tmp_path)
    try:
        workers = _workers_after_first_batch(proc, tmp_path)
        proc.kill()
        proc.wait()
    finally:
        proc.kill()
    assert _wait_gone(workers) == set(), "worker processes outlived the SIGKILLed driver"


def test_wal_mode_spreads_a_batch_s_segments_over_worker_processes(kafka, tmp_path):
    """WAL mode: as in direct mode, one worker is the driver (the receiver is a process of
    its own), and a batch of several segments is read by both workers (one element per
    segment, spread)."""
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 4) for i in range(2000)))
    out = tmp_path / "out"
    out.mkdir()

    summary = beam_zdl.run_micro_batches(_build(str(out)), beam_zdl.ZdlOptions(
        _flags(kafka, topic, tmp_path, "--zdl_mode=wal", f"--wal_dir={tmp_path / 'wal'}",
               "--wal_segment_records=100", "--trigger=available_now")))

    assert summary.records == 2000
    batches = read_batches(out)
    rows = sorted((t, p, o) for batch in batches.values() for t, p, o, _ in batch)
    assert rows == sorted((topic, p, o) for p, end in kafka.end_offsets(topic).items()
                          for o in range(end))
    coord = CheckpointCoordinator(str(tmp_path / "ckpt"))
    pids = {b: {pid for *_, pid in batch} for b, batch in batches.items()}
    multi = [b for b in batches if len(coord.read_plan(b).segments) >= 2]
    assert multi, "no batch had two segments"
    for b in multi:
        assert len(pids[b]) == 2 and os.getpid() in pids[b], (b, pids)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in raw if b"=" in e)


def test_worker_processes_cap_malloc_arenas_unless_the_environment_sets_them(monkeypatch):
    from beam_zdl.worker_pool import WORKER_MALLOC_ARENAS, WorkerPool
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    pool = WorkerPool(1, driver_reads=False)
    try:
        [pid] = pool.pids()
        assert _environ(pid)["MALLOC_ARENA_MAX"] == str(WORKER_MALLOC_ARENAS)
    finally:
        pool.close()
    assert "MALLOC_ARENA_MAX" not in os.environ, "the driver's own environment changed"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the user's setting wins
    pool = WorkerPool(1, driver_reads=False)
    try:
        [pid] = pool.pids()
        assert _environ(pid)["MALLOC_ARENA_MAX"] == "4"
    finally:
        pool.close()
