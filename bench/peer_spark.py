"""Spark Structured Streaming peer of `make bench`, run with the Spark venv's python.

Reads ``--topic`` from earliest with ``trigger(availableNow=True)`` (to the end offsets
at start), ``local[2]``, a ``checkpointLocation`` (Spark's durability), counting records
and bytes in ``foreachBatch``; then checks that the checkpoint's last offsets entry
holds the end offsets (durable progress). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def last_offsets(checkpoint: Path, topic: str) -> dict[int, int]:
    """The topic's offsets in the newest entry of the checkpoint's offsets log."""
    entries = sorted((p for p in (checkpoint / "offsets").iterdir() if p.name.isdigit()),
                     key=lambda p: int(p.name))
    if not entries:
        return {}
    last = entries[-1].read_text().strip().splitlines()[-1]  # v1, metadata, then sources
    return {int(p): o for p, o in json.loads(last).get(topic, {}).items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap_servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--jars", required=True, help="comma-separated extra jars")
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--ends", required=True, help="JSON {partition: end offset}")
    args = parser.parse_args()
    started = time.monotonic()
    from pyspark.sql import SparkSession, functions as F
    spark = (SparkSession.builder.master("local[2]").appName("beam-zdl-bench")
             .config("spark.jars", args.jars).config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    session_s = time.monotonic() - started
    totals = {"records": 0, "bytes": 0}

    def count(batch, _batch_id: int) -> None:
        row = batch.agg(F.count("*").alias("n"),
                        F.coalesce(F.sum(F.length("value")), F.lit(0)).alias("b")).collect()[0]
        totals["records"] += row["n"]
        totals["bytes"] += row["b"]

    stream_started = time.monotonic()
    query = (spark.readStream.format("kafka")
             .option("kafka.bootstrap.servers", args.bootstrap_servers)
             .option("subscribe", args.topic).option("startingOffsets", "earliest")
             .option("failOnDataLoss", "true").load()
             .writeStream.foreachBatch(count).trigger(availableNow=True)
             .option("checkpointLocation", args.checkpoint).start())
    query.awaitTermination()
    ended = time.monotonic()
    spark.stop()
    ends = {int(p): o for p, o in json.loads(args.ends).items()}
    marks = last_offsets(Path(args.checkpoint), args.topic)
    out = {"records": totals["records"], "bytes": totals["bytes"], "seconds": ended - started,
           "session_start_s": session_s, "seconds_after_session": ended - stream_started,
           "durable_progress": marks == ends,
           "durable_check": "the checkpoint's last offsets entry holds the end offsets"}
    if totals["records"] != args.expected:
        out["error"] = f"read {totals['records']} records, expected {args.expected}"
    if marks != ends:
        out["checkpoint_offsets"] = {str(k): v for k, v in marks.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
