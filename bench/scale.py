"""The scale series of `make bench`: partitions x records, planning time, checkpoint size.

    python -m bench.scale [--partitions 4,64,256] [--records 1000000,10000000] [--quick]

On one LocalKafka:

* throughput: per (partitions, records), a fresh topic; the bare confluent-kafka
  loop, direct mode with 1 and 2 workers (2 also with ``BEAM_ZDL_LEAN_IMPORTS=1``)
  and WAL mode (``bench.peers``), each a child process, in ``--rounds``
  interleaved rounds: records/s, us per record, driver and tree RSS, and the
  ratio to the bare loop of the same round (median and spread over rounds).
  Batch sizing is run_micro_batches' default (no ``--max_records_per_*`` cap: an
  ``available_now`` run reads the whole backlog in one batch).
  Record counts above ``--large_records`` (1M) run only ``--large_peers`` (the
  bare loops, direct with 2 workers, and with 2 workers emitting batches): the
  peers the targets need, so the 10M cells cost ~35 min, not ~60. The series
  prints an estimate of its duration at the start (:func:`estimate_s`).
* fixed cost: ``bench.peers batch_fixed_cost`` (10 tiny batches against 1) on a
  small topic of the fewest and of the most partitions, interleaved per round.
* planning: the driver's Step 2 per batch (end offsets of every partition, the
  plan from the last plan's stops, the plan written), timed on DirectDriver
  itself with ``--trigger=continuous`` (end offsets asked every batch), then
  Steps 4-5 (complete, Kafka commit, retention) without the Beam run.
* checkpoint: the same loop for ``--checkpoint_batches`` (1,000) batches of 256
  partitions with the default ``--retain_batches``: files and bytes after; and a
  real run_micro_batches of ~50 small batches with ``--retain_batches=10`` to
  confirm the per-batch file pattern.

Writes a table to stdout, then each target of issue 27 with its median, spread and
met or missed (:data:`TARGETS`), ``bench/scale.json`` and ``bench/scale.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from beam_zdl.testing import LocalKafka

from bench.run import run_peer

HERE = Path(__file__).resolve().parent
PEERS = ["bare_consumer", "bare_consumer_tuned", "direct_1_worker", "direct_2_workers",
         "direct_2_workers_batches", "direct_2_workers_lean", "wal_local"]
# Record counts above LARGE_RECORDS run only LARGE_PEERS (--large_peers): the peers the
# targets need, so the 10M series takes minutes per cell, not an hour.
LARGE_RECORDS = 1_000_000
LARGE_PEERS = ["bare_consumer", "bare_consumer_tuned", "direct_2_workers",
               "direct_2_workers_batches"]
# Reading peers whose ratio to the bare loops is a target (when they ran).
TARGET_PEERS = ["direct_2_workers", "direct_2_workers_batches"]
PLANNING_LIMIT_S = 0.5
# The targets of issue 27, each checked from the rounds of one run.
RATIO_AT_FEWEST = 0.8   # direct, 2 workers, against the bare loop at the fewest partitions
FLAT = 0.85             # that ratio at more partitions, against the one at the fewest
FIXED_COST_GROWTH = 2.0  # fixed cost per batch at the most partitions / at the fewest
TREE_RSS_MB = 300.0     # direct with 2 workers, peak RSS of the process tree
PLANNING_PARTITIONS = 1000
# The baselines of the ratios: (peer, key suffix, label). The bare loop runs with
# librdkafka's fetch defaults, which wait on fetch.queue.backoff.ms with few partitions
# (so it speeds up with more); the tuned loop has the reader's settings and is flat.
BASES = [("bare_consumer", "bare", "bare loop"),
         ("bare_consumer_tuned", "tuned", "tuned bare loop")]


def _spread(values: list[float]) -> dict[str, Any]:
    """Median, min and max of one figure over the rounds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


def _produce(kafka: LocalKafka, topic: str, records: int, partitions: int,
             value_bytes: int) -> float:
    value = b"x" * value_bytes
    started = time.monotonic()
    kafka.produce(topic, ((None, value, i % partitions) for i in range(records)))
    return time.monotonic() - started


def _delete_topic(kafka: LocalKafka, topic: str) -> None:
    admin = kafka.admin()  # must outlive the futures
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result(60)


def throughput(kafka: LocalKafka, workdir: str, partitions: int, records: int,
               value_bytes: int, rounds: int, peers: list[str]) -> dict[str, Any]:
    """Every peer over one fresh topic of ``records`` in ``partitions``, ``rounds`` times,
    interleaved (round 1 runs every peer, then round 2...): load from other work on the
    machine falls on all peers alike, and each ratio is taken within its round."""
    topic = kafka.create_topic(partitions=partitions)
    produce_s = _produce(kafka, topic, records, partitions, value_bytes)
    args = argparse.Namespace(value_bytes=value_bytes, records=records, partitions=partitions)
    out: dict[str, Any] = {"produce_s": round(produce_s, 1), "rounds": []}
    for _ in range(rounds):
        one: dict[str, Any] = {}
        for name in peers:
            r = run_peer(name, kafka, topic, workdir, args, [])
            if r.get("seconds"):
                r["records_per_s"] = r["records"] / r["seconds"]
                r["us_per_record"] = 1e6 * r["seconds"] / r["records"]
            one[name] = r
        out["rounds"].append(one)
    for name in peers:
        done = [r[name] for r in out["rounds"] if "records_per_s" in r[name]]
        if not done:
            out[name] = out["rounds"][-1][name]
            continue
        # The round of the median rate stands for the peer (its RSS too); the spreads
        # are kept beside it.
        median = sorted(done, key=lambda r: r["records_per_s"])[(len(done) - 1) // 2]
        out[name] = {**median, "records_per_s_rounds": _spread([r["records_per_s"] for r in done]),
                     "peak_tree_rss_mb_rounds": _spread([r.get("peak_tree_rss_mb", 0.0)
                                                         for r in done])}
        for base, suffix, _ in BASES:
            ratios = [r[name]["records_per_s"] / r[base]["records_per_s"]
                      for r in out["rounds"]
                      if "records_per_s" in r[name] and "records_per_s" in r.get(base, {})]
            if ratios and name != base:
                out[f"{name}_to_{suffix}"] = _spread(ratios)
    if "direct_2_workers_to_bare" in out:
        out["direct_to_bare"] = out["direct_2_workers_to_bare"]["median"]
    _delete_topic(kafka, topic)
    return out


def fixed_cost(kafka: LocalKafka, workdir: str, partitions: list[int],
               rounds: int) -> dict[str, Any]:
    """``bench.peers batch_fixed_cost`` on a small topic per partition count (250 records
    per partition), the counts interleaved in each round."""
    topics = {}
    for p in partitions:
        topics[p] = kafka.create_topic(partitions=p)
        _produce(kafka, topics[p], 250 * p, p, 100)
    out: dict[str, Any] = {str(p): {"rounds": []} for p in partitions}
    for _ in range(rounds):
        for p in partitions:
            args = argparse.Namespace(value_bytes=100, records=250 * p, partitions=p)
            out[str(p)]["rounds"].append(run_peer("batch_fixed_cost", kafka, topics[p],
                                                  workdir, args, []))
    for p in partitions:
        cell = out[str(p)]
        for workers in ("1_worker", "2_worker"):
            for key in ("fixed_s_per_batch", "fixed_cpu_s_per_batch"):
                values = [r[workers][key] for r in cell["rounds"] if workers in r]
                if values:
                    cell[f"{workers}_{key}"] = _spread(values)
    for topic in topics.values():
        _delete_topic(kafka, topic)
    return out


def _files(root: str) -> tuple[int, int, dict[str, int]]:
    """Files, bytes and files per folder under ``root``."""
    count = size = 0
    per: dict[str, int] = {}
    for folder, _, names in os.walk(root):
        key = os.path.relpath(folder, root)
        per[key] = len(names)
        count += len(names)
        size += sum(os.path.getsize(os.path.join(folder, n)) for n in names)
    return count, size, per


def drive_coordinator(kafka: LocalKafka, topic: str, batches: int,
                      checkpoint_dir: str, retain: int | None = None) -> dict[str, Any]:
    """The direct driver's Steps 0, 2, 4 and 5 for ``batches`` batches, no Beam run.

    One offset per partition per batch (``--max_records_per_partition=1``) and
    ``--trigger=continuous``, so Step 2 asks the end offsets every batch as a
    long-running driver does. Step 2 (plan) and Steps 4-5 are timed apart.
    """
    from beam_zdl import kafka as zkafka
    from beam_zdl.coordinator import CONFIG_FORMAT_VERSION
    from beam_zdl.microbatch.direct_mode import DirectDriver
    from beam_zdl.microbatch.loop import StopFlag
    from beam_zdl.options import ZdlConfig, ZdlOptions
    from beam_zdl.v1 import checkpoint_pb2
    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--checkpoint_dir={checkpoint_dir}", f"--consumer_group=scale-{uuid.uuid4().hex}",
             "--starting_offsets=earliest", "--trigger=continuous",
             "--max_records_per_partition=1"]
    if retain is not None:
        flags.append(f"--retain_batches={retain}")
    options = ZdlOptions(flags)
    config = ZdlConfig.from_options(options, need_checkpoint=True)
    driver = DirectDriver(lambda records, batch: None, options, config)
    driver.consumer = zkafka.new_consumer(config.bootstrap_servers, config.consumer_group)
    plan_s, commit_s = [], []
    # Files and bytes as the loop goes: they must stop growing once
    # ``retain_batches`` is reached.
    after: dict[str, Any] = {}
    try:
        driver.epoch = driver.coordinator.open(checkpoint_pb2.CheckpointConfig(
            format_version=CONFIG_FORMAT_VERSION, topics=list(config.topics),
            mode=driver.mode, consumer_group=config.consumer_group,
            created_ms=int(time.time() * 1000)))
        driver.on_start(StopFlag())
        for _ in range(batches):
            t0 = time.monotonic()
            # Step 2, as BatchLoop.run does it
            plan = driver.next_plan(driver.coordinator.next_batch_id())
            if plan is None:
                break
            plan.options_fingerprint = config.fingerprint()
            plan.created_ms = int(time.time() * 1000)
            plan = driver.coordinator.write_plan(plan)
            t1 = time.monotonic()
            batch = driver.batch_of(plan, replay=False)
            # Steps 4-5
            driver.coordinator.complete(batch.batch_id, batch.planned_records)
            driver.after_complete(batch)
            plan_s.append(t1 - t0)
            commit_s.append(time.monotonic() - t1)
            if len(plan_s) in (10, 100, 1000, 10000):
                files, size, _ = _files(checkpoint_dir)
                after[str(len(plan_s))] = {"files": files, "bytes": size}
    finally:
        driver.consumer.close()
    files, size, per = _files(checkpoint_dir)
    return {"batches": len(plan_s), "retain_batches": config.retain_batches,
            "plan_median_s": statistics.median(plan_s), "plan_max_s": max(plan_s),
            "plan_min_s": min(plan_s),
            "plan_first_s": plan_s[0], "complete_commit_median_s": statistics.median(commit_s),
            "files": files, "bytes": size, "files_per_folder": per, "after_batches": after}


def per_partition_watermarks_s(kafka: LocalKafka, topic: str, partitions: int) -> float:
    """The end offsets asked one partition at a time (beam_zdl before its batched
    lookup): the reference the planning chart shows."""
    from confluent_kafka import TopicPartition

    from beam_zdl import kafka as zkafka
    consumer = zkafka.new_consumer(kafka.bootstrap_servers, "scale-ref")
    try:
        consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30, cached=False)
        started = time.monotonic()
        for p in range(partitions):
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30, cached=False)
        return time.monotonic() - started
    finally:
        consumer.close()


def real_small_batches(kafka: LocalKafka, workdir: str, partitions: int, batches: int,
                       retain: int) -> dict[str, Any]:
    """run_micro_batches (direct, 1 worker) over ``batches`` small batches."""
    import apache_beam as beam

    import beam_zdl
    topic = kafka.create_topic(partitions=partitions)
    _produce(kafka, topic, partitions * batches, partitions, 100)
    checkpoint_dir = f"{workdir}/real-{uuid.uuid4().hex}"
    options = beam_zdl.ZdlOptions([
        f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
        f"--checkpoint_dir={checkpoint_dir}", f"--consumer_group=scale-{uuid.uuid4().hex}",
        "--starting_offsets=earliest", "--trigger=available_now", "--direct_num_workers=1",
        f"--max_records_per_batch={partitions}", f"--retain_batches={retain}"])
    started = time.monotonic()
    summary = beam_zdl.run_micro_batches(
        lambda records, batch: records | beam.Map(lambda r: len(r.value or b"")), options)
    files, size, per = _files(checkpoint_dir)
    _delete_topic(kafka, topic)
    return {"batches": summary.batches, "records": summary.records,
            "seconds": round(time.monotonic() - started, 1), "retain_batches": retain,
            "files": files, "bytes": size, "files_per_folder": per}


LINES = {"bare_consumer": "bare loop", "bare_consumer_tuned": "tuned bare loop",
         "direct_2_workers": "direct, 2 workers", "direct_2_workers_lean": "direct, 2 workers, lean",
         "direct_2_workers_batches": "direct, 2 workers, record batches"}


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for records in result["records"]:
        for name, color in (("bare_consumer", "#7f7f7f"), ("bare_consumer_tuned", "#000000"),
                            ("direct_2_workers", "#4472c4"),
                            ("direct_2_workers_lean", "#70ad47"),
                            ("direct_2_workers_batches", "#ed7d31")):
            points = [(p, cell[name]["us_per_record"]) for p in result["partitions"]
                      if (cell := result["throughput"].get(f"{p}x{records}"))
                      and "us_per_record" in cell.get(name, {})]
            if points:
                left.plot(*zip(*points), marker="o", color=color,
                          linestyle="-" if records == min(result["records"]) else "--",
                          label=f"{LINES[name]}, {records / 1e6:g}M records")
    left.set_xscale("log", base=2)
    left.set_xticks(result["partitions"], [str(p) for p in result["partitions"]])
    left.set_xlabel("partitions")
    left.set_ylabel("us per record (lower is better; flat = scales)")
    left.set_ylim(bottom=0)
    if left.lines:
        left.legend(fontsize=8)
    left.set_title("cost per record vs partitions", fontsize=10)
    plan = result["planning"]
    parts = sorted(int(p) for p in plan)
    right.plot(parts, [plan[str(p)]["plan_median_s"] for p in parts], marker="o",
               color="#4472c4", label="Step 2 (plan), median per batch")
    right.plot(parts, [plan[str(p)]["plan_max_s"] for p in parts], marker=".",
               linestyle=":", color="#4472c4", label="Step 2 (plan), slowest batch")
    right.plot(parts, [plan[str(p)]["per_partition_watermarks_s"] for p in parts], marker="x",
               color="#c00000", linestyle="--",
               label="end offsets one partition at a time (before)")
    right.axhline(PLANNING_LIMIT_S, color="black", linewidth=0.8)
    right.text(parts[0] if parts else 1, PLANNING_LIMIT_S * 1.03, "0.5 s target", fontsize=8)
    if parts:  # --skip planning leaves no points to scale
        right.set_xscale("log", base=2)
        right.set_xticks(parts, [str(p) for p in parts])
    right.set_xlabel("partitions")
    right.set_ylabel("seconds per batch")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    right.set_title("driver planning time per batch", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _workers(key: str) -> str:
    return "1 worker" if key == "1_worker" else "2 workers"


def _target(what: str, spread: dict[str, Any], limit: float, at_most: bool,
            unit: str = "") -> dict[str, Any]:
    met = spread["median"] <= limit if at_most else spread["median"] >= limit
    return {"target": what, "limit": f"{'<=' if at_most else '>='} {limit:g}{unit}",
            **spread, "met": met}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 27's targets, from the medians of this run's rounds (spread: min-max)."""
    out = []
    fewest, most = min(result["partitions"]), max(result["partitions"])
    for name in TARGET_PEERS:
        who = "direct 2 workers" if name == "direct_2_workers" else name
        for _, suffix, label in BASES:
            for records in result["records"]:
                first = result["throughput"].get(f"{fewest}x{records}", {})
                base = first.get(f"{name}_to_{suffix}")
                if not base:
                    continue
                out.append(_target(f"{who} / {label}, {fewest} partitions, "
                                   f"{records / 1e6:g}M records", base, RATIO_AT_FEWEST, False))
                for p in result["partitions"]:
                    r = result["throughput"].get(f"{p}x{records}", {}).get(f"{name}_to_{suffix}")
                    if p == fewest or not r:
                        continue
                    out.append(_target(
                        f"flat: {who} ratio to {label} at {p} / at {fewest} partitions, "
                        f"{records / 1e6:g}M",
                        {"median": r["median"] / base["median"], "min": r["min"] / base["max"],
                         "max": r["max"] / base["min"], "n": r["n"]}, FLAT, False))
    for name in ("direct_2_workers", "direct_2_workers_lean"):
        for records in result["records"]:
            rss = result["throughput"].get(f"{fewest}x{records}", {}).get(name, {}).get(
                "peak_tree_rss_mb_rounds")
            if rss:
                out.append(_target(f"tree peak RSS, {name}, {fewest} partitions, "
                                   f"{records / 1e6:g}M", rss, TREE_RSS_MB, True, " MB"))
    plan = result["planning"].get(str(max(int(p) for p in result["planning"]))) \
        if result["planning"] else None
    if plan:
        out.append(_target(f"planning a batch at {max(int(p) for p in result['planning'])} "
                           "partitions (median; spread over batches)",
                           {"median": plan["plan_median_s"], "min": plan["plan_min_s"],
                            "max": plan["plan_max_s"], "n": plan["batches"]},
                           PLANNING_LIMIT_S, True, " s"))
    fixed = result.get("fixed_cost", {})
    low, high = fixed.get(str(fewest), {}), fixed.get(str(most), {})
    # Wall and CPU seconds (driver and workers): the wall time of 10 tiny batches against 1
    # swings with the machine's load, often by more than the fixed cost itself.
    for workers in ("1_worker", "2_worker"):
        for key, what in (("fixed_s_per_batch", "wall"), ("fixed_cpu_s_per_batch", "CPU")):
            a, b = low.get(f"{workers}_{key}"), high.get(f"{workers}_{key}")
            if not (a and b) or fewest == most:
                continue
            if min(a["min"], b["min"]) <= 0:  # 10 batches ran faster than 1: load noise
                out.append({"target": f"fixed {what} s per batch, {_workers(workers)}: "
                                      f"{most} / {fewest} partitions: not measured (a round "
                                      "with a negative difference, load noise)",
                            "limit": f"<= {FIXED_COST_GROWTH:g}", "median": float("nan"),
                            "min": float("nan"), "max": float("nan"), "n": 0, "met": False})
                continue
            out.append(_target(
                f"fixed {what} s per batch, {_workers(workers)}: {most} / {fewest} "
                f"partitions ({b['median']:.3f} s / {a['median']:.3f} s)",
                {"median": b["median"] / a["median"], "min": b["min"] / a["max"],
                 "max": b["max"] / a["min"], "n": min(a["n"], b["n"])},
                FIXED_COST_GROWTH, True))
    return out


def report(result: dict[str, Any]) -> list[str]:
    lines = [f"\nscale series: {result['cores']} cores, values of {result['value_bytes']} B, "
             f"run in {result['bench_s']} s\n",
             f"{'partitions':>10}{'records':>11}{'peer':>22}{'records/s':>11}{'us/rec':>8}"
             f"{'x bare (spread)':>20}{'x tuned':>8}{'RSS MB':>8}{'tree RSS MB':>12}{'batches':>8}"]
    for records in result["records"]:
        for p in result["partitions"]:
            cell = result["throughput"].get(f"{p}x{records}")
            ran = [*result.get("peers", PEERS), *result.get("large_peers", ())]
            for name in [n for n in dict.fromkeys(ran) if n in cell] if cell else ():
                r = cell[name]
                if "records_per_s" not in r:
                    lines.append(f"{p:>10}{records:>11,}{name:>22}  could not run: "
                                 f"{r.get('error')}")
                    continue
                ratio = r["records_per_s"] / cell["bare_consumer"]["records_per_s"] \
                    if "records_per_s" in cell.get("bare_consumer", {}) else float("nan")
                spread = cell.get(f"{name}_to_bare")
                tuned = cell.get(f"{name}_to_tuned")
                if spread:
                    ratio = spread["median"]
                lines.append(f"{p:>10}{records:>11,}{name:>22}{r['records_per_s']:>11,.0f}"
                             f"{r['us_per_record']:>8.2f}{ratio:>8.2f}"
                             + (f" ({spread['min']:.2f}-{spread['max']:.2f})" if spread
                                else " " * 12)
                             + (f"{tuned['median']:>8.2f}" if tuned else f"{'-':>8}") +
                             f"{r.get('peak_rss_mb', 0):>8.0f}{r.get('peak_tree_rss_mb', 0):>12.0f}"
                             f"{r.get('batches', '-'):>8}")
    lines.append(f"\n{'partitions':>10}{'plan median s':>15}{'plan max s':>12}"
                 f"{'first plan s':>14}{'complete+commit s':>19}{'1-by-1 ends s':>15}")
    for p, r in result["planning"].items():
        lines.append(f"{p:>10}{r['plan_median_s']:>15.3f}{r['plan_max_s']:>12.3f}"
                     f"{r['plan_first_s']:>14.3f}{r['complete_commit_median_s']:>19.3f}"
                     f"{r['per_partition_watermarks_s']:>15.3f}")
    for key, what in (("checkpoint", "coordinator loop"), ("checkpoint_real", "real run")):
        c = result.get(key)
        if c:
            lines.append(f"checkpoint after {c['batches']:,} batches ({what}, "
                         f"retain_batches={c['retain_batches']}): {c['files']} files, "
                         f"{c['bytes']:,} bytes ({c['files_per_folder']})")
            for n, at in c.get("after_batches", {}).items():
                lines.append(f"  after {int(n):>5,} batches: {at['files']:>4} files, "
                             f"{at['bytes']:>9,} bytes")
    for p, cell in result.get("fixed_cost", {}).items():
        for workers in ("1_worker", "2_worker"):
            f = cell.get(f"{workers}_fixed_s_per_batch")
            c = cell.get(f"{workers}_fixed_cpu_s_per_batch")
            if f and c:
                lines.append(f"fixed cost per batch, {p} partitions, {_workers(workers)}: "
                             f"{f['median']:.3f} s ({f['min']:.3f}-{f['max']:.3f}), "
                             f"{c['median']:.3f} CPU s, {f['n']} rounds")
    lines.append(f"\ntargets (issue 27; median of {result.get('rounds', 1)} interleaved "
                 "rounds, spread min-max):")
    for t in result.get("targets", []):
        lines.append(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: "
                     f"{t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f}), target {t['limit']}")
    return lines


# For the estimate printed at the start: rates on 2 cores (about 0.6 of the series of
# bench/scale.json on a quiet machine, for some load), a peer process's start (Python, Beam's imports, the
# runner), producing, and the phases other than throughput.
EST_RECORDS_PER_S = {"bare_consumer": 200_000, "bare_consumer_tuned": 1_000_000,
                     "direct_1_worker": 250_000, "direct_2_workers": 300_000,
                     "direct_2_workers_lean": 300_000, "direct_2_workers_batches": 450_000,
                     "wal_local": 180_000}
EST_DEFAULT_RECORDS_PER_S = 150_000
EST_PEER_START_S = 2.5
EST_PRODUCE_RECORDS_PER_S = 200_000
EST_PLANNING_S, EST_CHECKPOINT_S, EST_REAL_S, EST_FIXED_COST_S = 10.0, 70.0, 50.0, 35.0


def peers_for(records: int, peers: list[str], large_peers: list[str],
              large_records: int = LARGE_RECORDS) -> list[str]:
    """The throughput peers of a cell of ``records`` records."""
    return large_peers if records > large_records else peers


def estimate_s(partitions: list[int], records: list[int], rounds: int, peers: list[str],
               large_peers: list[str], skip: set[str],
               large_records: int = LARGE_RECORDS) -> dict[str, float]:
    """Rough seconds per phase of the series (see the EST_ constants)."""
    out = {"throughput": 0.0}
    if "throughput" not in skip:
        for n in records:
            run = sum(EST_PEER_START_S + n / EST_RECORDS_PER_S.get(name, EST_DEFAULT_RECORDS_PER_S)
                      for name in peers_for(n, peers, large_peers, large_records))
            out["throughput"] += len(partitions) * (n / EST_PRODUCE_RECORDS_PER_S + rounds * run)
    if "planning" not in skip:
        out["planning"] = EST_PLANNING_S * (len(set(partitions)) + 1)
    if "checkpoint" not in skip:
        out["checkpoint"] = EST_CHECKPOINT_S
    if "real" not in skip:
        out["real"] = EST_REAL_S
    if "fixed_cost" not in skip:
        out["fixed_cost"] = EST_FIXED_COST_S * rounds * len({min(partitions), max(partitions)})
    return out


def _known(names: list[str], what: str) -> list[str]:
    """``names`` that bench.peers has; the others are left out, saying so."""
    from bench.peers import PEERS as REGISTERED
    unknown = [n for n in names if n not in REGISTERED]
    if unknown:
        print(f"{what}: {','.join(unknown)} not in bench.peers, left out", file=sys.stderr)
    return [n for n in names if n in REGISTERED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", default="4,64,256", help="comma-separated")
    parser.add_argument("--records", default="1000000,10000000", help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="records 1M only")
    parser.add_argument("--value_bytes", type=int, default=100)
    parser.add_argument("--planning_batches", type=int, default=30,
                        help="batches timed per partition count")
    parser.add_argument("--checkpoint_batches", type=int, default=1000)
    parser.add_argument("--checkpoint_partitions", type=int, default=256)
    parser.add_argument("--real_batches", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of every throughput and fixed-cost figure")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="throughput peers (bare_consumer and direct_2_workers needed "
                             "for the targets)")
    parser.add_argument("--large_peers", default=",".join(LARGE_PEERS),
                        help="throughput peers of record counts above --large_records "
                             "('all': those of --peers)")
    parser.add_argument("--large_records", type=int, default=LARGE_RECORDS)
    parser.add_argument("--planning_partitions", type=int, default=PLANNING_PARTITIONS,
                        help="one more partition count, timed for planning only")
    parser.add_argument("--skip", default="", help="comma-separated: throughput,planning,"
                                                   "checkpoint,real,fixed_cost")
    parser.add_argument("--out", default=str(HERE), help="folder of scale.json / scale.png")
    args = parser.parse_args(argv)
    partitions = _ints(args.partitions)
    records = [1_000_000] if args.quick else _ints(args.records)
    skip = set(args.skip.split(","))
    large = any(n > args.large_records for n in records)
    peers = _known(args.peers.split(","), "--peers")
    large_peers = (peers if args.large_peers == "all" or not large
                   else _known(args.large_peers.split(","), "--large_peers"))
    est = estimate_s(partitions, records, args.rounds, peers, large_peers, skip,
                     args.large_records)
    print(f"scale series: {len(partitions)} partition counts x {len(records)} record counts x "
          f"{args.rounds} rounds; peers {','.join(peers)}"
          + (f" (above {args.large_records:,} records: {','.join(large_peers)})" if large
             else "")
          + f"; estimated {sum(est.values()) / 60:.0f} min ("
          + ", ".join(f"{k} {v / 60:.1f}" for k, v in est.items() if v) + ")", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"partitions": partitions, "records": records,
                              "value_bytes": args.value_bytes, "cores": os.cpu_count(),
                              # A --quick trial is labelled so it is never read as the series.
                              "quick": args.quick,
                              "rounds": args.rounds, "throughput": {}, "planning": {},
                              "peers": peers, "large_peers": large_peers,
                              "estimate_s": round(sum(est.values()))}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="beam-zdl-scale-") as workdir, LocalKafka() as kafka:
        if "planning" not in skip or "checkpoint" not in skip:
            # One offset per partition per batch: enough for every timed batch.
            planned = set(partitions) | {args.planning_partitions}
            for p in sorted(planned | {args.checkpoint_partitions}):
                need = (max(args.planning_batches, args.checkpoint_batches)
                        if p == args.checkpoint_partitions else args.planning_batches) + 1
                topic = kafka.create_topic(partitions=p)
                _produce(kafka, topic, p * need, p, 10)
                if "planning" not in skip and p in planned:
                    r = drive_coordinator(kafka, topic, args.planning_batches,
                                          f"{workdir}/plan-{p}")
                    r["per_partition_watermarks_s"] = per_partition_watermarks_s(kafka, topic, p)
                    result["planning"][str(p)] = r
                    print(f"planning {p} partitions: median {r['plan_median_s']:.3f} s",
                          file=sys.stderr)
                if "checkpoint" not in skip and p == args.checkpoint_partitions:
                    t0 = time.monotonic()
                    r = drive_coordinator(kafka, topic, args.checkpoint_batches,
                                          f"{workdir}/ckpt-{p}")
                    r["seconds"] = round(time.monotonic() - t0, 1)
                    result["checkpoint"] = r
                    print(f"checkpoint: {r['files']} files after {r['batches']} batches",
                          file=sys.stderr)
                _delete_topic(kafka, topic)
        if "real" not in skip:
            result["checkpoint_real"] = real_small_batches(
                kafka, workdir, args.checkpoint_partitions, args.real_batches, retain=10)
        if "throughput" not in skip:
            for n in records:
                for p in partitions:
                    print(f"throughput {p} partitions, {n:,} records", file=sys.stderr)
                    result["throughput"][f"{p}x{n}"] = throughput(
                        kafka, workdir, p, n, args.value_bytes, args.rounds,
                        peers_for(n, peers, large_peers, args.large_records))
        if "fixed_cost" not in skip:
            ends = sorted({min(partitions), max(partitions)})
            print(f"fixed cost per batch at {ends} partitions", file=sys.stderr)
            result["fixed_cost"] = fixed_cost(kafka, workdir, ends, args.rounds)
    result["bench_s"] = round(time.monotonic() - started, 1)
    print(f"scale series took {result['bench_s'] / 60:.1f} min (estimated "
          f"{result['estimate_s'] / 60:.1f})", file=sys.stderr)
    result["targets"] = targets(result)
    print("\n".join(report(result)))
    (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(result, out / "scale.png")
    print(f"\nwrote {out / 'scale.json'} and {out / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
