"""One benchmark peer per call, in its own process, printing one JSON line.

    python -m bench.peers <peer> --bootstrap_servers=... --topics=... [--workdir=...]

The parent (bench/run.py) runs each peer as a child so that peak RSS is the
peer's own and a crash of one peer does not end the run.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Callable

PEERS: dict[str, Callable[[argparse.Namespace], dict]] = {}


def peer(name: str):
    def register(fn):
        PEERS[name] = fn
        return fn
    return register


@peer("bare_consumer")
def bare_consumer(args: argparse.Namespace) -> dict:
    """A plain confluent-kafka consume loop: the practical limit of one Python consumer."""
    from beam_zdl import kafka
    consumer = kafka.new_consumer(args.bootstrap_servers, "bench-bare")
    parts = kafka.partitions_of(consumer, [args.topics], args.bootstrap_servers)
    marks = kafka.watermarks(consumer, parts, args.bootstrap_servers)
    from confluent_kafka import TopicPartition
    consumer.assign([TopicPartition(t, p, low) for (t, p), (low, _) in marks.items()])
    remaining = sum(high - low for low, high in marks.values())
    records = nbytes = 0
    started = time.monotonic()
    while remaining > 0:
        for msg in consumer.consume(10_000, 1.0):
            if msg.error() is None:
                value = msg.value()
                nbytes += len(value) if value else 0
                records += 1
                remaining -= 1
    seconds = time.monotonic() - started
    consumer.close()
    return {"records": records, "bytes": nbytes, "seconds": seconds}


def _micro_batches(args: argparse.Namespace, extra: list[str]) -> dict:
    import apache_beam as beam
    import beam_zdl

    def build(records, batch):
        (records | beam.Map(lambda r: len(r.value or b"")) | beam.CombineGlobally(sum))

    options = beam_zdl.ZdlOptions([
        f"--bootstrap_servers={args.bootstrap_servers}", f"--topics={args.topics}",
        f"--checkpoint_dir={args.workdir}/ckpt-{time.time_ns()}",
        f"--consumer_group=bench-{time.time_ns()}", "--starting_offsets=earliest",
        "--trigger=available_now", *extra])
    started = time.monotonic()
    summary = beam_zdl.run_micro_batches(build, options)
    seconds = time.monotonic() - started
    return {"records": summary.records, "bytes": summary.records * args.value_bytes,
            "seconds": seconds, "batches": summary.batches}


@peer("direct_1_worker")
def direct_1(args: argparse.Namespace) -> dict:
    return _micro_batches(args, ["--direct_num_workers=1"])


@peer("direct_2_workers")
def direct_2(args: argparse.Namespace) -> dict:
    return _micro_batches(args, ["--direct_num_workers=2",
                                 "--direct_running_mode=multi_processing"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--bootstrap_servers", required=True)
    parser.add_argument("--topics", required=True)
    parser.add_argument("--workdir", default="/tmp")
    parser.add_argument("--value_bytes", type=int, default=100)
    args = parser.parse_args(argv)
    result = PEERS[args.peer](args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_children_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
