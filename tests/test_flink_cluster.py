"""beam_zdl on a real Flink session cluster (beam_zdl.testing.LocalFlink).

One JobManager and two TaskManagers run as separate JVMs, Python SDK workers
come from Beam's worker pool (EXTERNAL environment), and jobs are submitted
by Beam's job server with ``--flink_master=localhost:<rest port>``, as on a
real cluster. Every test is slow (a job takes tens of seconds to reach its
first read on 2 cores); ``make test-all`` runs them.

Streaming tests write every record's (partition, offset) in the read's own
fused stage (``tests/streaming_proc.py ids``), one file per bundle: an
idempotent sink keyed by offset, so "exactly once" means the distinct ids are
exactly the produced records, and duplicates are counted as replays.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from beam_zdl.coordinator import CheckpointCoordinator
from beam_zdl.progress_history import read_history
from beam_zdl.testing.flink_cluster import LocalFlink
from tests.driver_proc import read_batches
from tests.test_streaming import _ids, _Job, _Producer
from tests.test_wal_mode import _assert_exactly_once

ROOT = Path(__file__).resolve().parents[1]

# A job takes tens of seconds (minutes on a loaded machine) to its first read.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def flink(tmp_path_factory):
    with LocalFlink(taskmanagers=2, slots=2,
                    workdir=tmp_path_factory.mktemp("localflink")) as cluster:
        yield cluster


@pytest.fixture
def cluster(flink):
    """The module's cluster with every TaskManager up and no job left running after the test."""
    for i in range(flink.taskmanager_count):
        if not flink.taskmanager_alive(i):
            flink.restart_taskmanager(i)
    yield flink
    for job in flink.running_jobs():
        flink.cancel(job)


def _outputs(out: Path) -> list[tuple[tuple[int, int], float]]:
    """Every (partition, offset) written, with the time its file was written."""
    rows = []
    for path in out.glob("*.jsonl"):
        when = path.stat().st_mtime
        rows.extend((tuple(json.loads(line)), when) for line in path.read_text().splitlines())
    return rows


def _seed(kafka, topic: str, partitions: int, count: int) -> None:
    kafka.produce(topic, ((None, b"seed", i % partitions) for i in range(count)))


def _all_offsets(kafka, topic: str) -> set[tuple[int, int]]:
    return {(p, o) for p, end in kafka.end_offsets(topic).items() for o in range(end)}


def test_parallel_read_of_a_topic_being_produced_to_outputs_every_record_once(
        kafka, cluster, tmp_path):
    """Parallelism 2 over both TaskManagers; offsets are committed only after checkpoints."""
    topic = kafka.create_topic(partitions=4)
    group = f"g-{topic}"
    seed, more = 400, 20_000
    _seed(kafka, topic, 4, seed)
    producer = _Producer(kafka, topic, 4, more, rate=1000)
    job = _Job(kafka, topic, group, cluster.runner_args(parallelism=2), "ids", tmp_path / "out")
    try:
        job.wait_for(lambda: _ids(job.out), 300, "first records read on the cluster")
        producer.start()
        # Both TaskManagers run part of the job (slots are spread evenly).
        assert all(tm["freeSlots"] < tm["slotsNumber"] for tm in cluster.taskmanagers())
        lagging = []

        def all_read() -> bool:
            read = set(_ids(job.out))
            committed = sum(max(o, 0) for o in kafka.committed(group, topic).values())
            if 0 < committed < len(read):
                lagging.append((committed, len(read)))
            return len(read) >= seed + more
        job.wait_for(all_read, 300, f"{seed + more} records read")
        producer.finish()
        time.sleep(3)  # a duplicate would show up here
        rows = _ids(job.out)
        ends = kafka.end_offsets(topic)
        job.wait_for(lambda: kafka.committed(group, topic) == ends, 60,
                     "the group's offsets at the end offsets")
    finally:
        job.kill()
    assert len(rows) == len(set(rows)), "a record was output twice without any failure"
    assert set(rows) == _all_offsets(kafka, topic)
    # Commits trail the reads: at some moment the group had committed less than was read.
    assert lagging, "committed offsets never trailed the records read"
    print(f"\n[flink cluster] committed < read seen {len(lagging)} times, e.g. {lagging[0]}")


def _run_until_mid_stream(kafka, cluster, topic: str, group: str, job: _Job,
                          producer: _Producer, seed: int) -> str:
    """Seed ``topic`` (4 partitions) with ``seed`` records, wait for the job's first
    records, start producing, and wait until it has read 3,000 records and committed past
    the seed on every partition; return the job id."""
    _seed(kafka, topic, 4, seed)
    job.wait_for(lambda: _ids(job.out), 300, "first records read on the cluster")
    producer.start()
    job_id = cluster.wait_for_job()

    def mid_stream() -> bool:
        committed = kafka.committed(group, topic)
        return (len(_ids(job.out)) > 3000 and all(o > 0 for o in committed.values())
                and sum(committed.values()) > seed)
    job.wait_for(mid_stream, 300, "job reading with offsets committed")
    return job_id


def test_taskmanager_sigkilled_mid_stream_restores_from_the_last_checkpoint(
        kafka, cluster, tmp_path):
    topic = kafka.create_topic(partitions=4)
    group = f"g-{topic}"
    seed = 400
    producer = _Producer(kafka, topic, 4, None, rate=500)
    job = _Job(kafka, topic, group, cluster.runner_args(parallelism=2), "ids", tmp_path / "out")
    try:
        job_id = _run_until_mid_stream(kafka, cluster, topic, group, job, producer, seed)
        committed = kafka.committed(group, topic)
        before_kill = _outputs(job.out)
        triggered = {c["id"]: c["trigger_timestamp"] / 1000
                     for c in cluster.checkpoints(job_id)["history"]}
        cluster.kill_taskmanager(0)  # while the producer keeps producing
        read_at_kill = len(producer.timestamps)

        restored: dict = {}

        def restored_from_checkpoint() -> bool:
            stats = cluster.checkpoints(job_id)
            triggered.update({c["id"]: c["trigger_timestamp"] / 1000 for c in stats["history"]})
            restored.update(stats["latest"].get("restored") or {})
            return bool(restored)
        job.wait_for(restored_from_checkpoint, 300, "Flink restoring the job from a checkpoint")
        cluster.restart_taskmanager(0)
        time.sleep(5)
        total = seed + producer.stop()
        job.wait_for(lambda: len(set(_ids(job.out))) >= total, 300,
                     f"all {total} records read after the restore")
        time.sleep(3)
        outputs = _outputs(job.out)
        assert cluster.job_status(job_id) == "RUNNING"  # the same job continued
    finally:
        producer.stop()  # if the test failed first
        job.kill()
    rows = [row for row, _ in outputs]
    # Nothing lost.
    assert set(rows) == _all_offsets(kafka, topic)
    # Commit after output: every offset below the committed one was output before the kill.
    for p, c in committed.items():
        assert {(p, o) for o in range(c)} <= {row for row, _ in before_kill}
    # Replayed: only what the job output after the restored checkpoint's barrier. (Not
    # "only offsets at or above the commit": the 2.62 runner finalizes every bundle
    # finished so far when any checkpoint completes, so commits can run ahead of it.)
    barrier = triggered[restored["id"]]
    first_output: dict = {}
    for row, when in outputs:
        first_output[row] = min(when, first_output.get(row, when))
    counts = Counter(rows)
    replayed = [r for r, n in counts.items() if n > 1]
    early = [r for r in replayed if first_output[r] < barrier - 0.1]
    assert not early, f"{len(early)} records output before checkpoint {restored['id']} replayed"
    ahead = sum(1 for p, o in replayed if o < committed[p])
    print(f"\n[flink cluster] TaskManager 0 SIGKILLed with {len(before_kill)} records output, "
          f"{read_at_kill} produced (of {total - seed}); restored checkpoint {restored['id']}; "
          f"committed at kill {committed}; replayed {sum(n - 1 for n in counts.values())} "
          f"records, all output after that checkpoint's barrier ({ahead} of them below the "
          f"offsets committed at the kill)")


def test_job_cancelled_then_a_fresh_job_resumes_at_the_committed_offsets(
        kafka, cluster, tmp_path):
    topic = kafka.create_topic(partitions=4)
    group = f"g-{topic}"
    seed = 400
    producer = _Producer(kafka, topic, 4, None, rate=500)
    args = cluster.runner_args(parallelism=2)
    first = _Job(kafka, topic, group, args, "ids", tmp_path / "run1")
    try:
        job_id = _run_until_mid_stream(kafka, cluster, topic, group, first, producer, seed)
        cluster.cancel(job_id)  # while the producer keeps producing
    except BaseException:
        producer.stop()
        raise
    finally:
        first.kill()
    committed = kafka.committed(group, topic)  # the cancelled job commits nothing more
    run1 = _ids(first.out)

    second = _Job(kafka, topic, group, args, "ids", tmp_path / "run2")
    try:
        second.wait_for(lambda: _ids(second.out), 300, "the fresh job reading")
        time.sleep(5)
        total = seed + producer.stop()
        second.wait_for(lambda: len(set(_ids(second.out)) | set(run1)) >= total, 300,
                        "every record in the combined output")
        run2 = _ids(second.out)
    finally:
        producer.stop()  # if the test failed first
        second.kill()
    assert set(run1) | set(run2) == _all_offsets(kafka, topic)
    for p, c in committed.items():
        assert {(p, o) for o in range(c)} <= set(run1), f"partition {p} committed {c}"
        assert min(o for q, o in run2 if q == p) == c  # the fresh job starts at the commit
    replayed = set(run1) & set(run2)
    assert all(o >= committed[p] for p, o in replayed)
    assert len(run2) == len(set(run2))
    print(f"\n[flink cluster] cancelled with {committed} committed; run1 {len(run1)}, "
          f"run2 {len(run2)}, replayed {len(replayed)} (read after the last commit)")


# --- micro-batches: each batch a bounded job on the cluster ------------------------------------

def _run_driver(out_dir: Path, flags: list[str], crash_at: str | None = None,
                timeout_s: float = 600) -> subprocess.CompletedProcess:
    """tests/driver_proc.py in its own process group; whatever it started (its job server)
    is killed with it, as a crashed driver machine would take it down."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BEAM_ZDL_CRASH_AT", None)
    if crash_at:
        env["BEAM_ZDL_CRASH_AT"] = crash_at
    proc = subprocess.Popen([sys.executable, "-m", "tests.driver_proc", str(out_dir), *flags],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("mode", ["direct", "wal"])
def test_micro_batches_on_the_cluster_survive_a_driver_sigkill_exactly_once(
        kafka, cluster, tmp_path, mode):
    topic = kafka.create_topic(partitions=2)
    group = f"g-{topic}"
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 2) for i in range(1200)))
    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--consumer_group={group}",
             "--starting_offsets=earliest", f"--zdl_mode={mode}",
             *cluster.runner_args(parallelism=2, checkpointing_interval_ms=None)]
    flags.append("--max_records_per_partition=300")  # 2 batches or more
    if mode == "wal":
        flags += [f"--wal_dir={tmp_path / 'wal'}", "--wal_segment_records=250",
                  "--wal_segment_age_s=0.5",
                  '--consumer_config={"session.timeout.ms": 4000, "heartbeat.interval.ms": 500}']

    crashed = _run_driver(tmp_path / "out", flags, crash_at="after_plan:2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-4000:]
    coord = CheckpointCoordinator(str(tmp_path / "ckpt"))
    pending = [p.batch_id for p in coord.pending()]
    assert len(pending) == 1
    before = coord.read_plan(pending[0]).SerializeToString()

    restarted = _run_driver(tmp_path / "out", flags)
    assert restarted.returncode == 0, restarted.stderr[-4000:]
    summary = json.loads(restarted.stdout.strip().splitlines()[-1])
    assert summary["replayed"] == 1 and summary["batch_ids"][0] == pending[0]
    assert coord.read_plan(pending[0]).SerializeToString() == before
    rows = [row for batch in read_batches(tmp_path / "out").values() for row in batch]
    assert len(rows) == len(set(rows)), "a record appears twice in the output"
    assert sorted(rows) == sorted((topic, p, o) for p, o in _all_offsets(kafka, topic))
    assert coord.pending() == []
    if mode == "direct":
        assert kafka.committed(group, topic) == kafka.end_offsets(topic)


# --- bounded jobs with a shuffle, and a batch job that fails ------------------------------------

def _micro_batch_flags(kafka, cluster, tmp_path, topic: str) -> list[str]:
    return [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
            f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--consumer_group=g-{topic}",
            "--starting_offsets=earliest",
            *cluster.runner_args(parallelism=2, checkpointing_interval_ms=None)]


def test_a_micro_batch_writing_with_write_to_text_finishes_on_the_cluster(
        kafka, cluster, tmp_path):
    """WriteToText has a GroupByKey inside (a blocking shuffle on Flink's batch runtime)."""
    import apache_beam as beam

    import beam_zdl
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 2) for i in range(500)))
    out = tmp_path / "out"

    def build(records, batch):
        (records | beam.Map(lambda r: f"{r.partition},{r.offset},{r.value.decode()}")
         | beam.io.WriteToText(str(out / f"batch-{batch.batch_id:06d}"), shard_name_template=""))

    started = time.monotonic()
    summary = beam_zdl.run_micro_batches(
        build, beam_zdl.ZdlOptions(_micro_batch_flags(kafka, cluster, tmp_path, topic)))
    took = time.monotonic() - started
    lines = [line for path in out.glob("batch-*") for line in path.read_text().splitlines()]
    assert summary.batches == 1 and summary.records == 500
    assert sorted(lines) == sorted(f"{i % 2},{i // 2},v{i}" for i in range(500))
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)
    print(f"\n[flink cluster] WriteToText micro-batch of 500 records in {took:.1f} s")


def test_readmes_word_count_runs_on_the_cluster(kafka, cluster, tmp_path):
    """examples/wordcount_exactly_once.py, run as a script as README says (its functions
    then travel by value to the workers): Count.PerElement, a shuffle, per batch."""
    topic = kafka.create_topic(partitions=2)
    words = ["zdl", "beam", "flink", "kafka", "beam", "zdl", "zdl"]
    kafka.produce(topic, ((None, " ".join(words).encode(), i % 2) for i in range(40)))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "wordcount_exactly_once.py"),
         *_micro_batch_flags(kafka, cluster, tmp_path, topic), f"--output_dir={tmp_path / 'wc'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "batches=1 replayed=0 records=40" in proc.stdout
    [result] = [json.loads(p.read_text()) for p in (tmp_path / "wc").glob("batch-*.json")]
    assert result["counts"] == {"beam": 80, "flink": 40, "kafka": 40, "zdl": 120}


def test_a_failing_batch_job_fails_the_batch_within_the_restart_bound(kafka, cluster, tmp_path):
    """LocalFlink restarts a failed job a bounded number of times (restart-strategy), so
    the driver gets the job's failure instead of waiting forever: a BatchFailedError naming
    the batch and quoting the worker's exception; the batch stays pending."""
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, b"poison", i % 2) for i in range(10)))
    flags = _micro_batch_flags(kafka, cluster, tmp_path, topic)
    started = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "tests.flink_failing_batch", *flags],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    took = time.monotonic() - started
    assert proc.returncode != 0
    assert proc.stdout.strip(), proc.stderr[-4000:]
    error = json.loads(proc.stdout.strip().splitlines()[-1])
    # One of beam_zdl's errors, naming the batch and quoting the worker's exception.
    assert error["error"] == "BatchFailedError" and error["batch_id"] == 0, error
    assert error["message"].startswith("batch 0 failed on FlinkRunner (job "), error
    assert "ValueError: poison record at offset " in error["message"], error
    assert "stays pending" in error["message"]
    bound = cluster.restart_attempts * 60 + 120
    assert took < bound, f"the failing batch took {took:.0f} s to fail (bound {bound} s)"
    coord = CheckpointCoordinator(str(tmp_path / "ckpt"))
    assert [p.batch_id for p in coord.pending()] == [0]
    assert all(o <= 0 for o in kafka.committed(f"g-{topic}", topic).values())
    print(f"\n[flink cluster] {error['message'][:300]}")
    print(f"[flink cluster] a failing batch job failed the driver after {took:.0f} s "
          f"({cluster.restart_attempts} restarts)")


# --- one checkpoint across runners -------------------------------------------------------------

def _run_phase(out: Path, flags: list[str], crash_at: str | None) -> dict:
    """One driver run of the cross-runner test: SIGKILLed at ``crash_at``, or (without it)
    run to the end; the run's summary (empty when killed)."""
    proc = _run_driver(out, flags, crash_at=crash_at)
    if crash_at:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
        return {}
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _finished_jobs(cluster) -> set[str]:
    return {j["id"] for j in cluster.jobs() if j["status"] == "FINISHED"}


@pytest.mark.parametrize("mode", ["direct", "wal"])
def test_one_checkpoint_continues_across_runners_exactly_once(
        kafka, cluster, hdfs, tmp_path, mode):
    """The local runner is SIGKILLed mid-batch, Flink (the session cluster) continues the
    same --checkpoint_dir and is SIGKILLed mid-batch too, the local runner finishes. The
    checkpoint holds only plans and offsets, no runner state: each runner replays the
    other's pending batch with the same input, and the idempotent sink (a file per batch)
    holds every record once. WAL mode keeps its WAL on HDFS, where the Flink job's SDK
    workers read the segments the local runner's receiver wrote."""
    topic = kafka.create_topic(partitions=4)
    group = f"g-{topic}"
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    coord = CheckpointCoordinator(str(ckpt))
    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--checkpoint_dir={ckpt}", f"--consumer_group={group}",
             "--starting_offsets=earliest", f"--zdl_mode={mode}",
             "--max_records_per_partition=300"]
    if mode == "wal":
        flags += [f"--wal_dir={hdfs.url}/{topic}/wal", "--wal_segment_records=250",
                  "--wal_segment_age_s=0.5",
                  '--consumer_config={"session.timeout.ms": 4000, "heartbeat.interval.ms": 500}']
    flink = [*flags, *cluster.runner_args(parallelism=2, checkpointing_interval_ms=None)]
    produced = 0

    def produce(n: int) -> None:
        nonlocal produced
        kafka.produce(topic, ((f"k{i}".encode(), f"v{i}".encode(), i % 4)
                              for i in range(produced, produced + n)))
        produced += n

    plans: dict[int, bytes] = {}

    def pending_after(phase: str) -> int:
        [batch_id] = [p.batch_id for p in coord.pending()]
        plans[batch_id] = coord.read_plan(batch_id).SerializeToString()
        print(f"[cross-runner {mode}] {phase} SIGKILLed with batch {batch_id} pending")
        return batch_id

    # 1. The local runner (FnApiRunner): killed after its 2nd batch ran, not completed.
    produce(3000)
    _run_phase(out, flags, "after_run:2")
    on_local = pending_after("local runner")
    # 2. Flink replays that batch (the 1st after_run), runs the next, and is killed after it.
    produce(1200)
    finished = _finished_jobs(cluster)
    _run_phase(out, flink, "after_run:2")
    on_flink = pending_after("Flink")
    assert len(_finished_jobs(cluster) - finished) == 2, "the batches did not run on Flink"
    assert on_flink > on_local
    # 3. The local runner replays Flink's pending batch and plans the rest.
    produce(1200)
    summary = _run_phase(out, flags, None)
    assert summary["replayed"] == 1 and summary["batch_ids"][0] == on_flink
    assert len(summary["batch_ids"]) > 1, "nothing was planned after the replay"

    # Every runner replayed the same plan the other had written.
    assert {b: coord.read_plan(b).SerializeToString() for b in plans} == plans
    assert coord.pending() == []
    if mode == "wal":
        _assert_exactly_once(kafka, topic, out, ckpt, f"{hdfs.url}/{topic}/wal")
    else:
        rows = [row for batch in read_batches(out).values() for row in batch]
        assert len(rows) == len(set(rows)), "a record appears twice in the output"
        assert sorted(rows) == sorted((topic, p, o) for p, o in _all_offsets(kafka, topic))
    assert sum(kafka.end_offsets(topic).values()) == produced
    assert kafka.committed(group, topic) == kafka.end_offsets(topic)
    history = read_history(str(ckpt))
    assert sorted(p.batch_id for p in history.progress if p.replay) == [on_local, on_flink]
