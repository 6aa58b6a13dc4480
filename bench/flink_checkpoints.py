"""Flink checkpoint size over a long streaming run (beam_zdl's read on a LocalFlink cluster).

    python -m bench.flink_checkpoints [--minutes 10] [--busy 2 --idle 2 --rate 200]

Starts a broker and a LocalFlink session cluster, produces ``--rate``
records/s to each of ``--busy`` partitions and nothing to the ``--idle``
ones, runs ``tests/streaming_proc.py ids`` (parallelism 2, checkpoints every
``--checkpoint_ms``) and samples the size of the latest completed checkpoint
every 30 s. Each SDF self-checkpoint leaves residual state in Flink's Beam
runner (apache/beam #27648), so the size grows; the growth per hour is a
least-squares slope over the samples after the first minute. Prints one JSON
line per sample and a summary line; appends the summary to
``.cache/flink_checkpoint_growth.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from beam_zdl.testing import LocalFlink, LocalKafka

ROOT = Path(__file__).resolve().parents[1]


def _produce(kafka: LocalKafka, topic: str, partitions: list[int], rate: float,
             stop: threading.Event) -> None:
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 20})
    start, i = time.monotonic(), 0
    while not stop.is_set():
        for p in partitions:
            producer.produce(topic, value=b"x" * 100, partition=p)
        producer.poll(0)
        i += 1
        ahead = start + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    producer.flush(30)


def _slope_per_hour(points: list[tuple[float, int]]) -> float:
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_s = sum(s for _, s in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (s - mean_s) for t, s in points)
    return cov / var * 3600 if var else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--busy", type=int, default=2, help="partitions produced to")
    parser.add_argument("--idle", type=int, default=2, help="partitions left idle")
    parser.add_argument("--rate", type=float, default=200.0, help="records/s per busy partition")
    parser.add_argument("--checkpoint_ms", type=int, default=10_000)
    parser.add_argument("--label", default="", help="a note for the summary line")
    parser.add_argument("extra", nargs="*", help="more pipeline flags (after --)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="flink-ckpt-bench-"))
    stop = threading.Event()
    with LocalKafka() as kafka, LocalFlink(workdir=workdir / "flink") as flink:
        topic = kafka.create_topic(partitions=args.busy + args.idle)
        out = workdir / "out"
        out.mkdir()
        log = open(workdir / "job.log", "wb")
        job = subprocess.Popen(
            [sys.executable, "-m", "tests.streaming_proc", "ids", str(out),
             f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--consumer_group=g-{topic}", "--starting_offsets=earliest",
             *flink.runner_args(parallelism=2, checkpointing_interval_ms=args.checkpoint_ms),
             *args.extra],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        producer = threading.Thread(target=_produce, daemon=True, args=(
            kafka, topic, list(range(args.busy)), args.rate, stop))
        try:
            job_id = flink.wait_for_job(timeout_s=300)
            producer.start()
            started = time.monotonic()
            points: list[tuple[float, int]] = []
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(30)
                latest = flink.checkpoints(job_id)["latest"]["completed"]
                if not latest:
                    continue
                t = time.monotonic() - started
                points.append((t, latest["state_size"]))
                print(json.dumps({"t_s": round(t), "checkpoint": latest["id"],
                                  "state_size": latest["state_size"]}), flush=True)
            stats = flink.checkpoints(job_id)["counts"]
        finally:
            stop.set()
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    later = [p for p in points if p[0] >= 60] or points
    summary = {"label": args.label, "minutes": args.minutes, "busy": args.busy,
               "idle": args.idle, "rate_per_busy_partition": args.rate,
               "checkpoint_ms": args.checkpoint_ms, "completed_checkpoints": stats.get("completed"),
               "first_bytes": later[0][1], "last_bytes": later[-1][1],
               "growth_bytes_per_hour": round(_slope_per_hour(later))}
    print(json.dumps(summary))
    (ROOT / ".cache").mkdir(exist_ok=True)
    with open(ROOT / ".cache" / "flink_checkpoint_growth.txt", "a") as f:
        f.write(f"{time.strftime('%F %T')} {json.dumps(summary)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
