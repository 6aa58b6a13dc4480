"""Kafka in, Kafka out, exactly once: every input record's output is seen once by
``read_committed`` consumers of the output topic, whatever crashes.

Why it is exactly-once: every micro-batch reads offset ranges recorded before it
ran (``run_micro_batches``), and ``beam_zdl.WriteToKafka`` writes the batch in a
few Kafka transactions ("shards"), each carrying a progress record "shard s wrote
batch b" in the same transaction. If the driver dies after some shards committed,
the restart replays the batch with the same input: the committed shards are
skipped, the others written again. A transaction left open by the dead driver is
aborted when the restarted one opens the same shard (fixed ``transactional.id``),
which also fences a driver that is still running somewhere (a zombie).

Consumers of the output must read with ``isolation.level=read_committed``.

    python examples/kafka_to_kafka_exactly_once.py --bootstrap_servers=127.0.0.1:9092 \\
        --topics=words --output_topic=words-upper --checkpoint_dir=/tmp/k2k/checkpoint
"""

from __future__ import annotations

import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

import beam_zdl
from beam_zdl.logs import configure_logging, log_format_of


class KafkaToKafkaOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--output_topic", default="beam-zdl-out",
                            help="Existing topic receiving the transformed records.")
        parser.add_argument("--sink_shards", type=int, default=4,
                            help="Transactions per batch; keep it across restarts.")
        parser.add_argument("--sink_id", default=None,
                            help="Names the sink's transactional ids and progress groups "
                                 "(default: the output topic); keep it across restarts.")


def main(argv: list[str] | None = None) -> beam_zdl.RunSummary:
    # One PipelineOptions carries every flag: beam_zdl's and this example's own.
    options = beam_zdl.ZdlOptions(argv)
    ours = options.view_as(KafkaToKafkaOptions)

    def build(records: beam.PCollection, batch: beam_zdl.Batch) -> None:
        (records
         # key: the input record's id, so the output can be traced to its input
         | beam.Map(lambda r: (r.id, (r.value or b"").decode("utf-8").upper()))
         # batch=batch makes it exactly-once: its transactions are keyed by batch.batch_id
         | beam_zdl.WriteToKafka.from_options(options, ours.output_topic, batch=batch,
                                              shards=ours.sink_shards, sink_id=ours.sink_id))

    return beam_zdl.run_micro_batches(build, options)


if __name__ == "__main__":
    # --log_format=json: one JSON object per log line on stderr (beam_zdl.logs).
    configure_logging(log_format_of(sys.argv[1:]))
    summary = main(sys.argv[1:])
    print(f"batches={summary.batches} replayed={summary.replayed} records={summary.records}")
