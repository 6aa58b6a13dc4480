"""pyflink peer of `make bench`, run with the pyflink venv's python.

A bounded Kafka table (Flink SQL, ``scan.bounded.mode=latest-offset``: the end offsets
at start), streaming mode, parallelism 2, checkpoints every second with offsets
committed to the group on checkpoints (Flink's durability), counting records and bytes
with ``COUNT(*)`` / ``SUM(CHAR_LENGTH(v))`` in the JVM (no Python function per record;
the value read as a raw UTF-8 string: the bench values are ASCII, so characters are bytes).
Prints one JSON line; the parent checks the group's commits.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap_servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--jar", required=True)
    args = parser.parse_args()
    started = time.monotonic()
    from pyflink.table import EnvironmentSettings, TableEnvironment
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("pipeline.jars", f"file://{args.jar}")
    conf.set("parallelism.default", "2")
    conf.set("execution.checkpointing.interval", "1s")
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
                      "setup_s": setup_s}))


if __name__ == "__main__":
    main()
