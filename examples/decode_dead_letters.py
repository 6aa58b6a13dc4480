"""Decode Avro records with a Schema Registry; undecodable records go to a dead-letter topic.

Each micro-batch decodes its records with ``beam_zdl.DecodeRecords``: the decoded
ones are written to ``<output_dir>/batch-<id>.jsonl`` (one file per batch, replaced
whole, so a replayed batch rewrites the same file), the records that cannot be
decoded — bad bytes, a wrong magic byte, a schema id the registry does not know —
go, unchanged and with the failure in headers, to the dead-letter topic through
``beam_zdl.WriteToKafka`` (exactly once, in the batch's transactions). Nothing is
dropped. If the registry is down, the batch fails instead and is replayed on the
next run: an outage never turns good records into dead letters.

    python examples/decode_dead_letters.py --bootstrap_servers=127.0.0.1:9092 \\
        --topics=users --checkpoint_dir=/tmp/decode/checkpoint \\
        --schema_registry_url=http://127.0.0.1:8081 --dead_letter_topic=users-dlq \\
        --output_dir=/tmp/decode/out
"""

from __future__ import annotations

import json
import os
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

import beam_zdl
from beam_zdl.logs import configure_logging, log_format_of


class DecodeOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--schema_registry_url", default="http://127.0.0.1:8081",
                            help="Confluent-compatible Schema Registry of the Avro values.")
        parser.add_argument("--dead_letter_topic", default="beam-zdl-dead-letters",
                            help="Existing topic receiving the records that cannot be decoded.")
        parser.add_argument("--output_dir", default="decoded",
                            help="Folder of the decoded records, one file per batch.")


def write_batch(rows: list, output_dir: str, batch_id: int) -> None:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"batch-{batch_id:06d}.jsonl")
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        out.writelines(sorted(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    os.replace(path + ".tmp", path)  # atomic: a replayed batch replaces it whole


def main(argv: list[str] | None = None) -> beam_zdl.RunSummary:
    options = beam_zdl.ZdlOptions(argv)
    ours = options.view_as(DecodeOptions)

    def build(records: beam.PCollection, batch: beam_zdl.Batch) -> None:
        result = records | beam_zdl.DecodeRecords(
            value="avro", key="string", schema_registry_url=ours.schema_registry_url)
        (result.records
         # the record's id (topic/partition/offset) stays with it: an idempotency key
         | beam.Map(lambda r: {"id": r.id, "key": r.key, "value": r.value})
         | beam.combiners.ToList()
         | beam.Map(write_batch, ours.output_dir, batch.batch_id))
        (result.dead_letters
         | beam.Map(beam_zdl.DeadLetter.to_kafka_record)
         | beam_zdl.WriteToKafka.from_options(options, ours.dead_letter_topic, batch=batch))

    return beam_zdl.run_micro_batches(build, options)


if __name__ == "__main__":
    # --log_format=json: one JSON object per log line on stderr (beam_zdl.logs).
    configure_logging(log_format_of(sys.argv[1:]))
    summary = main(sys.argv[1:])
    print(f"{summary.batches} batches, {summary.records} records")
