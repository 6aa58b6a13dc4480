"""Exactly-once word count over Kafka, one output file per micro-batch.

Why it is exactly-once: every batch reads offset ranges that were recorded
before it ran, and the sink writes ``batch-<id>.json`` atomically (temp file
+ rename). If the driver dies mid-batch, the restart replays that batch with
the same ranges and rewrites the same file with the same content; offsets are
committed only after a batch completes. Nothing is lost, nothing is counted
twice.

    python examples/wordcount_exactly_once.py --bootstrap_servers=127.0.0.1:9092 \\
        --topics=words --checkpoint_dir=/tmp/wc/checkpoint --output_dir=/tmp/wc/out
"""

from __future__ import annotations

import json
import os
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

import beam_zdl
from beam_zdl.logs import configure_logging, log_format_of


class WordCountOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--output_dir", default="wordcount-out",
                            help="Folder receiving one batch-<id>.json per batch.")


def write_batch_file(counts: list, output_dir: str, batch_id: int) -> str:
    """Write one batch's counts atomically; a replay rewrites identical content."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"batch-{batch_id:06d}.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as out:
        json.dump({"batch_id": batch_id, "counts": dict(sorted(counts))}, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> beam_zdl.RunSummary:
    # One PipelineOptions carries every flag: beam_zdl's and this example's own.
    options = beam_zdl.ZdlOptions(argv)
    output_dir = options.view_as(WordCountOptions).output_dir

    def build(records: beam.PCollection, batch: beam_zdl.Batch) -> None:
        (records
         | beam.FlatMap(lambda r: (r.value or b"").decode("utf-8").split())
         | beam.combiners.Count.PerElement()
         | beam.combiners.ToList()
         | beam.Map(write_batch_file, output_dir, batch.batch_id))

    return beam_zdl.run_micro_batches(build, options)


if __name__ == "__main__":
    # --log_format=json: one JSON object per log line on stderr (beam_zdl.logs).
    configure_logging(log_format_of(sys.argv[1:]))
    summary = main(sys.argv[1:])
    print(f"batches={summary.batches} replayed={summary.replayed} records={summary.records}")
