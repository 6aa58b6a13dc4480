"""A micro-batch driver writing to Kafka with ``WriteToKafka``, run as a real process
by the sink's crash tests.

Usage: python -m tests.kafka_sink_proc <out_topic> <shards> <ZdlOptions flags...>
Each input record becomes one output record: key ``<input id>``, value
``out:<input id>``, so counting values in the output topic shows duplicates and
losses per input record.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import apache_beam as beam

import beam_zdl
from tests.driver_proc import _env

ROOT = Path(__file__).resolve().parents[1]


def _command(out_topic: str, shards: int, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "tests.kafka_sink_proc", out_topic, str(shards), *flags]


def run_sink_driver(out_topic: str, shards: int, flags: list[str], crash_at: str | None = None,
                    timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the driver as a child process, optionally set to SIGKILL itself at ``crash_at``."""
    return subprocess.run(_command(out_topic, shards, flags), env=_env(crash_at), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def start_sink_driver(out_topic: str, shards: int, flags: list[str],
                      log_path) -> subprocess.Popen:
    """Start the driver as a child process (to be killed by the test); output to ``log_path``."""
    log = open(log_path, "ab")
    return subprocess.Popen(_command(out_topic, shards, flags), env=_env(None), cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def read_committed(bootstrap_servers: str, topic: str, timeout_s: float = 60) -> list[tuple]:
    """Every record a ``read_committed`` consumer sees in ``topic``: (key, value) pairs."""
    import time
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "read-committed",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        at_end: set[int] = set()
        out = []
        deadline = time.monotonic() + timeout_s
        while len(at_end) < len(partitions):
            assert time.monotonic() < deadline, f"reading {topic} did not reach its end"
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    if msg.error().code() == -191:  # _PARTITION_EOF
                        at_end.add(msg.partition())
                        continue
                    raise AssertionError(str(msg.error()))
                at_end.discard(msg.partition())
                out.append((msg.key(), msg.value()))
        return out
    finally:
        consumer.close()


def output_counts(bootstrap_servers: str, topic: str) -> Counter:
    """How often each value appears in ``topic`` (read_committed)."""
    return Counter(value.decode() for _, value in read_committed(bootstrap_servers, topic))


def main(argv: list[str]) -> None:
    out_topic, shards, flags = argv[0], int(argv[1]), argv[2:]
    options = beam_zdl.ZdlOptions(flags)

    def build(records, batch):
        (records
         | beam.Map(lambda r: (r.id.encode(), f"out:{r.id}".encode()))
         | beam_zdl.WriteToKafka.from_options(options, out_topic, batch=batch, shards=shards,
                                              sink_id=f"test-{out_topic}"))

    summary = beam_zdl.run_micro_batches(build, options)
    print(json.dumps({"batches": summary.batches, "replayed": summary.replayed,
                      "records": summary.records, "batch_ids": summary.batch_ids}))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    main(sys.argv[1:])
