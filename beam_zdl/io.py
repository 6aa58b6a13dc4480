"""Public PTransforms: ReadFromKafka (direct mode) and ReadFromWal (WAL mode).

Inside :func:`beam_zdl.run_micro_batches` the driver hands ``ReadFromKafka``
the batch's planned ranges. Used on its own in a bounded pipeline it plans
ranges when the pipeline is built, from ``--starting_offsets`` to
``--ending_offsets`` (default: the end offsets seen then), so the pipeline reads
a fixed, repeatable set of records. With ``--streaming`` it is the unbounded
read of :mod:`beam_zdl.streaming`.
"""

from __future__ import annotations

import abc
import json
import logging
from typing import Any, Iterable, Mapping, Optional, Sequence, Union, cast

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

import beam_zdl.ranges as ranges_
from beam_zdl.direct import (Poll, RangeGroup, ReadOffsetRangesFn, ReadSettings, UnbatchFn,
                             group_chunks, split_range)
from beam_zdl.errors import ConfigError, ZdlError
from beam_zdl.options import ZdlConfig, warn_near_misses
from beam_zdl.ranges import PartitionRange
from beam_zdl.records import KafkaRecord
from beam_zdl.runners import apply_runner_defaults, is_flink
from beam_zdl.wal_read import ReadSegmentsFn

__all__ = ["ReadFromKafka", "ReadFromWal", "RangesInput", "CreateRanges"]

_LOGGER = logging.getLogger(__name__)


# Beam's ReadFromKafka keywords beam_zdl has no use for: each is accepted with the
# values that mean what beam_zdl does anyway, else refused, saying what to do instead.
_BYTES = "org.apache.kafka.common.serialization.ByteArrayDeserializer"
_BEAM_KEYWORDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "key_deserializer": ((_BYTES,), "beam_zdl yields keys as bytes; decode them with "
                         "beam_zdl.DecodeRecords (Schema Registry formats) or a beam.Map"),
    "value_deserializer": ((_BYTES,), "beam_zdl yields values as bytes; decode them with "
                           "beam_zdl.DecodeRecords (Schema Registry formats) or a beam.Map"),
    "max_num_records": ((None,), "a bounded read stops at ending_offsets= (default: the end "
                        "offsets when the pipeline is built); cap it per partition with "
                        "max_records_per_partition="),
    "max_read_time": ((None,), "a bounded read stops at ending_offsets= or "
                      "stop_read_time= (epoch ms)"),
    "timestamp_policy": (("CreateTime", "LogAppendTime"),
                         "elements carry their Kafka record timestamp (CreateTime or "
                         "LogAppendTime, as the topic stores it); for processing time, "
                         "re-stamp them with beam.Map(lambda r: "
                         "beam.window.TimestampedValue(r, time.time()))"),
    "consumer_polling_timeout": ((2, None), "beam_zdl sizes its polls itself"),
    "expansion_service": ((None,), "beam_zdl reads Kafka in Python: there is no expansion "
                          "service"),
    "redistribute_num_keys": ((0, None), "redistribute=True spreads the records with a "
                              "beam.Reshuffle()"),
    "allow_duplicates": ((False, True, None), ""),  # beam_zdl never duplicates: either holds
    "dynamic_read_poll_interval_seconds": ((None,), "beam_zdl reads the partitions of "
                                           "topics=; in streaming it finds new partitions "
                                           "every --partition_discovery_interval_s"),
    "consumer_factory_fn_class": ((None,), "beam_zdl builds its consumers from "
                                  "consumer_config="),
    "consumer_factory_fn_params": ((None,), "beam_zdl builds its consumers from "
                                   "consumer_config="),
}
_OWN_KEYWORDS = ("consumer_config", "topics", "bootstrap_servers", "consumer_group",
                 "starting_offsets", "ending_offsets", "start_read_time", "stop_read_time",
                 "max_records_per_partition", "fail_on_data_loss", "with_metadata",
                 "commit_offset_in_finalize", "redistribute", "ranges", "ranges_input",
                 "options")


class RangesInput(abc.ABC):
    """How a bounded read's offset ranges (its groups of chunks,
    :func:`~beam_zdl.direct.group_chunks`) become the PCollection its splittable DoFn
    reads: the read itself knows no runner.

    :class:`CreateRanges` suits every runner; ``run_micro_batches`` passes its own,
    which hands the groups to its warm runner as data
    (:mod:`beam_zdl.microbatch.batch_ranges`).
    """

    @abc.abstractmethod
    def expand(self, pbegin: beam.pvalue.PBegin,
               groups: list[RangeGroup]) -> beam.PCollection[RangeGroup]:
        """The groups as elements, spread so that a runner can hand them to all its
        workers."""


class CreateRanges(RangesInput):
    """The groups as a ``Create``, spread by a shuffle when there are several (one Create
    element list would keep them on one worker)."""

    def expand(self, pbegin: beam.pvalue.PBegin,
               groups: list[RangeGroup]) -> beam.PCollection[RangeGroup]:
        created: beam.PCollection[RangeGroup] = (
            pbegin | "Ranges" >> beam.Create(groups, reshuffle=False))
        if len(groups) > 1:
            created = created | "Spread" >> beam.Reshuffle()
        return created


def _check_beam_keywords(source: str, given: Mapping[str, Any],
                         table: Mapping[str, tuple[tuple[Any, ...], str]],
                         own: Sequence[str]) -> None:
    """Refuse a keyword of Beam's transform that beam_zdl cannot honour, or a typo."""
    import difflib
    for name, value in given.items():
        if name not in table:
            close = difflib.get_close_matches(name, [*own, *table], n=1)
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise ConfigError(f"{source} got an unknown keyword {name}={value!r}{hint} "
                              f"(keywords: {', '.join(own)})")
        accepted, instead = table[name]
        if not any(value is a or (not isinstance(value, bool) and not isinstance(a, bool)
                                  and value == a) for a in accepted):
            raise ConfigError(f"{source}({name}={value!r}) is Beam's KafkaIO keyword that "
                              f"beam_zdl does not honour with this value: {instead}")


class ReadFromKafka(beam.PTransform[beam.pvalue.PBegin, beam.PCollection[KafkaRecord]]):
    """Reads Kafka records as :class:`~beam_zdl.KafkaRecord`, exactly the planned ranges.

    Takes keyword arguments like Beam's own ``apache_beam.io.kafka.ReadFromKafka``
    (``consumer_config`` may hold ``bootstrap.servers``, ``group.id`` and
    ``auto.offset.reset=earliest``, as there), and any argument left out comes from the
    ZdlOptions flags of ``options`` or of the pipeline. :meth:`from_options` reads
    everything from flags. All Kafka I/O happens in ``expand``.

    Beam's other keywords are taken with Beam's meaning where beam_zdl has one
    (``start_read_time``, ``stop_read_time``, ``with_metadata``, ``redistribute``,
    ``commit_offset_in_finalize`` in streaming) and with the values that change nothing
    (``key_deserializer``/``value_deserializer`` as ByteArrayDeserializer,
    ``timestamp_policy`` CreateTime/LogAppendTime, ``allow_duplicates``, defaults);
    anything else is a :class:`ConfigError` saying what beam_zdl does instead.

    A bounded read never commits the group's offsets: ``run_micro_batches`` commits them
    after each completed batch, and the streaming read after the runner finalized a
    bundle.

    Without ``ranges``, a bounded pipeline reads from ``starting_offsets`` to
    ``ending_offsets`` (default: the end offsets seen when the pipeline is built), so
    it reads a fixed, repeatable set of records; with ``--streaming`` the read is
    unbounded (see :mod:`beam_zdl.streaming`).

    Args:
        consumer_config: confluent-kafka settings (``--consumer_config``); secrets may
            be ``${env:NAME}`` / ``${file:PATH}`` references.
        topics: a topic or a list of topics (``--topics``).
        bootstrap_servers: ``host:port,...`` (``--bootstrap_servers``).
        consumer_group: the group whose committed offsets ``starting_offsets="committed"``
            starts from (``--consumer_group``); a bounded read does not commit them.
        starting_offsets: ``earliest``, ``latest``, ``committed``, ``timestamp:<epoch ms>``
            or a JSON map of exact offsets (``--starting_offsets``; see
            :mod:`beam_zdl.positions`).
        ending_offsets: where a bounded read stops: ``latest``, ``timestamp:<epoch ms>``
            or a JSON map (``--ending_offsets``).
        start_read_time: as Beam's: epoch milliseconds to start from, the same as
            ``starting_offsets="timestamp:<ms>"``.
        stop_read_time: epoch milliseconds to stop at, the same as
            ``ending_offsets="timestamp:<ms>"``.
        with_metadata: as Beam's: ``False`` yields ``(key, value)`` pairs; ``True`` or
            left out yields :class:`~beam_zdl.KafkaRecord` (key, value, headers, topic,
            partition, offset, timestamp).
        commit_offset_in_finalize: with ``--streaming``, offsets are always committed
            when the runner finalizes a bundle (either value); a bounded read refuses
            ``True`` (it never commits; ``run_micro_batches`` does).
        redistribute: as Beam's: ``True`` spreads the records over workers with a
            ``beam.Reshuffle()`` after the read.
        max_records_per_partition: cap per partition of a bounded read
            (``--max_records_per_partition``).
        fail_on_data_loss: False skips, counts and logs records that no longer exist
            (``--fail_on_data_loss``).
        ranges: the exact offset ranges to read (what a micro-batch planned).
        options: pipeline options to take the other settings from (default: the
            pipeline's). For compatibility it may also be the first positional argument.

    Raises:
        ConfigError: a bad argument or flag, named, when the pipeline is built.
    """

    def __init__(self, consumer_config: Optional[Mapping[str, Any]] = None,
                 topics: Optional[Union[str, Sequence[str]]] = None, *,
                 bootstrap_servers: Optional[str] = None,
                 consumer_group: Optional[str] = None,
                 starting_offsets: Optional[str] = None,
                 ending_offsets: Optional[str] = None,
                 start_read_time: Optional[int] = None,
                 max_records_per_partition: Optional[int] = None,
                 fail_on_data_loss: Optional[bool] = None,
                 ranges: Optional[Iterable[PartitionRange]] = None,
                 options: Optional[PipelineOptions] = None,
                 ranges_input: Optional[RangesInput] = None,
                 stop_read_time: Optional[int] = None,
                 with_metadata: Optional[bool] = None,
                 commit_offset_in_finalize: Optional[bool] = None,
                 redistribute: Optional[bool] = None,
                 **beam_keywords: Any) -> None:
        super().__init__()
        if isinstance(consumer_config, PipelineOptions):  # ReadFromKafka(options, ...)
            consumer_config, options = None, consumer_config
        _check_beam_keywords("ReadFromKafka", beam_keywords, _BEAM_KEYWORDS, _OWN_KEYWORDS)
        for name, value in (("with_metadata", with_metadata), ("redistribute", redistribute),
                            ("commit_offset_in_finalize", commit_offset_in_finalize)):
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"ReadFromKafka({name}=...) must be True or False, got "
                                  f"{value!r}")
        self._options = options
        self._overrides = _overrides("ReadFromKafka", consumer_config, topics, dict(
            bootstrap_servers=bootstrap_servers, consumer_group=consumer_group,
            starting_offsets=_start(starting_offsets, start_read_time),
            ending_offsets=_time_position("ending_offsets", ending_offsets, "stop_read_time",
                                          stop_read_time),
            max_records_per_partition=max_records_per_partition,
            fail_on_data_loss=fail_on_data_loss))
        self._pairs = with_metadata is False
        self._redistribute = bool(redistribute)
        self._commit_in_finalize = commit_offset_in_finalize
        self._ranges = None if ranges is None else [PartitionRange(*r) for r in ranges]
        self._ranges_input = ranges_input or CreateRanges()
        self._config: Optional[ZdlConfig] = None

    @classmethod
    def from_options(cls, options: PipelineOptions, **kwargs: Any) -> "ReadFromKafka":
        """A read configured by the ZdlOptions flags of ``options`` (keywords override)."""
        return cls(options=options, **kwargs)

    def display_data(self) -> dict[str, Any]:
        from beam_zdl.kafka import display_data
        from beam_zdl.secrets import redact
        shown: dict[str, Any] = {}
        given = dict(self._overrides)
        if "consumer_config" in given:
            given["consumer_config"] = json.dumps(redact(given["consumer_config"]),
                                                  sort_keys=True)
        if "topics" in given:
            given["topics"] = ",".join(given["topics"])
        shown.update({k: v if isinstance(v, (str, int, float, bool)) else str(v)
                      for k, v in given.items()})
        if self._config is not None:
            cfg = self._config
            shown.update(display_data(cfg.bootstrap_servers, cfg.consumer_group,
                                      cfg.consumer_config))
            shown.update(topics=",".join(cfg.topics), starting_offsets=cfg.starting_offsets)
            if cfg.ending_offsets:
                shown.update(ending_offsets=cfg.ending_offsets)
        if self._ranges is not None:
            shown.update(ranges=len(self._ranges),
                         planned_records=sum(r.stop - r.start for r in self._ranges))
        return shown

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[KafkaRecord]:
        records = self._read(pbegin)
        if self._redistribute:
            records = records | "Redistribute" >> beam.Reshuffle()
        if self._pairs:  # with_metadata=False, as Beam's: (key, value) pairs
            pairs: Any = records | "KeyValue" >> beam.Map(lambda r: (r.key, r.value))
            return cast("beam.PCollection[KafkaRecord]", pairs)
        return records

    def _read(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[KafkaRecord]:
        options = self._options or pbegin.pipeline.options
        config = self._config = ZdlConfig.from_options(options, overrides=self._overrides,
                                                       source="ReadFromKafka")
        streaming = self._ranges is None and _streaming(options, pbegin)
        if self._ranges is None:
            warn_near_misses(options)
        if self._commit_in_finalize and not streaming:
            raise ConfigError("ReadFromKafka(commit_offset_in_finalize=True): a bounded read "
                              "never commits the group's offsets (nothing tells it that your "
                              "sink made its records durable). Use run_micro_batches, which "
                              "commits after each completed batch, or --streaming, which "
                              "commits when the runner finalizes a bundle")
        if streaming:
            if config.ending_offsets:
                raise ConfigError("ReadFromKafka: ending_offsets (--ending_offsets) bounds a "
                                  "read, but the pipeline is --streaming; drop one of them")
            apply_runner_defaults(pbegin.pipeline.options, pbegin.pipeline.runner)
            flink = is_flink(pbegin.pipeline.options, pbegin.pipeline.runner)
            streamed: beam.PCollection[KafkaRecord] = (
                pbegin | "Stream" >> _read_streaming(config, flink))
            return streamed
        ranges = self._ranges
        if ranges is None:
            ranges = _plan_bounded(config)
            _LOGGER.info("ReadFromKafka planned %d ranges, %d records", len(ranges),
                         sum(r.stop - r.start for r in ranges))
        # Chunks of the initial split, small ones grouped, as elements for the runner to
        # spread over workers.
        groups = group_chunks([c for r in ranges if r.stop > r.start for c in split_range(r)],
                              _workers(pbegin.pipeline.options))
        chunked = self._ranges_input.expand(pbegin, groups)
        read: beam.PCollection[KafkaRecord] = (
            chunked
            | "Read" >> beam.ParDo(ReadOffsetRangesFn(ReadSettings.from_config(config)))
            .with_output_types(Poll)
            | "Records" >> beam.ParDo(UnbatchFn()).with_output_types(KafkaRecord))
        return read


def _workers(options: PipelineOptions) -> int:
    """How many workers the runner may read with at once, when the options say
    (``--direct_num_workers``, Flink's ``--parallelism``), else 1."""
    from apache_beam.options.pipeline_options import DirectOptions, FlinkRunnerOptions
    direct = options.view_as(DirectOptions).direct_num_workers or 0
    flink = options.view_as(FlinkRunnerOptions).parallelism or 0
    return max(1, direct, flink if flink > 0 else 0)


def _plan_bounded(config: ZdlConfig) -> list[PartitionRange]:
    """From ``--starting_offsets`` to ``--ending_offsets`` (default: the end offsets now):
    a fixed, repeatable read."""
    import beam_zdl.kafka as kafka
    kafka.check_brokers(config.bootstrap_servers, config.consumer_config,
                        config.kafka_connect_timeout_s)
    consumer = kafka.new_consumer(config.bootstrap_servers, config.consumer_group,
                                  config.consumer_config)
    try:
        return ranges_.plan(consumer, config)
    finally:
        consumer.close()


def _start(starting_offsets: Optional[str], start_read_time: Optional[int]) -> Optional[str]:
    """``start_read_time`` (Beam's keyword) as a ``timestamp:`` position."""
    return _time_position("starting_offsets", starting_offsets, "start_read_time",
                          start_read_time)


def _time_position(name: str, position: Optional[str], time_name: str,
                   epoch_ms: Optional[int]) -> Optional[str]:
    """A Beam-style epoch-ms keyword (``start_read_time``, ``stop_read_time``) as a
    ``timestamp:`` position, or ``position`` when it is not given."""
    if epoch_ms is None:
        return position
    if position is not None:
        raise ConfigError(f"ReadFromKafka: give {name}= or {time_name}=, not both")
    if not isinstance(epoch_ms, int) or isinstance(epoch_ms, bool) or epoch_ms < 0:
        raise ConfigError(f"ReadFromKafka({time_name}=...) must be epoch milliseconds "
                          f"(an int >= 0), got {epoch_ms!r}")
    return f"timestamp:{epoch_ms}"


def _overrides(source: str, consumer_config: Optional[Mapping[str, Any]],
               topics: Optional[Union[str, Sequence[str]]],
               named: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments as ZdlConfig overrides (by flag name), checked for type."""
    out = {k: v for k, v in named.items() if v is not None}
    if topics is not None:
        if isinstance(topics, str):
            topics = [topics]
        if not isinstance(topics, (list, tuple)) or not all(
                isinstance(t, str) and t for t in topics):
            raise ConfigError(f"{source}(topics=...) must be a topic name or a list of topic "
                              f"names, got {topics!r}")
        out["topics"] = list(topics)
    if consumer_config is not None:
        if not isinstance(consumer_config, Mapping):
            raise ConfigError(f"{source}(consumer_config=...) must be a dict of confluent-kafka "
                              f"settings, got {type(consumer_config).__name__}")
        from beam_zdl.config import map_client_keys
        named_flags = {k: v for k, v in out.items() if k != "consumer_config"}
        config, mapped = map_client_keys(consumer_config, named_flags,
                                         f"{source}(consumer_config=...)", explicit=True)
        out.update(mapped)
        out["consumer_config"] = config
    for name in ("max_records_per_partition",):
        if name in out and (not isinstance(out[name], int) or isinstance(out[name], bool)):
            raise ConfigError(f"{source}({name}=...) must be an int, got {out[name]!r}")
    if "fail_on_data_loss" in out and not isinstance(out["fail_on_data_loss"], bool):
        raise ConfigError(f"{source}(fail_on_data_loss=...) must be True or False, got "
                          f"{out['fail_on_data_loss']!r}")
    return out


def _streaming(options: PipelineOptions, pbegin: beam.pvalue.PBegin) -> bool:
    """--streaming on the transform's options or the pipeline's."""
    from apache_beam.options.pipeline_options import StandardOptions
    return any(o is not None and o.view_as(StandardOptions).streaming
               for o in (options, pbegin.pipeline.options))


def _read_streaming(
        config: ZdlConfig, flink: bool = False,
) -> beam.PTransform[beam.pvalue.PBegin, beam.PCollection[KafkaRecord]]:
    """The unbounded read (see beam_zdl.streaming); checks the topics exist first.

    On Flink it self-checkpoints less often (``FLINK_TIMING``): every
    self-checkpoint leaves state behind in Flink's Beam runner.
    """
    import beam_zdl.kafka as kafka
    from beam_zdl.streaming import FLINK_TIMING, ReadStreaming, StreamSettings
    if config.kafka_connect_timeout_s > 0:  # 0: a launcher that cannot reach the brokers
        kafka.check_brokers(config.bootstrap_servers, config.consumer_config,
                            config.kafka_connect_timeout_s)
        consumer = kafka.new_consumer(config.bootstrap_servers, config.consumer_group,
                                      config.consumer_config)
        try:
            kafka.partitions_of(consumer, config.topics, config.bootstrap_servers)
        finally:
            consumer.close()
    return ReadStreaming(config.topics, StreamSettings.from_config(
        config, starting_offsets=config.starting_offsets,
        discovery_interval_s=config.partition_discovery_interval_s,
        idle_watermark_delay_s=config.idle_watermark_delay_s,
        **(FLINK_TIMING if flink else {})))


# --- WAL mode --------------------------------------------------------------------------------

class ReadFromWal(beam.PTransform[beam.pvalue.PBegin, beam.PCollection[KafkaRecord]]):
    """Reads sealed WAL segments as :class:`~beam_zdl.KafkaRecord`, segments in parallel.

    Yields exactly the records direct mode would have read for the same offsets,
    each with its Kafka timestamp as the element timestamp. Every frame is
    verified: a damaged one raises :class:`~beam_zdl.WalCorruptionError` naming
    segment and byte, or with ``fail_on_data_loss=False`` is skipped, logged
    and counted (``beam_zdl/wal_lost_frames``, ``beam_zdl/data_loss_records``).

    Args:
        wal_dir: a WAL directory URI whose segments are listed when the pipeline is
            built (to replay a WAL), or one segment URI. For compatibility a list of
            segment URIs (or ``SegmentRef``s) is taken here too.
        segments: the exact segment URIs (or ``SegmentRef``s) to read.
        fail_on_data_loss: default ``--fail_on_data_loss`` of ``options``.
        end_offsets: ``{(topic, partition): end offset}`` to report lag against in the
            ``beam_zdl/lag/<topic>/<partition>`` gauges (the micro-batch driver passes
            the end offsets it planned against); without it no lag is reported.
        options: options holding the flags (default: the pipeline's).

    Raises:
        ConfigError: neither or both of ``wal_dir`` and ``segments`` given.
    """

    def __init__(self, wal_dir: Optional[Union[str, Sequence[Any]]] = None, *,
                 segments: Optional[Sequence[Any]] = None,
                 fail_on_data_loss: Optional[bool] = None,
                 end_offsets: Optional[Mapping[tuple[str, int], int]] = None,
                 options: Optional[PipelineOptions] = None) -> None:
        super().__init__()
        if wal_dir is not None and not isinstance(wal_dir, str):
            wal_dir, segments = None, wal_dir  # ReadFromWal([segment, ...])
        if (wal_dir is None) == (segments is None):
            raise ConfigError("ReadFromWal needs exactly one of wal_dir= (a WAL directory or "
                              "segment URI) and segments= (segment URIs)")
        self._wal_dir = wal_dir
        self._uris = None if segments is None else [getattr(s, "uri", s) for s in segments]
        self._fail_on_data_loss = fail_on_data_loss
        self._end_offsets = dict(end_offsets or {})
        self._options = options

    @classmethod
    def from_options(cls, options: PipelineOptions, **kwargs: Any) -> "ReadFromWal":
        """Replays ``--wal_dir`` of ``options`` (keywords override)."""
        from beam_zdl.options import ZdlOptions
        wal_dir = kwargs.pop("wal_dir", None) or options.view_as(ZdlOptions).wal_dir
        if not wal_dir and "segments" not in kwargs:
            raise ConfigError("ReadFromWal.from_options needs --wal_dir")
        return cls(wal_dir=wal_dir if "segments" not in kwargs else None, options=options,
                   **kwargs)

    def display_data(self) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        if self._wal_dir is not None:
            shown["wal_dir"] = self._wal_dir
        if self._uris is not None:
            shown["segments"] = len(self._uris)
        return shown

    def _segment_uris(self) -> list[str]:
        if self._uris is not None:
            return self._uris
        from beam_zdl.wal import list_segments, parse_segment_name
        assert self._wal_dir is not None  # __init__ keeps exactly one of wal_dir and segments
        if parse_segment_name(self._wal_dir):
            return [self._wal_dir]
        uris = [s.uri for s in list_segments(self._wal_dir)]
        _LOGGER.info("ReadFromWal: %d segments in %s", len(uris), self._wal_dir)
        return uris

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[KafkaRecord]:
        from beam_zdl.options import ZdlOptions
        options = self._options or pbegin.pipeline.options
        fail = self._fail_on_data_loss
        if fail is None:
            fail = options.view_as(ZdlOptions).fail_on_data_loss
        uris = self._uris = self._segment_uris()
        segments = pbegin | "Segments" >> beam.Create(uris, reshuffle=False)
        if len(uris) > 1:
            segments = segments | "Spread" >> beam.Reshuffle()
        read: beam.PCollection[KafkaRecord] = (
            segments
            | "ReadSegments" >> beam.ParDo(ReadSegmentsFn(fail, self._end_offsets))
            .with_output_types(KafkaRecord))
        return read
