"""Per-batch fixed cost of ``run_micro_batches`` on a Flink session cluster.

``python -m bench.flink_batches [--batches 12]``: a LocalKafka broker and a LocalFlink
cluster (2 TaskManagers, 2 slots each, parallelism 2). The same tiny batches (5 records
per partition, 2 partitions) run twice on the one cluster:

* ``job_server_per_batch``: what Python's FlinkRunner does without ``--job_endpoint``
  (a job server JVM started for every batch; beam_zdl before it started one per run);
* ``one_job_server``: ``run_micro_batches`` as it is (one job server for the run).

Both stage no jars (``LocalFlink.runner_args``). The committed JSON also holds the runs
from before that change ("jars staged"), measured with this script at that commit.

Each batch's cycle is the time between the starts of two consecutive batch pipelines
(plan, submit, run, complete, commit); the first batch of a run is left out (it pays the
run's one-time start-up). Writes ``bench/flink_batches.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import apache_beam as beam

HERE = Path(__file__).resolve().parent


def _summary(cycles: list[float]) -> dict[str, Any]:
    later = sorted(cycles[1:])
    q = statistics.quantiles(later, n=4) if len(later) >= 2 else [later[0]] * 3
    return {"batches": len(cycles), "first_s": round(cycles[0], 2),
            "median_s": round(statistics.median(later), 2), "p25_s": round(q[0], 2),
            "p75_s": round(q[2], 2), "min_s": round(later[0], 2), "max_s": round(later[-1], 2),
            "cycles_s": [round(c, 2) for c in cycles]}


def _run(kafka: Any, flink: Any, topic: str, workdir: Path, name: str, batches: int,
         per_batch_job_server: bool) -> dict[str, Any]:
    import beam_zdl
    from beam_zdl.microbatch.direct_mode import DirectDriver
    from beam_zdl.options import ZdlConfig
    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--checkpoint_dir={workdir / name}", f"--consumer_group=g-{name}",
             "--starting_offsets=earliest", "--max_records_per_partition=5",
             f"--max_batches={batches}",
             *flink.runner_args(parallelism=2, checkpointing_interval_ms=None)]
    starts: list[float] = []

    def build(records: Any, batch: Any) -> None:
        starts.append(time.monotonic())
        records | beam.Map(lambda r: r.offset)  # noqa: B018 (a sink-less batch)

    options = beam_zdl.ZdlOptions(flags)
    began = time.monotonic()
    if per_batch_job_server:  # the loop without run_micro_batches' one job server
        summary = DirectDriver(build, options, ZdlConfig.from_options(
            options, need_checkpoint=True)).run()
    else:
        summary = beam_zdl.run_micro_batches(build, options)
    ended = time.monotonic()
    cycles = [b - a for a, b in zip(starts, starts[1:] + [ended])]
    return {**_summary(cycles), "records": summary.records, "wall_s": round(ended - began, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--modes", default="job_server_per_batch,one_job_server")
    parser.add_argument("--out", default=str(HERE / "flink_batches.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        force=True)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    from beam_zdl.testing import LocalFlink, LocalKafka
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-flink-") as tmp, LocalKafka() as kafka, \
            LocalFlink(taskmanagers=2, slots=2, workdir=Path(tmp) / "flink") as flink:
        topic = kafka.create_topic(partitions=2)
        kafka.produce(topic, ((None, b"x" * 100, i % 2) for i in range(10 * args.batches)))
        for mode in args.modes.split(","):
            results[mode] = _run(kafka, flink, topic, Path(tmp), mode, args.batches,
                                 per_batch_job_server=mode == "job_server_per_batch")
            print(mode, json.dumps({k: v for k, v in results[mode].items()
                                    if k != "cycles_s"}), flush=True)
    Path(args.out).write_text(json.dumps(
        {"what": "per-batch cycle of run_micro_batches on LocalFlink (2 TaskManagers, "
                 "parallelism 2), 10 records per batch, first batch left out",
         "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
