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

from beam_zdl.direct import (PartitionRange, Poll, ReadOffsetRangesFn, ReadSettings, UnbatchFn,
                             plan_ranges, split_range)
from beam_zdl.options import ZdlConfig
from beam_zdl.records import KafkaRecord
from beam_zdl.runners import apply_runner_defaults, is_flink

__all__ = ["ReadFromKafka", "ReadFromWal", "read_settings", "plan_bounded_ranges"]

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
    return plan_ranges(partitions, starts, {tp: high for tp, (_, high) in ends.items()},
                       config.max_records_per_partition)


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
        if self._ranges is None and _streaming(options, pbegin):
            apply_runner_defaults(pbegin.pipeline.options, pbegin.pipeline.runner)
            flink = is_flink(pbegin.pipeline.options, pbegin.pipeline.runner)
            return pbegin | "Stream" >> _read_streaming(config, flink)
        ranges = self._ranges
        if ranges is None:
            ranges = plan_bounded_ranges(config)
            _LOGGER.info("ReadFromKafka planned %d ranges, %d records", len(ranges),
                         sum(r.stop - r.start for r in ranges))
        # Chunks of the initial split as elements, spread by a shuffle: a runner then hands
        # them to all its workers (one Create element would keep them on one).
        chunks = [c for r in ranges if r.stop > r.start for c in split_range(r)]
        chunked = pbegin | "Ranges" >> beam.Create(chunks, reshuffle=False)
        if len(chunks) > 1:
            chunked = chunked | "Spread" >> beam.Reshuffle()
        return (chunked
                | "Read" >> beam.ParDo(ReadOffsetRangesFn(read_settings(config)))
                .with_output_types(Poll)
                | "Records" >> beam.ParDo(UnbatchFn()).with_output_types(KafkaRecord))


def _streaming(options: PipelineOptions, pbegin: beam.pvalue.PBegin) -> bool:
    """--streaming on the transform's options or the pipeline's."""
    from apache_beam.options.pipeline_options import StandardOptions
    return any(o is not None and o.view_as(StandardOptions).streaming
               for o in (options, pbegin.pipeline.options))


def _read_streaming(config: ZdlConfig, flink: bool = False) -> beam.PTransform:
    """The unbounded read (see beam_zdl.streaming); checks the topics exist first.

    On Flink it self-checkpoints less often (``FLINK_TIMING``): every
    self-checkpoint leaves state behind in Flink's Beam runner.
    """
    from beam_zdl import kafka
    from beam_zdl.streaming import FLINK_TIMING, ReadStreaming, StreamSettings
    consumer = kafka.new_consumer(config.bootstrap_servers, config.consumer_group,
                                  config.consumer_config)
    try:
        kafka.partitions_of(consumer, config.topics, config.bootstrap_servers)
    finally:
        consumer.close()
    return ReadStreaming(config.topics, StreamSettings(
        bootstrap_servers=config.bootstrap_servers,
        consumer_group=config.consumer_group,
        consumer_config=dict(config.consumer_config),
        starting_offsets=config.starting_offsets,
        fail_on_data_loss=config.fail_on_data_loss,
        discovery_interval_s=config.partition_discovery_interval_s,
        idle_watermark_delay_s=config.idle_watermark_delay_s,
        **(FLINK_TIMING if flink else {})))


# --- WAL mode --------------------------------------------------------------------------------

class _ReadSegmentsFn(beam.DoFn):
    """Reads whole WAL segments (every frame verified) as timestamped KafkaRecords."""

    def __init__(self, fail_on_data_loss: bool) -> None:
        from apache_beam.metrics import Metrics
        self._fail_on_data_loss = fail_on_data_loss
        self._records = Metrics.counter("beam_zdl", "records")
        self._bytes = Metrics.counter("beam_zdl", "bytes")
        self._segments = Metrics.counter("beam_zdl", "wal_segments")
        self._lost_frames = Metrics.counter("beam_zdl", "wal_lost_frames")
        self._lost_records = Metrics.counter("beam_zdl", "wal_lost_records")

    def process(self, uri: str, window=beam.DoFn.WindowParam):
        from apache_beam.utils.windowed_value import create as windowed

        from beam_zdl.records import KafkaHeader
        from beam_zdl.wal import ReadReport, read_segment

        report = ReadReport()
        records = read_segment(uri, fail_on_data_loss=self._fail_on_data_loss, report=report)
        if report.lost:
            self._lost_frames.inc(len(report.lost))
            self._lost_records.inc(report.lost_records)
            _LOGGER.error("WAL segment %s: skipped %d damaged byte ranges (%d records known "
                          "lost%s), --fail_on_data_loss=false", uri, len(report.lost),
                          report.lost_records,
                          ", and an unknown number more" if report.unknown_loss else "")
        count = 0
        nbytes = 0
        windows = (window,)  # the segment URI's window: the global window of a Create
        new_record = tuple.__new__
        for rec in records:
            key = rec.key if rec.HasField("key") else None
            value = rec.value if rec.HasField("value") else None
            headers = [KafkaHeader(h.key, h.value if h.HasField("value") else None)
                       for h in rec.headers] if rec.headers else []
            count += 1
            if key is not None:
                nbytes += len(key)
            if value is not None:
                nbytes += len(value)
            ts = rec.timestamp_ms
            # As direct mode: KafkaRecord without NamedTuple's Python __new__, and a
            # WindowedValue (timestamp in micros) instead of TimestampedValue + assignment.
            yield windowed(new_record(KafkaRecord, (rec.topic, rec.partition, rec.offset, key,
                                                    value, ts, headers)), ts * 1000, windows)
        self._records.inc(count)
        self._bytes.inc(nbytes)
        self._segments.inc()


class ReadFromWal(beam.PTransform):
    """Reads sealed WAL segments as :class:`~beam_zdl.KafkaRecord`, segments in parallel.

    Yields exactly the records direct mode would have read for the same offsets,
    each with its Kafka timestamp as the element timestamp. Every frame is
    verified: a damaged one raises :class:`~beam_zdl.WalCorruptionError` naming
    segment and byte, or with ``--fail_on_data_loss=false`` is skipped, logged
    and counted (``beam_zdl/wal_lost_frames``, ``beam_zdl/wal_lost_records``).

    Args:
        segments_or_wal_dir: segment URIs (or ``SegmentRef``s), or a WAL directory
            URI whose segments are listed at construction (to replay a WAL).
        options: options holding ``--fail_on_data_loss`` (default: the pipeline's).
    """

    def __init__(self, segments_or_wal_dir, options: Optional[PipelineOptions] = None) -> None:
        super().__init__()
        self._options = options
        if isinstance(segments_or_wal_dir, str):
            from beam_zdl.wal import list_segments, parse_segment_name
            if parse_segment_name(segments_or_wal_dir):
                self._uris = [segments_or_wal_dir]
            else:
                self._uris = [s.uri for s in list_segments(segments_or_wal_dir)]
                _LOGGER.info("ReadFromWal: %d segments in %s", len(self._uris),
                             segments_or_wal_dir)
        else:
            self._uris = [getattr(s, "uri", s) for s in segments_or_wal_dir]

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        from beam_zdl.options import ZdlOptions
        options = self._options or pbegin.pipeline.options
        fail = options.view_as(ZdlOptions).fail_on_data_loss
        segments = pbegin | "Segments" >> beam.Create(self._uris, reshuffle=False)
        if len(self._uris) > 1:
            segments = segments | "Spread" >> beam.Reshuffle()
        return (segments
                | "ReadSegments" >> beam.ParDo(_ReadSegmentsFn(fail))
                .with_output_types(KafkaRecord))
