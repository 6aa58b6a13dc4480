"""Public PTransforms: ReadFromKafka (direct mode) and ReadFromWal (WAL mode).

Inside :func:`beam_zdl.run_micro_batches` the driver hands ``ReadFromKafka``
the batch's planned ranges. Used on its own in a bounded pipeline it plans
ranges at construction: from ``--starting_offsets`` to the end offsets seen
then, so the pipeline reads a fixed, repeatable set of records.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_zdl.direct import PartitionRange, ReadOffsetRangesFn, ReadSettings
from beam_zdl.options import ZdlConfig
from beam_zdl.records import KafkaRecord

__all__ = ["ReadFromKafka", "read_settings", "plan_bounded_ranges"]

_LOGGER = logging.getLogger(__name__)


def read_settings(config: ZdlConfig) -> ReadSettings:
    """The worker-side settings of a validated config."""
    return ReadSettings(
        bootstrap_servers=config.bootstrap_servers,
        consumer_group=config.consumer_group,
        consumer_config=dict(config.consumer_config),
        fail_on_data_loss=config.fail_on_data_loss,
    )


def plan_bounded_ranges(config: ZdlConfig) -> list[PartitionRange]:
    """From ``--starting_offsets`` to the current end offsets of every partition."""
    from beam_zdl import kafka
    consumer = kafka.new_consumer(config.bootstrap_servers, config.consumer_group,
                                  config.consumer_config)
    try:
        partitions = kafka.partitions_of(consumer, config.topics, config.bootstrap_servers)
        starts = kafka.starting_positions(consumer, partitions, config.starting_offsets,
                                          config.bootstrap_servers)
        ends = kafka.watermarks(consumer, partitions, config.bootstrap_servers)
    finally:
        consumer.close()
    ranges = []
    for tp in partitions:
        stop = ends[tp][1]
        if config.max_records_per_partition:
            stop = min(stop, starts[tp] + config.max_records_per_partition)
        ranges.append(PartitionRange(tp[0], tp[1], starts[tp], max(starts[tp], stop)))
    return ranges


class ReadFromKafka(beam.PTransform):
    """Reads Kafka records as :class:`~beam_zdl.KafkaRecord`, exactly the planned ranges.

    Args:
        options: pipeline options holding the ZdlOptions flags
            (``--bootstrap_servers``, ``--topics``, ...). Defaults to the
            pipeline's own options.
        ranges: the offset ranges to read; when omitted they are planned at
            construction (see module doc).
    """

    def __init__(self, options: Optional[PipelineOptions] = None,
                 ranges: Optional[Iterable[PartitionRange]] = None) -> None:
        super().__init__()
        self._options = options
        self._ranges = None if ranges is None else [PartitionRange(*r) for r in ranges]

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        options = self._options or pbegin.pipeline.options
        config = ZdlConfig.from_options(options)
        ranges = self._ranges
        if ranges is None:
            ranges = plan_bounded_ranges(config)
            _LOGGER.info("ReadFromKafka planned %d ranges, %d records", len(ranges),
                         sum(r.stop - r.start for r in ranges))
        ranges = [r for r in ranges if r.stop > r.start]
        return (pbegin
                | "Ranges" >> beam.Create(ranges, reshuffle=False)
                | "Read" >> beam.ParDo(ReadOffsetRangesFn(read_settings(config)))
                .with_output_types(KafkaRecord))
