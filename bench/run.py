"""`make bench`: run every peer side by side on one broker and one topic, in one run.

Writes a table to stdout, ``bench/results.json`` and ``bench/results.png``.
Sizes are adjustable: ``python -m bench.run --records 1000000 --partitions 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from beam_zdl.testing import LocalKafka

HERE = Path(__file__).resolve().parent
# Throughput peers, in table order; "bare_consumer" is the baseline of the ratios.
THROUGHPUT = ["bare_consumer", "bare_consumer_tuned", "direct_1_worker", "direct_2_workers", "direct_2_workers_batches", "direct_2_workers_lean", "wal_local", "wal_gcs",
              "quixstreams_exactly_once", "quixstreams_at_least_once",
              "spark_structured_streaming", "pyflink", "java_kafkaio_xlang", "receiver_rss", "flink_local_streaming",
              "flink_cluster_streaming"]
OTHER = ["batch_overhead", "batch_fixed_cost", "batch_fixed_cost_metrics", "recovery",
         "flink_batches"]
# Issue 25's goals for a micro-batch's fixed cost on a Flink session cluster.
FLINK_BATCH_TARGET_S, FLINK_BATCH_FLOOR_S = 2.0, 5.0
# Kafka sink peers; "sink_bare_producer" is the baseline of their ratios.
SINK = ["sink_bare_producer", "sink_at_least_once", "sink_exactly_once"]
DEFAULT_PEERS = THROUGHPUT + OTHER + SINK
LABELS = {
    "bare_consumer": "(a) bare confluent-kafka loop",
    "bare_consumer_tuned": "(a) bare loop, reader's settings",
    "direct_1_worker": "(b) direct, 1 worker",
    "direct_2_workers": "(b) direct, 2 workers",
    "direct_2_workers_lean": "(b) direct, 2 workers, lean",
    "direct_2_workers_batches": "(b) direct, 2 workers, record batches",
    "wal_local": "(c) WAL, local disk",
    "wal_gcs": "(c) WAL, GCS emulator",
    "java_kafkaio_xlang": "(d) Java KafkaIO (x-lang)",
    "quixstreams_exactly_once": "(i) quixstreams, exactly-once",
    "quixstreams_at_least_once": "(i) quixstreams, at-least-once",
    "spark_structured_streaming": "(i) Spark Structured Streaming",
    "pyflink": "(i) pyflink, bounded Kafka table",
    "receiver_rss": "(f) WAL receiver alone",
    "sink_bare_producer": "(g) bare confluent-kafka produce loop",
    "sink_at_least_once": "(g) Kafka→Kafka, WriteToKafka at-least-once",
    "sink_exactly_once": "(g) Kafka→Kafka, WriteToKafka exactly-once",
    "flink_local_streaming": "(h) streaming, Flink [local]",
    "flink_cluster_streaming": "(h) streaming, Flink cluster",
    "flink_batches": "(j) micro-batches, Flink cluster",
}
PEER_TIMEOUT_S = 600


def run_peer(name: str, kafka: LocalKafka, topic: str, workdir: str, args: argparse.Namespace,
             extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "bench.peers", name, f"--bootstrap_servers={kafka.bootstrap_servers}",
           f"--topics={topic}", f"--workdir={workdir}", f"--value_bytes={args.value_bytes}",
           f"--records={args.records}", f"--partitions={args.partitions}", *extra]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent,
                              timeout=PEER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {PEER_TIMEOUT_S} s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.monotonic() - started
    return result


def chart(results: dict, base: float | None, path: Path) -> None:
    """Two panels, one bar per reader: records/s (with the ratio to the bare loop) and the
    peak RSS of its process tree (driver plus worker processes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n in THROUGHPUT if "records_per_s" in results.get(n, {})]
    if not names:
        return
    labels = [LABELS.get(n, n) for n in names]
    colors = ["#7f7f7f" if n == "bare_consumer" else "#4472c4" for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.55 * len(names) + 1.8),
                                      sharey=True)
    values = [results[n]["records_per_s"] for n in names]
    left.barh(labels, values, color=colors)
    for i, v in enumerate(values):
        ratio = f"  ({v / base:.2f}x)" if base else ""
        left.text(v, i, f" {v:,.0f}{ratio}", va="center", fontsize=8)
    left.set_xlabel("records/s (higher is better)")
    left.set_xlim(0, max(values) * 1.45)
    rss = [results[n].get("peak_tree_rss_mb") or results[n].get("peak_rss_mb", 0)
           for n in names]
    right.barh(labels, rss, color=colors)
    for i, v in enumerate(rss):
        right.text(v, i, f" {v:,.0f} MB", va="center", fontsize=8)
    right.set_xlabel("peak RSS of the process tree, MB (lower is better)")
    right.set_xlim(0, max(rss) * 1.3)
    left.invert_yaxis()
    fig.suptitle("beam_zdl and peers: 1 run, same broker and topic", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--value_bytes", type=int, default=100)
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS))
    parser.add_argument("--out", default=str(HERE), help="folder of results.json / results.png")
    args = parser.parse_args(argv)
    peers = args.peers.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    run_started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="beam-zdl-bench-") as workdir, LocalKafka() as kafka:
        gcs = None
        extra: list[str] = []
        if "wal_gcs" in peers:
            from beam_zdl.testing.gcs import LocalGcs
            gcs = LocalGcs().start()  # sets STORAGE_EMULATOR_HOST for the peers
            extra.append(f"--gcs_bucket={gcs.create_bucket()}")
        try:
            topic = kafka.create_topic(partitions=args.partitions)
            small = kafka.create_topic(partitions=args.partitions)
            value = b"x" * args.value_bytes
            t0 = time.monotonic()
            with tqdm(total=args.records, desc="produce", unit="rec", file=sys.stderr) as bar:
                def records():
                    for i in range(args.records):
                        if i % 10_000 == 0:
                            bar.update(min(10_000, args.records - i))
                        yield None, value, i % args.partitions
                kafka.produce(topic, records())
            produce_s = time.monotonic() - t0
            kafka.produce(small, ((None, value, i % args.partitions) for i in range(1000)))
            with tqdm(peers, desc="peers", file=sys.stderr) as bar:
                for name in bar:
                    bar.set_postfix_str(name)
                    own = [f"--small_topic={small}"] if name == "flink_batches" else []
                    results[name] = run_peer(name, kafka, small if name in ("batch_overhead",
                                                                          "batch_fixed_cost",
                                                                          "batch_fixed_cost_metrics")
                                             else topic, workdir, args, [*extra, *own])
        finally:
            if gcs is not None:
                gcs.stop()
    for r in results.values():
        if r.get("seconds") and "error" not in r:
            r["records_per_s"] = r["records"] / r["seconds"]
            r["mb_per_s"] = r["bytes"] / r["seconds"] / 1e6
    base = results.get("bare_consumer", {}).get("records_per_s")
    meta = {"records": args.records, "partitions": args.partitions,
            "value_bytes": args.value_bytes, "cores": os.cpu_count(),
            "python": platform.python_version(), "produce_s": round(produce_s, 1),
            "bench_s": round(time.monotonic() - run_started, 1)}
    lines = report(results, base, meta)
    print("\n".join(lines))
    (out / "results.json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    chart(results, base, out / "results.png")
    print(f"\nwrote {out / 'results.json'} and {out / 'results.png'}")
    return 0


def report(results: dict, base: float | None, meta: dict) -> list[str]:
    """The table and notes printed on stdout."""
    lines = [f"\n{meta['records']:,} records of {meta['value_bytes']} B in {meta['partitions']} "
             f"partitions (produced in {meta['produce_s']} s), {meta['cores']} cores, "
             f"Python {meta['python']}\n",
             f"{'peer':<32}{'records/s':>11}{'MB/s':>7}{'x (a)':>7}{'RSS MB':>8}"
             f"{'worker RSS MB':>15}{'tree RSS MB':>13}"]
    for name in THROUGHPUT:
        r = results.get(name)
        if r is None:
            continue
        label = LABELS.get(name, name)
        if "records_per_s" not in r:
            lines.append(f"{label:<32}  could not run: {r.get('error')}")
            continue
        ratio = r["records_per_s"] / base if base else float("nan")
        workers = f"{r['peak_children_rss_mb']:.0f}" if r.get("peak_children_rss_mb") else "-"
        lines.append(f"{label:<32}{r['records_per_s']:>11,.0f}{r['mb_per_s']:>7.1f}"
                     f"{ratio:>7.2f}{r.get('peak_rss_mb', 0):>8.0f}{workers:>15}"
                     f"{r.get('peak_tree_rss_mb', 0):>13.0f}")
    d1, d2 = results.get("direct_1_worker", {}), results.get("direct_2_workers", {})
    wal = results.get("wal_local", {})
    if "records_per_s" in wal and "records_per_s" in d2:
        lines.append(f"\nWAL local / direct 2 workers: "
                     f"{wal['records_per_s'] / d2['records_per_s']:.2f}x")
    ov = results.get("batch_overhead", {})
    if "1_worker_s" in ov:
        lines.append(f"per-batch fixed cost (one batch of {ov['1_worker_records']} records): "
                     f"{ov['1_worker_s']:.2f} s with 1 worker (in process), "
                     f"{ov['2_worker_s']:.2f} s with 2 workers (worker processes start per batch)")
    elif ov:
        lines.append(f"per-batch fixed cost: could not run: {ov.get('error')}")
    fc = results.get("batch_fixed_cost", {})
    for workers in (1, 2):
        f = fc.get(f"{workers}_worker")
        if f:
            lines.append(
                f"fixed cost per batch, {workers} worker{'s' if workers > 1 else ''} "
                f"({f['batches']} tiny batches against 1): {f['fixed_s_per_batch']:.3f} s, "
                f"{f['fixed_cpu_s_per_batch']:.3f} CPU s; first batch {f['first_batch_s']:.2f} s "
                f"({f['first_batch_after_workers_ready_s']:.2f} s once the workers were ready "
                f"after {f['workers_ready_s']:.2f} s), later batches {f['median_later_batch_s']:.2f} s")
    if fc and "error" in fc:
        lines.append(f"fixed cost per batch: could not run: {fc['error']}")
    fm = results.get("batch_fixed_cost_metrics", {})
    for workers in (1, 2):
        f, m = fc.get(f"{workers}_worker"), fm.get(f"{workers}_worker")
        if f and m:
            lines.append(
                f"--metrics_port, {workers} worker{'s' if workers > 1 else ''}: fixed cost per "
                f"batch {m['fixed_s_per_batch']:.3f} s, {m['fixed_cpu_s_per_batch']:.3f} CPU s "
                f"(without: {f['fixed_s_per_batch']:.3f} s, {f['fixed_cpu_s_per_batch']:.3f} "
                "CPU s)")
    if fm and "error" in fm:
        lines.append(f"fixed cost per batch with --metrics_port: could not run: {fm['error']}")
    rec = results.get("recovery", {})
    if "restart_to_first_batch_s" in rec:
        lines.append(
            f"(e) recovery (direct, 1 worker, batches of {rec['batch_records']:,} records, "
            f"SIGKILL after batch 2 ran, before it completed): restart to driver up "
            f"{rec['restart_startup_s']:.2f} s, to first completed batch (the replay) "
            f"{rec['restart_to_first_batch_s']:.2f} s, to catch-up "
            f"{rec['restart_to_catch_up_s']:.2f} s ({rec['records_after_restart']:,} records, "
            f"{rec['batches_after_restart']} batches, {rec['replayed']} replayed)")
    elif rec:
        lines.append(f"(e) recovery: could not run: {rec.get('error')}")
    lines.extend(flink_batches_report(results, meta))
    for name in ("quixstreams_exactly_once", "quixstreams_at_least_once", "pyflink",
                 "spark_structured_streaming"):
        q = results.get(name, {})
        if "records" not in q:
            continue
        session = "TableEnvironment" if name == "pyflink" else "SparkSession"
        after_start = (f"; {q['records'] / q['seconds_after_session']:,.0f} records/s after "
                       f"the {q['session_start_s']:.1f} s {session} start"
                       if "seconds_after_session" in q else "")
        lines.append(f"{LABELS[name]} ({q.get('version')}): read {q['records']:,} records "
                     f"(expected {meta['records']:,}){after_start}; durable progress "
                     f"{'yes' if q.get('durable_progress') else 'NO'} "
                     f"({q.get('durable_check')})"
                     + (f"; committed {q['committed_offsets']}" if "committed_offsets" in q
                        else ""))
    lines.extend(sink_report(results))
    for name, setup in (("flink_local_streaming", "Flink [local], parallelism 1, LOOPBACK"),
                        ("flink_cluster_streaming", "Flink session cluster, 2 TaskManagers, "
                                                    "parallelism 2, EXTERNAL worker pool")):
        fl = results.get(name, {})
        if "records_per_s_after_first_read" in fl:
            lines.append(f"(h) streaming read on {setup}: {fl['records_per_s']:,.0f} records/s "
                         f"from job submission (first output after {fl['first_read_s']:.1f} s), "
                         f"{fl['records_per_s_after_first_read']:,.0f} records/s from the "
                         f"first output (a bundle's end: an upper bound)")
    rx = results.get("receiver_rss", {})
    if "peak_rss_mb" in rx and "records" in rx:
        lines.append(f"(f) peak RSS with the {meta['records']:,}-record backlog: receiver "
                     f"{rx['peak_rss_mb']:.0f} MB (after imports {rx['rss_after_imports_mb']:.0f} "
                     f"MB); driver, 1 worker in process {d1.get('peak_rss_mb', 0):.0f} MB; "
                     f"driver with 2 workers {d2.get('peak_rss_mb', 0):.0f} MB + "
                     f"{d2.get('peak_children_rss_mb', 0):.0f} MB per worker process")
    return lines


def flink_batches_report(results: dict, meta: dict) -> list[str]:
    """(j) micro-batches on a Flink session cluster: the fixed cost per batch against the
    goals, and one batch of the run's records against direct mode on the local runner."""
    fb = results.get("flink_batches")
    if not fb:
        return []
    if "empty" not in fb:
        return [f"(j) micro-batches on Flink: could not run: {fb.get('error')}"]
    lines = []
    for kind, what in (("empty", "empty batches (a pipeline reading nothing)"),
                       ("tiny", f"tiny batches ({fb['tiny']['records_per_batch']} records)")):
        f = fb[kind]
        verdict = ", ".join(f"{goal} {limit:.0f} s {'met' if f['median_s'] <= limit else 'MISSED'}"
                            for goal, limit in (("target", FLINK_BATCH_TARGET_S),
                                                ("floor", FLINK_BATCH_FLOOR_S)))
        lines.append(f"(j) Flink cluster (2 TaskManagers, parallelism 2), fixed cost per batch, "
                     f"{what}: median {f['median_s']:.2f} s (p25-p75 {f['p25_s']:.2f}-"
                     f"{f['p75_s']:.2f}, min-max {f['min_s']:.2f}-{f['max_s']:.2f}, "
                     f"{f['n']} batches; the run's first {f['first_s']:.1f} s): {verdict}")
    ob = fb["one_batch"]
    if ob.get("records") and ob.get("batch_s"):
        rate, whole = ob["records"] / ob["batch_s"], ob["records"] / ob["seconds"]
        ratios = "; ".join(
            f"{rate / r['records_per_s']:.2f}x {LABELS[name]} on the local runner"
            for name in ("direct_2_workers", "direct_1_worker")
            if "records_per_s" in (r := results.get(name, {})))
        lines.append(f"(j) {ob['records']:,} records ({meta['partitions']} partitions) in "
                     f"{ob['batches']} batch on the Flink cluster: {ob['batch_s']:.1f} s, "
                     f"{rate:,.0f} records/s ({whole:,.0f} records/s over the whole call, "
                     f"{ob['seconds']:.1f} s with the job server's start)"
                     + (f": {ratios}" if ratios else ""))
    return lines


def sink_report(results: dict) -> list[str]:
    """(g) the Kafka sink: WriteToKafka end to end (read + write, direct, 1 worker) against
    a bare produce loop (write only)."""
    base = results.get("sink_bare_producer", {}).get("records_per_s")
    lines = []
    for name in SINK:
        r = results.get(name)
        if r is None:
            continue
        if "records_per_s" not in r:
            lines.append(f"{LABELS[name]:<44}  could not run: {r.get('error')}")
            continue
        ratio = r["records_per_s"] / base if base else float("nan")
        lines.append(f"{LABELS[name]:<44}{r['records_per_s']:>11,.0f} records/s"
                     f"{ratio:>7.2f}x bare producer")
    eo, alo = results.get("sink_exactly_once", {}), results.get("sink_at_least_once", {})
    if "records_per_s" in eo and "records_per_s" in alo:
        lines.append(f"exactly-once / at-least-once: "
                     f"{eo['records_per_s'] / alo['records_per_s']:.2f}x "
                     "(the sink rows read the input too)")
    return ["\n" + lines[0]] + lines[1:] if lines else lines


if __name__ == "__main__":
    sys.exit(main())
