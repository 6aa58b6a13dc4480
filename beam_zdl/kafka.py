"""Kafka access for beam_zdl: consumers, watermarks, committed offsets, commits.

All confluent-kafka use goes through here, so that every consumer gets the
settings beam_zdl relies on (``enable.auto.commit=false``: the checkpoint,
not Kafka, owns progress; ``auto.offset.reset=error``: a position below the
log start is data loss to report, never a silent jump) and so that an
unreachable cluster is reported with the ``--bootstrap_servers`` used.

confluent_kafka is imported inside functions: a DoFn that captured one of its
types at module import of a ``__main__`` script would not pickle.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, TypeVar

from beam_zdl.errors import DataLossError, KafkaUnavailableError, ZdlError
from beam_zdl.secrets import redact, resolve

__all__ = [
    "KafkaSettings",
    "OUT_OF_RANGE_CODES",
    "lost_offsets",
    "consumer_settings",
    "new_consumer",
    "partitions_of",
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

# What consume() reports for a position outside the log. With auto.offset.reset=error,
# librdkafka gives KafkaError._AUTO_OFFSET_RESET (-140); the broker's
# OFFSET_OUT_OF_RANGE (1) is kept for safety. (There is no KafkaError._OFFSET_OUT_OF_RANGE.)
OUT_OF_RANGE_CODES = (-140, 1)

# COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR: the group
# coordinator is starting or moving; asking again shortly succeeds.
_COORDINATOR_MOVING = (14, 15, 16)


def consumer_settings(bootstrap_servers: str, group: str,
                      extra: Mapping[str, object] | None = None) -> dict[str, Any]:
    """The confluent-kafka settings of every beam_zdl consumer.

    ``${env:NAME}`` / ``${file:PATH}`` values in ``extra`` are resolved here, where
    the client is created (see :mod:`beam_zdl.secrets`).
    """
    settings = {
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
    }
    settings.update(resolve(extra or {}))
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
            meta = consumer.list_topics(topic, timeout=_METADATA_TIMEOUT_S)
        except KafkaException as exc:
            raise KafkaUnavailableError(
                f"could not read metadata of topic {topic!r} from --bootstrap_servers="
                f"{bootstrap_servers} within {_METADATA_TIMEOUT_S:.0f} s ({exc.args[0]}); "
                "check that the brokers are reachable from here") from None
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            reason = info.error if info is not None and info.error else "no partitions"
            raise ZdlError(f"topic {topic!r} is not readable on --bootstrap_servers="
                           f"{bootstrap_servers}: {reason}; create it or fix --topics")
        out.extend((topic, p) for p in sorted(info.partitions))
    return out


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
                f"({exc.args[0]})") from None
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


def committed_offsets(consumer: Any, partitions: Iterable[tuple[str, int]],
                      bootstrap_servers: str) -> dict[tuple[str, int], int | None]:
    """The group's committed offset of each partition, None where it has none."""
    from confluent_kafka import KafkaException, TopicPartition
    tps = [TopicPartition(t, p) for t, p in partitions]
    if not tps:
        return {}
    deadline = time.monotonic() + _METADATA_TIMEOUT_S
    while True:
        try:
            found = consumer.committed(tps, timeout=_METADATA_TIMEOUT_S)
            break
        except KafkaException as exc:
            # A broker that just (re)started answers NOT_COORDINATOR or
            # COORDINATOR_LOAD_IN_PROGRESS until the group coordinator is loaded.
            err = exc.args[0]
            if (getattr(err, "code", lambda: None)() in _COORDINATOR_MOVING
                    and time.monotonic() < deadline):
                time.sleep(0.5)
                continue
            raise KafkaUnavailableError(
                f"could not read committed offsets from --bootstrap_servers={bootstrap_servers} "
                f"({err})") from None
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
            f"({exc.args[0]})") from None
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


# Client settings an admin client needs to reach the same cluster as the consumers
# (security, networking); consumer-only settings would only draw librdkafka warnings.
_ADMIN_PREFIXES = ("security.", "sasl.", "ssl.", "socket.", "client.", "broker.", "api.")


def group_holders(bootstrap_servers: str, group: str,
                  extra: Mapping[str, object] | None = None,
                  timeout_s: float = 10.0) -> dict[tuple[str, int], str]:
    """Which member of ``group`` holds each assigned partition, for messages to people.

    Each value reads ``member <id> (client <client.id>, host <host>[, instance <id>])``.
    A member killed without leaving keeps its partitions here until its session times
    out. Returns {} when the group cannot be described (the caller only logs it).
    """
    from confluent_kafka.admin import AdminClient
    settings: dict[str, Any] = {"bootstrap.servers": bootstrap_servers}
    settings.update(resolve({k: v for k, v in (extra or {}).items()
                             if k.startswith(_ADMIN_PREFIXES)}))
    admin = AdminClient(settings)  # held until the future resolves (see DESIGN.md)
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
