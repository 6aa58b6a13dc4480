"""quixstreams peer of `make bench`, run with the quixstreams venv's python (it pins its
own confluent-kafka). Reads ``--topic`` from earliest until ``--records`` records were
processed (the end offsets at start), counts them, and checks that the group's committed
offsets reached the end offsets (durable progress). Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import logging
import time

from confluent_kafka import Consumer, TopicPartition
from quixstreams import Application


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-quix-probe"})
    parts = c.list_topics(topic, timeout=30).topics[topic].partitions
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
    c.close()
    return ends


def committed(bootstrap: str, group: str, topic: str, parts: list[int]) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    got = c.committed([TopicPartition(topic, p) for p in parts], timeout=30)
    c.close()
    return {tp.partition: tp.offset for tp in got}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap_servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--guarantee", choices=["exactly-once", "at-least-once"], required=True)
    args = parser.parse_args()
    ends = end_offsets(args.bootstrap_servers, args.topic)
    expected = sum(ends.values())
    count = nbytes = 0

    def touch(value: bytes) -> None:
        nonlocal count, nbytes
        count += 1
        nbytes += len(value)

    started = time.monotonic()
    app = Application(broker_address=args.bootstrap_servers, consumer_group=args.group,
                      auto_offset_reset="earliest", processing_guarantee=args.guarantee,
                      loglevel="WARNING", auto_create_topics=False)
    sdf = app.dataframe(app.topic(args.topic, value_deserializer="bytes"))
    sdf.update(touch)
    app.run(count=expected, collect=False)
    seconds = time.monotonic() - started
    marks = committed(args.bootstrap_servers, args.group, args.topic, sorted(ends))
    out = {"records": count, "bytes": nbytes, "seconds": seconds,
           "durable_progress": marks == ends,
           "durable_check": "group committed offsets equal the end offsets at start"}
    if count != expected:
        out["error"] = f"read {count} records, expected {expected}"
    if marks != ends:
        out["committed"] = {str(k): v for k, v in marks.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
