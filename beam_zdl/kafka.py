"""Kafka access for beam_zdl: consumers, watermarks, committed offsets, commits.

All confluent-kafka use goes through here, so that every consumer gets the
settings beam_zdl relies on (``enable.auto.commit=false``: the checkpoint,
not Kafka, owns progress; ``auto.offset.reset=error``: a position below the
log start is data loss to report, never a silent jump) and so that an
unreachable cluster is reported with the ``--bootstrap_servers`` used.

Guarded settings
    A user's client settings (``--consumer_config``, ``consumer_config=``,
    ``producer_config=``) may not weaken a guarantee. :data:`GUARDED_CONSUMER`
    and :data:`GUARDED_PRODUCER` list the keys a guarantee depends on; each is
    either accepted with beam_zdl's own value (a no-op), mapped to the
    beam_zdl flag that means the same (``auto.offset.reset=earliest`` →
    ``--starting_offsets=committed``, ``group.id`` → ``--consumer_group``,
    ``bootstrap.servers`` → ``--bootstrap_servers``, done by
    :mod:`beam_zdl.config`), or refused with a :class:`ConfigError` naming the
    key, why, and what to use instead. :func:`consumer_settings` and
    :func:`producer_settings` apply the rule again where clients are made, so
    no path around the flags gets a client with a weaker setting.

Failing fast
    :func:`check_brokers` asks the cluster for metadata within
    ``--kafka_connect_timeout_s`` at every entry point, and fails naming the
    servers (and whether they were the default) and librdkafka's reason.
    librdkafka's own log lines go through Python logging (logger
    ``beam_zdl.kafka.librdkafka``), with repeats of a line rate-limited.

confluent_kafka is imported inside functions: a DoFn that captured one of its
types at module import of a ``__main__`` script would not pickle.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, TypeVar

from beam_zdl.errors import ConfigError, DataLossError, KafkaUnavailableError, TopicNotFoundError
from beam_zdl.secrets import is_secret, redact, resolve

__all__ = [
    "KafkaSettings",
    "BOUNDED_READER_CONFIG",
    "GUARDED_CONSUMER",
    "GUARDED_PRODUCER",
    "CONNECT_TIMEOUT_S",
    "DEFAULT_BOOTSTRAP_SERVERS",
    "check_consumer_config",
    "check_producer_config",
    "producer_settings",
    "connection_settings",
    "new_admin",
    "check_brokers",
    "unreachable_error",
    "check_gap",
    "serve_events",
    "OUT_OF_RANGE_CODES",
    "is_out_of_range",
    "committed",
    "lost_offsets",
    "consumer_settings",
    "new_consumer",
    "partitions_of",
    "topic_partitions",
    "watermarks",
    "end_offsets",
    "committed_offsets",
    "commit_offsets",
    "offsets_for_time",
    "group_holders",
    "display_data",
]

_LOGGER = logging.getLogger(__name__)

_METADATA_TIMEOUT_S = 30.0
# The settings of a reader of exact offset ranges (beam_zdl.direct; bench.peers'
# bare_consumer_tuned).
# A bounded reader never waits for new data: a fetch that long-polls at a range's end
# (librdkafka's default is 500 ms) holds back the next range's first fetch on the
# same broker connection. Even 10 ms made a small range cost 18 ms from assign to its
# last record (local broker, 25 records), against 4 ms with 1 ms: a batch of small ranges
# waited on it more than on anything else. A fetch with records to return is answered at
# once either way (reading 400k records: the same rate and CPU).
# librdkafka (2.x) postpones a partition's next fetch by fetch.queue.backoff.ms (default
# 1 s) once its prefetch queue is over queued.min.messages (100k records, a few MB of
# small records), which made a single-partition read stall several times per range
# (measured: 5 us/record against 0.6 with 5 ms). Reading one range at a time needs no
# deep prefetch either: 1 MB fetches into an 8 MB queue (2,000-record polls) read as
# fast as 8 MB fetches into 64 MB (10,000-record polls) and took a reading worker's
# peak RSS from +95 MB over its imports to +50 MB (one worker reading 2 x 250k).
# 512 KB fetches into a 2 MB queue read as fast again (bare consume loop, 2 x 250k records
# of 100 B, 3 interleaved rounds: 0.93M records/s against 0.80M) and the consumer's share
# of the read fell from +30 MB to +7 MB (bench/scale.py, issue 27).
# Direct mode reads small ranges in groups, many partitions assigned at once; a fetch
# response then carried up to 512 KB of each (new_consumer's fetch.max.bytes is 64 MB):
# a bare loop over 256 partitions peaked at 152-187 MB. With fetch.max.bytes at
# 2 MB it peaked at 70 MB and read faster (1.0-1.6M records/s against 0.47-0.58M, 1M
# records of 100 B, 2 rounds). A record batch larger than that is still returned whole.
# In a whole run with 2 workers (the driver and one worker process, 1M records, 3
# interleaved rounds), fetches of up to 64 MB made each process peak
# ~70 MB higher at 256 partitions than at 4 (tree 561 MB against 426); with 2 MB, 439 MB
# against 425.
BOUNDED_READER_CONFIG: dict[str, object] = {
    "fetch.wait.max.ms": 1, "fetch.queue.backoff.ms": 5,
    "max.partition.fetch.bytes": 512 * 1024, "queued.max.messages.kbytes": 2 * 1024,
    "fetch.max.bytes": 2 * 1024 * 1024}

# What consume() reports for a position outside the log. With auto.offset.reset=error,
# librdkafka gives KafkaError._AUTO_OFFSET_RESET (-140); the broker's
# OFFSET_OUT_OF_RANGE (1) is kept for safety. (There is no KafkaError._OFFSET_OUT_OF_RANGE.)
OUT_OF_RANGE_CODES = (-140, 1)

# COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR: the group
# coordinator is starting or moving; asking again shortly succeeds.
_COORDINATOR_MOVING = (14, 15, 16)


# Beam registers --bootstrap_servers (KafkaStreamsRunnerOptions) with this default.
DEFAULT_BOOTSTRAP_SERVERS = "localhost:9092"
# How long an entry point waits for a first metadata answer (--kafka_connect_timeout_s).
CONNECT_TIMEOUT_S = 15.0

# Client settings every client needs to reach the same cluster (security, networking);
# consumer- or producer-only settings would only draw librdkafka warnings elsewhere.
_CONNECTION_PREFIXES = ("security.", "sasl.", "ssl.", "socket.", "client.", "broker.", "api.")

# Consumer settings a guarantee depends on: key -> (beam_zdl's value(s), why, what to use).
# A value equal to beam_zdl's is accepted (it changes nothing); auto.offset.reset=earliest,
# group.id and bootstrap.servers are mapped to flags by beam_zdl.config before this check.
GUARDED_CONSUMER: dict[str, tuple[tuple[object, ...], str, str]] = {
    "auto.offset.reset": (
        ("error", "none"),
        "beam_zdl starts where its checkpoint says, else at --starting_offsets; a reset "
        "would turn records removed by retention into a silent skip (contract 5)",
        "--starting_offsets=committed (Kafka's 'earliest': the committed offset, else the "
        "log start), --starting_offsets=latest or --starting_offsets=earliest"),
    "isolation.level": (
        ("read_committed",),
        "batches end at the last stable offset and must never hold records of aborted "
        "or open transactions",
        "nothing: beam_zdl reads committed records only"),
    "enable.auto.commit": (
        (False, "false"),
        "the checkpoint owns progress: offsets are committed only after a batch is durable "
        "(contract 1)", "nothing: beam_zdl commits --consumer_group's offsets itself"),
    "enable.auto.offset.store": (
        (False, "false"),
        "offsets are stored only when beam_zdl commits them",
        "nothing: beam_zdl commits --consumer_group's offsets itself"),
    "enable.partition.eof": (
        (False, "false"),
        "the readers decide where a partition ends from the planned offsets",
        "--ending_offsets, or --trigger=available_now to stop at the end"),
    "group.id": ((), "beam_zdl commits this group's offsets", "--consumer_group"),
    "bootstrap.servers": ((), "beam_zdl names the brokers in its errors",
                          "--bootstrap_servers"),
}

# Producer settings of WriteToKafka a guarantee depends on.
GUARDED_PRODUCER: dict[str, tuple[tuple[object, ...], str, str]] = {
    "transactional.id": (
        (), "exactly-once output uses one fixed transactional.id per shard, derived from "
        "sink_id, to fence zombie writers", "WriteToKafka(sink_id=...)"),
    "enable.idempotence": (
        (True, "true"), "without idempotence a retried send can write a record twice",
        "nothing: beam_zdl's producers are idempotent"),
    "acks": (
        ("all", "-1", -1), "a record acknowledged by fewer than all in-sync replicas can be "
        "lost when the leader fails", "nothing: beam_zdl's producers use acks=all"),
}


def _same(value: object, allowed: tuple[object, ...]) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in [str(a).lower() for a in allowed]
    return value in allowed


def _check_guarded(config: Mapping[str, object], table: Mapping[str, tuple[tuple[object, ...],
                   str, str]], source: str) -> dict[str, Any]:
    out = dict(config)
    for key, (ours, why, instead) in table.items():
        if key not in out:
            continue
        if ours and _same(out[key], ours):
            del out[key]  # beam_zdl's own value: nothing to do
            continue
        shown = "<redacted>" if is_secret(key) else repr(out[key])
        raise ConfigError(f"{source} may not set {key!r} (given {shown}): {why}. "
                          f"Use {instead}")
    return out


def check_consumer_config(config: Mapping[str, object],
                          source: str = "--consumer_config") -> dict[str, Any]:
    """``config`` without the guarded keys that hold beam_zdl's own values.

    Raises:
        ConfigError: a key of :data:`GUARDED_CONSUMER` with another value, naming the
            key, ``source``, why, and the flag to use instead.
    """
    return _check_guarded(config, GUARDED_CONSUMER, source)


def check_producer_config(config: Mapping[str, object],
                          source: str = "WriteToKafka(producer_config=...)") -> dict[str, Any]:
    """Like :func:`check_consumer_config`, for :data:`GUARDED_PRODUCER`."""
    return _check_guarded(config, GUARDED_PRODUCER, source)


class _RepeatFilter(logging.Filter):
    """Lets the first of a run of alike lines through, then one per ``every_s`` with the
    count of those held back: librdkafka repeats a failed connect many times a second."""

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # Alike: the same text but for numbers (client ids, "after 0ms", ports stay).
        key = re.sub(r"#\w+-\d+|\d+ms", "", record.getMessage())
        now = time.monotonic()
        first, held = self._seen.get(key, (0.0, 0))
        if now - first < self.every_s:
            self._seen[key] = (first, held + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} (and {held} alike in the last " \
                         f"{self.every_s:.0f} s)"
            record.args = ()
        return True


_LIBRDKAFKA_LOGGER = logging.getLogger("beam_zdl.kafka.librdkafka")
_LIBRDKAFKA_LOGGER.addFilter(_RepeatFilter())


def connection_settings(bootstrap_servers: str,
                        extra: Mapping[str, object] | None = None) -> dict[str, Any]:
    """What every client needs to reach the cluster: the brokers, the security and
    network settings of ``extra`` (resolved), and logging through Python."""
    settings: dict[str, Any] = {"bootstrap.servers": bootstrap_servers,
                                "logger": _LIBRDKAFKA_LOGGER}
    settings.update(resolve({k: v for k, v in (extra or {}).items()
                             if k.startswith(_CONNECTION_PREFIXES)}))
    return settings


def producer_settings(bootstrap_servers: str, extra: Mapping[str, object] | None = None,
                      **ours: Any) -> dict[str, Any]:
    """The settings of a beam_zdl producer: ``extra`` (checked, resolved), then ``ours``."""
    checked = check_producer_config(extra or {})
    return {"bootstrap.servers": bootstrap_servers, "logger": _LIBRDKAFKA_LOGGER,
            "acks": "all", "enable.idempotence": True, **resolve(checked), **ours}


def new_admin(bootstrap_servers: str,
              extra: Mapping[str, object] | None = None) -> tuple[Any, list[str]]:
    """An AdminClient and the list librdkafka's errors are appended to (for messages).

    Keep the client referenced until its futures resolve (see DESIGN.md).
    """
    from confluent_kafka.admin import AdminClient
    reasons: list[str] = []
    settings = connection_settings(bootstrap_servers, extra)
    settings["error_cb"] = lambda err: reasons.append(err.str())
    return AdminClient(settings), reasons


def unreachable_error(bootstrap_servers: str, timeout_s: float, reasons: list[str],
                      cause: object = None, flag: str = "--bootstrap_servers",
                      timeout_flag: str = "--kafka_connect_timeout_s",
                      default: str | None = DEFAULT_BOOTSTRAP_SERVERS) -> KafkaUnavailableError:
    """The error of an entry point that got no answer from the cluster in time.

    ``default`` is the servers' value when nobody gave one (named as such), or None."""
    said = [re.sub(r" \(after \d+ms in state \w+\)", "", r) for r in reasons]
    specific = [r for r in said if "brokers are down" not in r]
    reason = (specific or said or [str(cause or "no answer")])[-1]
    default = (f" (the default of {flag}; pass {flag}=host:port)"
               if default is not None and bootstrap_servers.strip() == default else "")
    return KafkaUnavailableError(
        f"Kafka did not answer at {flag}={bootstrap_servers}{default} within "
        f"{timeout_s:g} s: {reason}. Check the host names and ports, that the brokers run, "
        "and that they are reachable from here (firewall, VPC, security settings in the "
        f"client config). A launcher that cannot reach the brokers (Dataflow submitting from "
        f"outside their network) can skip this check with {timeout_flag}=0.")


def check_brokers(bootstrap_servers: str, extra: Mapping[str, object] | None = None,
                  timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within ``timeout_s`` when no broker of ``bootstrap_servers`` answers.

    ``timeout_s`` <= 0 skips the check.

    Raises:
        KafkaUnavailableError: naming the servers (and that they are the default, when
            they are), librdkafka's reason and what to check.
    """
    if timeout_s <= 0:
        return
    from confluent_kafka import KafkaException
    admin, reasons = new_admin(bootstrap_servers, extra)
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        admin.poll(0)  # serves the error callbacks: the reason
        raise unreachable_error(bootstrap_servers, timeout_s, reasons, exc.args[0]) from exc
    finally:
        del admin


def serve_events(consumer: Any) -> None:
    """Serve the queued log lines and errors of a consumer that is never assigned (the
    driver's: it only asks for offsets and commits), so they do not pile up.

    Not for a consumer that reads: ``poll`` would take a record. Its assignment is not
    asked here: that waits for the group thread, busy while a commit runs beside the
    next batch (~15 ms per batch at 256 partitions)."""
    consumer.poll(0)


def check_gap(consumer: Any, topic: str, partition: int, expected: int, got: int,
              fail_on_data_loss: bool) -> int:
    """A read asked for ``expected`` and its next record is at ``got`` > ``expected``:
    raise or count the offsets of the gap below the partition's log start.

    A gap above the log start is compaction, transaction markers or aborted records,
    and is fine; below it, retention or truncation removed records (whatever reset
    the position past them). The log start comes from the last fetch response
    (no broker round trip), or is asked of the broker when it is not known yet.

    Returns:
        How many offsets were lost (0 for a harmless gap), after logging them.

    Raises:
        DataLossError: lost offsets, unless ``fail_on_data_loss`` is False.
    """
    from confluent_kafka import TopicPartition
    tp = TopicPartition(topic, partition)
    low = consumer.get_watermark_offsets(tp, cached=True)[0]
    if low < 0:
        low = consumer.get_watermark_offsets(tp, timeout=_METADATA_TIMEOUT_S, cached=False)[0]
    if low <= expected:
        return 0
    return lost_offsets(topic, partition, expected, min(low, got), fail_on_data_loss)


def consumer_settings(bootstrap_servers: str, group: str,
                      extra: Mapping[str, object] | None = None) -> dict[str, Any]:
    """The confluent-kafka settings of every beam_zdl consumer.

    ``${env:NAME}`` / ``${file:PATH}`` values in ``extra`` are resolved here, where
    the client is created (see :mod:`beam_zdl.secrets`).

    Raises:
        ConfigError: ``extra`` sets a guarded key (:data:`GUARDED_CONSUMER`) to a value
            that would weaken a guarantee.
    """
    extra = check_consumer_config(extra or {})
    settings: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "queued.max.messages.kbytes": 64 * 1024,
        "logger": _LIBRDKAFKA_LOGGER,
    }
    settings.update(resolve(extra))
    return settings


def display_data(bootstrap_servers: str, group: str,
                 extra: Mapping[str, object] | None = None) -> dict[str, str]:
    """What a transform or DoFn shows of its Kafka client in a runner's UI (secrets redacted)."""
    return {"bootstrap_servers": bootstrap_servers, "consumer_group": group,
            "consumer_config": json.dumps(redact(extra or {}), sort_keys=True)}


def new_consumer(bootstrap_servers: str, group: str,
                 extra: Mapping[str, object] | None = None) -> Any:
    """A confluent-kafka Consumer with beam_zdl's settings."""
    from confluent_kafka import Consumer
    return Consumer(consumer_settings(bootstrap_servers, group, extra))


_Settings = TypeVar("_Settings", bound="KafkaSettings")


@dataclass(frozen=True)
class KafkaSettings:
    """What every reading worker needs of Kafka: where it is, as whom, how strict.

    The readers' settings (``direct.ReadSettings``, ``streaming.StreamSettings``)
    extend it with what only they need.
    """
    bootstrap_servers: str
    consumer_group: str
    consumer_config: dict[str, Any] = field(default_factory=dict, repr=False)  # secrets
    fail_on_data_loss: bool = True

    @classmethod
    def from_config(cls: type[_Settings], config: Any, **extra: Any) -> _Settings:
        """The settings of a validated :class:`~beam_zdl.config.ZdlConfig` (not imported:
        config imports this module), plus the subclass's ``extra`` fields."""
        return cls(bootstrap_servers=config.bootstrap_servers,
                   consumer_group=config.consumer_group,
                   consumer_config=dict(config.consumer_config),
                   fail_on_data_loss=config.fail_on_data_loss, **extra)

    def consumer(self, overrides: Mapping[str, object] | None = None) -> Any:
        """A consumer with these settings; ``overrides`` yield to the user's config."""
        return new_consumer(self.bootstrap_servers, self.consumer_group,
                            {**(overrides or {}), **self.consumer_config})

    def display_data(self) -> dict[str, Any]:
        return {**display_data(self.bootstrap_servers, self.consumer_group,
                               self.consumer_config),
                "fail_on_data_loss": self.fail_on_data_loss}

    def key(self) -> str:
        """Equal for settings that may share a client (the secrets resolve the same)."""
        return json.dumps([self.bootstrap_servers, self.consumer_group, self.consumer_config],
                          sort_keys=True)


def partitions_of(consumer: Any, topics: Iterable[str],
                  bootstrap_servers: str) -> list[tuple[str, int]]:
    """Every (topic, partition) of ``topics``; a clear error for a missing topic."""
    from confluent_kafka import KafkaException
    out: list[tuple[str, int]] = []
    for topic in topics:
        try:
            partitions = topic_partitions(consumer, topic, _METADATA_TIMEOUT_S,
                                          f"--bootstrap_servers={bootstrap_servers}",
                                          "create it or fix --topics")
        except KafkaException as exc:
            raise KafkaUnavailableError(
                f"could not read metadata of topic {topic!r} from --bootstrap_servers="
                f"{bootstrap_servers} within {_METADATA_TIMEOUT_S:.0f} s ({exc.args[0]}); "
                "check that the brokers are reachable from here") from exc
        out.extend((topic, p) for p in partitions)
    return out


def topic_partitions(client: Any, topic: str, timeout_s: float, where: str,
                     what_to_do: str) -> list[int]:
    """The partition numbers of ``topic`` from a consumer's or an admin client's metadata.

    The one existence check of readers and sink: a missing topic, one with a metadata
    error or with no partitions raises ``TopicNotFoundError`` naming the topic, ``where``
    (the brokers) and ``what_to_do``. A metadata request that times out raises
    confluent-kafka's ``KafkaException``: each caller says what was unreachable its way.
    """
    info = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        reason = info.error if info is not None and info.error else "no partitions"
        raise TopicNotFoundError(
            f"topic {topic!r} does not exist or is not accessible on {where} ({reason}); "
            f"{what_to_do}")
    return sorted(info.partitions)


def watermarks(consumer: Any, partitions: Iterable[tuple[str, int]],
               bootstrap_servers: str) -> dict[tuple[str, int], tuple[int, int]]:
    """(log start offset, end offset) of each partition, asked of the broker.

    The end offset is the last stable offset for this read_committed consumer,
    so a batch never plans over an open transaction.

    Two ListOffsets lookups for all partitions (Kafka's timestamps -2 "earliest" and
    -1 "latest"), one request per broker each: asking partition by partition
    (``get_watermark_offsets``) costs a round trip per partition, 0.3-0.5 s a plan
    at 256 partitions (bench/scale.py).
    """
    from confluent_kafka import KafkaException, TopicPartition
    tps = list(partitions)
    if not tps:
        return {}
    found = []
    for spec in (-2, -1):
        try:
            answer = consumer.offsets_for_times([TopicPartition(t, p, spec) for t, p in tps],
                                                timeout=_METADATA_TIMEOUT_S)
        except KafkaException as exc:
            raise KafkaUnavailableError(
                f"could not read the offsets of {len(tps)} partitions of "
                f"{sorted({t for t, _ in tps})} from --bootstrap_servers={bootstrap_servers} "
                f"({exc.args[0]})") from exc
        failed = [tp for tp in answer if tp.error is not None or tp.offset < 0]
        if failed:
            raise KafkaUnavailableError(
                "could not read offsets of " + ", ".join(
                    f"{tp.topic}[{tp.partition}] ({tp.error or f'offset {tp.offset}'})"
                    for tp in failed[:5]) + f" from --bootstrap_servers={bootstrap_servers}")
        found.append({(tp.topic, tp.partition): tp.offset for tp in answer})
    low, high = found
    return {tp: (low[tp], high[tp]) for tp in tps}


def end_offsets(consumer: Any, topics: Iterable[str],
                bootstrap_servers: str) -> dict[tuple[str, int], int]:
    """The end offset (last stable offset) of every partition of ``topics``, now."""
    partitions = partitions_of(consumer, topics, bootstrap_servers)
    return {tp: high for tp, (_, high) in watermarks(consumer, partitions,
                                                     bootstrap_servers).items()}


def is_out_of_range(err: Any) -> bool:
    """Whether a consumed message's error says its position is outside the log."""
    return bool(err.code() in OUT_OF_RANGE_CODES)


def committed(consumer: Any, tps: list[Any], timeout_s: float = _METADATA_TIMEOUT_S) -> Any:
    """``consumer.committed(tps)``, asked again while the group coordinator is moving or
    loading (a broker that just restarted answers NOT_COORDINATOR or
    COORDINATOR_LOAD_IN_PROGRESS for a while) or the error is retriable, up to
    ``timeout_s``.

    Raises:
        KafkaException: the last error, once the time is up or it is not one to retry.
    """
    from confluent_kafka import KafkaException
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.committed(tps, timeout=timeout_s)
        except KafkaException as exc:
            err = exc.args[0]
            if (err.code() in _COORDINATOR_MOVING or err.retriable()) \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise


def committed_offsets(consumer: Any, partitions: Iterable[tuple[str, int]],
                      bootstrap_servers: str) -> dict[tuple[str, int], int | None]:
    """The group's committed offset of each partition, None where it has none."""
    from confluent_kafka import KafkaException, TopicPartition
    tps = [TopicPartition(t, p) for t, p in partitions]
    if not tps:
        return {}
    try:
        found = committed(consumer, tps)
    except KafkaException as exc:
        raise KafkaUnavailableError(
            f"could not read committed offsets from --bootstrap_servers={bootstrap_servers} "
            f"({exc.args[0]})") from exc
    return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in found}


def commit_offsets(consumer: Any, offsets: Mapping[tuple[str, int], int],
                   attempts: int = 5, backoff_s: float = 0.5) -> bool:
    """Commit ``offsets`` (each the *next* offset to read) with retries.

    Returns False, after logging, when every attempt failed: the checkpoint is
    the source of truth, so a failed commit delays Kafka's view of progress
    but loses nothing.
    """
    from confluent_kafka import KafkaException, TopicPartition
    tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
    if not tps:
        return True
    for attempt in range(1, attempts + 1):
        try:
            result = consumer.commit(offsets=tps, asynchronous=False)
            failed = [tp for tp in result or [] if tp.error is not None]
            if not failed:
                return True
            reason = "; ".join(f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in failed)
        except KafkaException as exc:
            reason = str(exc.args[0])
        _LOGGER.warning("offset commit attempt %d/%d failed: %s", attempt, attempts, reason)
        time.sleep(backoff_s * attempt)
    _LOGGER.error("giving up committing offsets %s after %d attempts; the checkpoint "
                  "holds the progress and the next commit will carry it", offsets, attempts)
    return False


def offsets_for_time(consumer: Any, partitions: Iterable[tuple[str, int]], timestamp_ms: int,
                     bootstrap_servers: str) -> dict[tuple[str, int], int]:
    """Per partition the first offset with a timestamp at or after ``timestamp_ms``, or -1
    when every record is older (Kafka's ListOffsets by time)."""
    from confluent_kafka import KafkaException, TopicPartition
    tps = [TopicPartition(t, p, timestamp_ms) for t, p in partitions]
    if not tps:
        return {}
    try:
        found = consumer.offsets_for_times(tps, timeout=_METADATA_TIMEOUT_S)
    except KafkaException as exc:
        raise KafkaUnavailableError(
            f"could not look up offsets by time from --bootstrap_servers={bootstrap_servers} "
            f"({exc.args[0]})") from exc
    return {(tp.topic, tp.partition): tp.offset for tp in found}


def lost_offsets(topic: str, partition: int, first_missing: int, log_start: int,
                 fail_on_data_loss: bool, why: str = "retention or truncation removed "
                 "them before they were read") -> int:
    """Offsets ``[first_missing, log_start)`` no longer exist in Kafka.

    Raises DataLossError naming them, unless the user opted out with
    ``--fail_on_data_loss=false``; then logs loudly and returns how many were
    skipped, for the caller's metric.
    """
    what = (f"{topic}[{partition}] offsets [{first_missing}, {log_start}) no longer exist "
            f"(the partition's log now starts at {log_start}; {why})")
    if fail_on_data_loss:
        raise DataLossError(what + ". Nothing was skipped. To skip lost records instead, run "
                            "with --fail_on_data_loss=false (they are then counted in the "
                            "beam_zdl/data_loss_records metric).")
    _LOGGER.error("DATA LOSS (skipped, --fail_on_data_loss=false): %s", what)
    return log_start - first_missing



def group_holders(bootstrap_servers: str, group: str,
                  extra: Mapping[str, object] | None = None,
                  timeout_s: float = 10.0) -> dict[tuple[str, int], str]:
    """Which member of ``group`` holds each assigned partition, for messages to people.

    Each value reads ``member <id> (client <client.id>, host <host>[, instance <id>])``.
    A member killed without leaving keeps its partitions here until its session times
    out. Returns {} when the group cannot be described (the caller only logs it).
    """
    admin, _ = new_admin(bootstrap_servers, extra)  # held until the future resolves
    try:
        description = admin.describe_consumer_groups([group],
                                                     request_timeout=timeout_s)[group].result(
                                                         timeout=timeout_s + 1)
    except Exception as exc:  # noqa: BLE001 - a diagnostic only; nothing depends on it
        _LOGGER.info("could not describe consumer group %s: %s", group, exc)
        return {}
    out = {}
    for member in description.members:
        who = f"member {member.member_id} (client {member.client_id}, host {member.host}"
        if member.group_instance_id:
            who += f", instance {member.group_instance_id}"
        who += ")"
        for tp in member.assignment.topic_partitions if member.assignment else ():
            out[(tp.topic, tp.partition)] = who
    del admin
    return out
