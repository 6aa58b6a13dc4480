"""pyflink peer of `make bench`, run with the pyflink venv's python.

A bounded Kafka table (Flink SQL, ``scan.bounded.mode=latest-offset``: the end offsets
at start), streaming mode, parallelism 2, checkpoints every second with offsets
committed to the group on checkpoints (the progress a finished bounded job leaves: its
checkpoints end with it), counting records and bytes with ``COUNT(*)`` /
``SUM(CHAR_LENGTH(v))`` in the JVM (no Python function per record; the value read as a
raw UTF-8 string: the bench values are ASCII, so characters are bytes). Prints one JSON
line; the parent checks the count and the group's commits.

The aggregate runs as a mini-batch: without it a streaming ``COUNT(*)`` emits a
retraction and an update per input record (2 rows per record), and the collect sink
hands every row to Python through py4j at about 200 rows/s, so 20k records took 200 s;
with it, one update per batch (about 35 rows for 1M records).

The group's final commit is not guaranteed (flink-sql-connector-kafka 5.0.0-2.2): when
a reader's last split ends, its idle fetcher closes; the final checkpoint's commit then
starts a new fetcher and queues the commit on it, and the reader, closing right after
that checkpoint, shuts the fetcher down, sometimes before the queued commit ran
("Starting split fetcher 1" and "Shutting down split fetcher 1" 1-14 ms apart in the
log). That reader's partitions then stay at an earlier checkpoint's offsets: 3 of 9
runs at 1M here, 1 of 5 at 20k. The parent reports it (durable progress NO, and the
offsets the group reached). An unbounded table stopped at N records is no way out: its
commits queue behind the fetcher's blocking poll of the drained partitions, and 3-4 s
after the last record the group still stood where it was before the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap_servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--jar", required=True)
    args = parser.parse_args()
    # The gateway JVM inherits our stdout, and what it prints there once broke the parent's
    # parse of our last line: it gets stderr as its stdout, the result keeps the real one.
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    started = time.monotonic()
    from pyflink.table import EnvironmentSettings, TableEnvironment
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("pipeline.jars", f"file://{args.jar}")
    conf.set("parallelism.default", "2")
    conf.set("execution.checkpointing.interval", "1s")
    # One changelog row per mini-batch instead of two per record (see the docstring);
    # the size only caps the records buffered per batch, the latency ends a batch.
    conf.set("table.exec.mini-batch.enabled", "true")
    conf.set("table.exec.mini-batch.allow-latency", "1s")
    conf.set("table.exec.mini-batch.size", "100000")
    env.execute_sql(f"""
        CREATE TABLE src (v STRING) WITH (
          'connector' = 'kafka', 'topic' = '{args.topic}',
          'properties.bootstrap.servers' = '{args.bootstrap_servers}',
          'properties.group.id' = '{args.group}',
          'properties.commit.offsets.on.checkpoint' = 'true',
          'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset',
          'format' = 'raw')""")
    setup_s = time.monotonic() - started
    records = nbytes = 0
    with env.execute_sql(
            "SELECT COUNT(*), SUM(CHAR_LENGTH(v)) FROM src").collect() as rows:
        for row in rows:  # an updating result: the last row is the total
            records, nbytes = row[0], row[1] or 0
    seconds = time.monotonic() - started
    print(json.dumps({"records": records, "bytes": nbytes, "seconds": seconds,
                      "session_start_s": setup_s, "seconds_after_session": seconds - setup_s}),
          file=result_out, flush=True)


if __name__ == "__main__":
    main()
