"""Public PTransforms: ReadFromKafka (direct mode) and ReadFromWal (WAL mode).

Inside :func:`beam_zdl.run_micro_batches` the driver hands ``ReadFromKafka``
the batch's planned ranges. Used on its own in a bounded pipeline it plans
ranges when the pipeline is built: from ``--starting_offsets`` to ``--ending_offsets``
(default: the end offsets seen
then, so the pipeline reads a fixed, repeatable set of records.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

import beam_zdl.ranges as ranges_
from beam_zdl.direct import Poll, ReadOffsetRangesFn, ReadSettings, UnbatchFn, split_range
from beam_zdl.errors import ConfigError, ZdlError
from beam_zdl.options import ZdlConfig
from beam_zdl.ranges import PartitionRange
from beam_zdl.records import KafkaRecord
from beam_zdl.runners import apply_runner_defaults, is_flink
from beam_zdl.wal_read import ReadSegmentsFn
from beam_zdl.worker_pool import PayloadImpulse, feeds_payload_impulses

__all__ = ["ReadFromKafka", "ReadFromWal"]

_LOGGER = logging.getLogger(__name__)


# What Beam's own ReadFromKafka takes inside consumer_config, mapped to our settings.
# auto.offset.reset=earliest means "committed, else earliest" (our `committed`);
# latest maps to `latest` (from the end even where the group has committed offsets).
_BEAM_STYLE_KEYS = {"bootstrap.servers": "bootstrap_servers", "group.id": "consumer_group",
                    "auto.offset.reset": "starting_offsets"}


class ReadFromKafka(beam.PTransform[beam.pvalue.PBegin, beam.PCollection[KafkaRecord]]):
    """Reads Kafka records as :class:`~beam_zdl.KafkaRecord`, exactly the planned ranges.

    Takes keyword arguments like Beam's own ``apache_beam.io.kafka.ReadFromKafka``
    (``consumer_config`` may hold ``bootstrap.servers``, ``group.id`` and
    ``auto.offset.reset``, as there), and any argument left out comes from the
    ZdlOptions flags of ``options`` or of the pipeline. :meth:`from_options` reads
    everything from flags. All Kafka I/O happens in ``expand``.

    Without ``ranges``, a bounded pipeline reads from ``starting_offsets`` to
    ``ending_offsets`` (default: the end offsets seen when the pipeline is built), so
    it reads a fixed, repeatable set of records; with ``--streaming`` the read is
    unbounded (see :mod:`beam_zdl.streaming`).

    Args:
        consumer_config: confluent-kafka settings (``--consumer_config``); secrets may
            be ``${env:NAME}`` / ``${file:PATH}`` references.
        topics: a topic or a list of topics (``--topics``).
        bootstrap_servers: ``host:port,...`` (``--bootstrap_servers``).
        consumer_group: the group whose offsets are read and committed
            (``--consumer_group``).
        starting_offsets: ``earliest``, ``latest``, ``committed``, ``timestamp:<epoch ms>``
            or a JSON map of exact offsets (``--starting_offsets``; see
            :mod:`beam_zdl.positions`).
        ending_offsets: where a bounded read stops: ``latest``, ``timestamp:<epoch ms>``
            or a JSON map (``--ending_offsets``).
        start_read_time: as Beam's: epoch milliseconds to start from, the same as
            ``starting_offsets="timestamp:<ms>"``.
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
                 options: Optional[PipelineOptions] = None) -> None:
        super().__init__()
        if isinstance(consumer_config, PipelineOptions):  # ReadFromKafka(options, ...)
            consumer_config, options = None, consumer_config
        self._options = options
        self._overrides = _overrides("ReadFromKafka", consumer_config, topics, dict(
            bootstrap_servers=bootstrap_servers, consumer_group=consumer_group,
            starting_offsets=_start(starting_offsets, start_read_time),
            ending_offsets=ending_offsets,
            max_records_per_partition=max_records_per_partition,
            fail_on_data_loss=fail_on_data_loss))
        self._ranges = None if ranges is None else [PartitionRange(*r) for r in ranges]
        self._config: Optional[ZdlConfig] = None

    @classmethod
    def from_options(cls, options: PipelineOptions, **kwargs: Any) -> "ReadFromKafka":
        """A read configured by the ZdlOptions flags of ``options`` (keywords override)."""
        return cls(options=options, **kwargs)

    def display_data(self) -> dict[str, Any]:
        from beam_zdl.kafka import display_data
        shown: dict[str, Any] = {}
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
        options = self._options or pbegin.pipeline.options
        config = self._config = ZdlConfig.from_options(options, overrides=self._overrides,
                                                       source="ReadFromKafka")
        if self._ranges is None and _streaming(options, pbegin):
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
        # Chunks of the initial split as elements, spread by a shuffle: a runner then hands
        # them to all its workers (one Create element would keep them on one).
        chunks = [c for r in ranges if r.stop > r.start for c in split_range(r)]
        chunked: beam.PCollection[PartitionRange]
        if feeds_payload_impulses(pbegin.pipeline.runner):
            # The run's warm runner hands them to the stage as data: the stage is then the
            # same in every batch, and its bundle processors are reused (worker_pool).
            chunked = (pbegin | "Ranges" >> PayloadImpulse(_encode_chunks(chunks))
                       | "Chunks" >> beam.FlatMap(_decode_chunks)
                       .with_output_types(PartitionRange))
        else:
            chunked = pbegin | "Ranges" >> beam.Create(chunks, reshuffle=False)
        if len(chunks) > 1 and not _splits_sdf_input(pbegin.pipeline.runner):
            chunked = chunked | "Spread" >> beam.Reshuffle()
        read: beam.PCollection[KafkaRecord] = (
            chunked
            | "Read" >> beam.ParDo(ReadOffsetRangesFn(ReadSettings.from_config(config)))
            .with_output_types(Poll)
            | "Records" >> beam.ParDo(UnbatchFn()).with_output_types(KafkaRecord))
        return read


_CHUNKS_FORMAT = 1


def _encode_chunks(chunks: list[PartitionRange]) -> bytes:
    """The ranges of a read as the payload of its PayloadImpulse (see :func:`_decode_chunks`)."""
    return json.dumps([_CHUNKS_FORMAT, [list(c) for c in chunks]]).encode()


def _decode_chunks(payload: bytes) -> list[PartitionRange]:
    """The ranges :func:`_encode_chunks` encoded.

    Raises:
        ZdlError: the runner did not hand the read its ranges (an empty payload): reading
            nothing would lose a batch, so the batch fails and is replayed.
    """
    if not payload:
        raise ZdlError("ReadFromKafka: the runner did not hand this read its ranges (an empty "
                       "Impulse element): only beam_zdl's warm runner does; the batch fails "
                       "and is replayed from its recorded plan. Please report this as a bug.")
    version, chunks = json.loads(payload)
    if version != _CHUNKS_FORMAT:
        raise ZdlError(f"ReadFromKafka: ranges of format {version}, this version reads "
                       f"{_CHUNKS_FORMAT}: driver and workers run different beam_zdl versions")
    return [PartitionRange(str(t), int(p), int(a), int(b)) for t, p, a, b in chunks]


def _plan_bounded(config: ZdlConfig) -> list[PartitionRange]:
    """From ``--starting_offsets`` to ``--ending_offsets`` (default: the end offsets now):
    a fixed, repeatable read."""
    import beam_zdl.kafka as kafka
    consumer = kafka.new_consumer(config.bootstrap_servers, config.consumer_group,
                                  config.consumer_config)
    try:
        return ranges_.plan(consumer, config)
    finally:
        consumer.close()


def _start(starting_offsets: Optional[str], start_read_time: Optional[int]) -> Optional[str]:
    """``start_read_time`` (Beam's keyword) as a ``timestamp:`` position."""
    if start_read_time is None:
        return starting_offsets
    if starting_offsets is not None:
        raise ConfigError("ReadFromKafka: give starting_offsets= or start_read_time=, not both")
    if not isinstance(start_read_time, int) or isinstance(start_read_time, bool) \
            or start_read_time < 0:
        raise ConfigError("ReadFromKafka(start_read_time=...) must be epoch milliseconds "
                          f"(an int >= 0), got {start_read_time!r}")
    return f"timestamp:{start_read_time}"


def _splits_sdf_input(runner: Any) -> bool:
    """Whether ``runner`` spreads a splittable DoFn's input over its workers by itself.

    The FnApiRunner runs an SDF's processing in a stage of its own, fed by the runner,
    and hands each worker a share of that stage's input: a Reshuffle before it would
    only add a stage (about 0.1 s per batch, a batch's largest fixed cost after pipeline
    construction).
    """
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    return isinstance(runner, FnApiRunner)


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
        config = dict(consumer_config)
        for key, name in _BEAM_STYLE_KEYS.items():
            if key in config:
                value = config.pop(key)
                if key == "auto.offset.reset" and value in ("earliest", "smallest",
                                                            "beginning"):
                    # Kafka's meaning: the committed offset, else the log start.
                    value = "committed"
                if name in out and out[name] != value:
                    raise ConfigError(f"{source}: consumer_config[{key!r}] and {name}= "
                                      "disagree; give one of them")
                out[name] = value
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
