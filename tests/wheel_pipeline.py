"""Run by tests/test_wheel.py with the Python of a venv that has only the built wheel
(and its dependencies) installed, from a folder outside the checkout: a direct-mode
word count over a real broker, read exactly once.

Prints one JSON line: where beam_zdl was imported from, its version and the run's
summary. ``LocalKafka()`` uses the broker in $KAFKA_BOOTSTRAP_SERVERS (the suite's
own); without it, it would start one from the jars under $BEAM_ZDL_CACHE.
"""

from __future__ import annotations

import json
import os
import sys

import apache_beam as beam

import beam_zdl
from beam_zdl.testing import LocalKafka

WORDS = ["alpha", "beta", "gamma", "delta"]


def write_counts(counts: list[tuple[str, int]], out_dir: str, batch_id: int) -> None:
    path = os.path.join(out_dir, f"batch-{batch_id:06d}.json")
    with open(path + ".tmp", "w") as out:
        json.dump(dict(counts), out)
    os.replace(path + ".tmp", path)  # atomic: a replayed batch rewrites the same file


def main(work_dir: str) -> None:
    out_dir = os.path.join(work_dir, "out")
    os.makedirs(out_dir, exist_ok=True)
    with LocalKafka() as kafka:
        topic = kafka.create_topic(partitions=2)
        kafka.produce(topic, [(None, WORDS[i % len(WORDS)].encode(), i % 2)
                              for i in range(400)])
        options = beam_zdl.ZdlOptions([
            f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
            f"--checkpoint_dir={os.path.join(work_dir, 'checkpoint')}",
            "--starting_offsets=earliest", "--max_records_per_partition=150"])

        def build(records: beam.PCollection, batch: beam_zdl.Batch) -> None:
            (records
             | beam.Map(lambda r: r.value.decode())
             | beam.combiners.Count.PerElement()
             | beam.combiners.ToList()
             | beam.Map(write_counts, out_dir, batch.batch_id))

        summary = beam_zdl.run_micro_batches(build, options)
    counts: dict[str, int] = {}
    for name in sorted(os.listdir(out_dir)):
        with open(os.path.join(out_dir, name)) as f:
            for word, n in json.load(f).items():
                counts[word] = counts.get(word, 0) + n
    print(json.dumps({"file": beam_zdl.__file__, "version": beam_zdl.__version__,
                      "batches": summary.batches, "records": summary.records,
                      "counts": counts}))


if __name__ == "__main__":
    main(sys.argv[1])
