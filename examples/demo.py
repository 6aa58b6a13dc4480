"""`make demo`: exactly-once through a SIGKILL, end to end, on this machine.

1. start a real Kafka broker (LocalKafka; or use $KAFKA_BOOTSTRAP_SERVERS),
2. produce records "<word> id<n>" to a 4-partition topic,
3. run examples/wordcount_exactly_once.py in direct mode and SIGKILL it after
   its second batch ran but before that batch was recorded complete,
4. start it again: the pending batch is replayed with the same offset ranges,
   then the rest is read,
5. count every id<n> in the output files: each must appear exactly once;
6. then the same input through examples/kafka_to_kafka_exactly_once.py (Kafka
   out, transactional): SIGKILLed after its second shard transaction
   committed, restarted, and every ID<n> counted by a read_committed consumer;
7. write ``beam-zdl report`` of the word count's checkpoint (its batches, the
   replay among them) and print its path; its charts also go to docs/report.png.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from beam_zdl.testing import LocalKafka

HERE = Path(__file__).resolve().parent
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def run_example(args: list[str], crash_at: str | None,
                script: str = "wordcount_exactly_once.py") -> int:
    env = dict(os.environ)
    env.pop("BEAM_ZDL_CRASH_AT", None)
    if crash_at:
        env["BEAM_ZDL_CRASH_AT"] = crash_at
    proc = subprocess.run([sys.executable, str(HERE / script), *args], env=env)
    return proc.returncode


def read_committed_values(bootstrap_servers: str, topic: str) -> list[bytes]:
    """Every value a read_committed consumer sees in ``topic``, up to its end."""
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "demo-reader",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        at_end, values = set(), []
        while len(at_end) < len(partitions):
            for msg in consumer.consume(10_000, 1.0):
                if msg.error():
                    if msg.error().code() != -191:  # anything but _PARTITION_EOF
                        raise RuntimeError(str(msg.error()))
                    at_end.add(msg.partition())
                else:
                    at_end.discard(msg.partition())
                    values.append(msg.value())
        return values
    finally:
        consumer.close()


def kafka_sink_demo(kafka: LocalKafka, topic: str, workdir: Path,
                    args: argparse.Namespace) -> tuple[list[str], bool]:
    """The same input through examples/kafka_to_kafka_exactly_once.py: SIGKILLed after
    the second shard transaction committed (its batch not yet complete), restarted, then
    every output record counted by a read_committed consumer."""
    out_topic = kafka.create_topic(f"demo-upper-{workdir.name[-8:].replace('_', '-')}",
                                   partitions=4)
    example_args = [
        f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
        f"--checkpoint_dir={workdir / 'checkpoint-k2k'}", f"--output_topic={out_topic}",
        f"--max_records_per_partition={args.batch_records}", "--consumer_group=demo-k2k",
        "--starting_offsets=earliest", "--trigger=available_now", "--sink_shards=4"]
    script = "kafka_to_kafka_exactly_once.py"
    print("\n== Kafka to Kafka, run 1: SIGKILL after 2 shard transactions committed ==")
    killed = run_example(example_args, "after_shard_commit:2", script) == -signal.SIGKILL
    print("\n== Kafka to Kafka, run 2: restart; committed shards are skipped ==")
    rc = run_example(example_args, None, script)
    seen = collections.Counter(v.decode().split()[-1] for v in
                               read_committed_values(kafka.bootstrap_servers, out_topic))
    expected = {f"ID{i}" for i in range(args.records)}
    lost = len(expected - set(seen))
    dups = sum(n - 1 for n in seen.values() if n > 1)
    report = [f"records produced     {args.records}",
              f"records in output    {sum(seen.values())} (read_committed)",
              f"duplicates           {dups}",
              f"lost                 {lost}",
              f"first run killed     {killed}"]
    return report, rc == 0 and killed and lost == 0 and dups == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--batch_records", type=int, default=10_000,
                        help="--max_records_per_partition for the example")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--report", default=str(Path(tempfile.gettempdir()) /
                                                 "beam-zdl-demo-report.html"),
                        help="where the HTML report of the word count run goes")
    parser.add_argument("--report_png", default=str(HERE.parent / "docs" / "report.png"),
                        help="where its charts go as a PNG (the docs' picture); '' for none")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="beam-zdl-demo-"))
    out_dir = workdir / "out"
    started = time.monotonic()
    with LocalKafka() as kafka:
        print(f"Kafka at {kafka.bootstrap_servers}")
        topic = kafka.create_topic("demo-words-" + workdir.name[-8:].replace("_", "-"),
                                   partitions=4)
        t0 = time.monotonic()
        kafka.produce(topic, ((None, f"{WORDS[i % len(WORDS)]} id{i}".encode())
                              for i in range(args.records)))
        print(f"produced {args.records} records to {topic} in {time.monotonic() - t0:.1f} s")
        example_args = [
            f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
            f"--checkpoint_dir={workdir / 'checkpoint'}", f"--output_dir={out_dir}",
            f"--max_records_per_partition={args.batch_records}",
            "--consumer_group=demo", "--starting_offsets=earliest",
            "--trigger=available_now",
        ]
        print("\n== run 1: SIGKILL after batch 1 ran, before it was recorded complete ==")
        rc = run_example(example_args, crash_at="after_run:2")
        killed = rc == -signal.SIGKILL
        print(f"run 1 exit: {'killed by SIGKILL' if killed else rc}")
        print("\n== run 2: restart; the pending batch is replayed first ==")
        rc2 = run_example(example_args, crash_at=None)
        committed = kafka.committed("demo", topic)
        ends = kafka.end_offsets(topic)
        sink_report, sink_ok = kafka_sink_demo(kafka, topic, workdir, args)

    seen = collections.Counter()
    words = collections.Counter()
    files = sorted(glob.glob(str(out_dir / "batch-*.json")))
    for path in files:
        for word, n in json.loads(Path(path).read_text())["counts"].items():
            if word.startswith("id"):
                seen[word] += n
            else:
                words[word] += n
    expected = {f"id{i}" for i in range(args.records)}
    lost = len(expected - set(seen))
    dups = sum(n - 1 for n in seen.values() if n > 1)
    took = time.monotonic() - started
    print("\n== report ==")
    print(f"records produced     {args.records}")
    print(f"records in output    {sum(seen.values())}")
    print(f"duplicates           {dups}")
    print(f"lost                 {lost}")
    print(f"batches (files)      {len(files)}")
    print(f"first run killed     {killed}")
    print(f"offsets committed    {'= end offsets' if committed == ends else committed}")
    print(f"time taken           {took:.1f} s")
    ok = (rc2 == 0 and killed and lost == 0 and dups == 0 and committed == ends
          and sum(seen.values()) == args.records)
    print("RESULT:", "OK, exactly once" if ok else "FAILED")
    print("\n== report: Kafka to Kafka (examples/kafka_to_kafka_exactly_once.py) ==")
    print("\n".join(sink_report))
    print("RESULT:", "OK, exactly once" if sink_ok else "FAILED")
    ok = ok and sink_ok
    from beam_zdl.report import write_report
    if args.report_png:
        Path(args.report_png).parent.mkdir(parents=True, exist_ok=True)
    path, batches = write_report(str(workdir / "checkpoint"), args.report,
                                 png_output=args.report_png or None)
    print(f"\nreport of the word count run ({batches} batches): {path}"
          + (f"\ncharts: {args.report_png}" if args.report_png else ""))
    if ok and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
