"""Start and end positions: what ``--starting_offsets`` and ``--ending_offsets`` mean.

A position is given as text and resolved against the cluster per partition:

``earliest`` / ``latest``
    The log start / the end offset (the last stable offset for beam_zdl's
    ``read_committed`` consumers).
``committed`` (start only)
    The consumer group's committed offset, else the log start.
``timestamp:<epoch ms>``
    The first offset whose record timestamp is at or after it (Kafka's
    ``offsets_for_times``); the end offset when every record is older.
a JSON map ``{"topic": {"0": 1234, "1": -2}}``
    Exact offsets, ``-2`` for earliest and ``-1`` for latest (as Spark's
    ``startingOffsets`` / ``endingOffsets``). It names every partition of every
    topic of ``--topics``.

An exact offset outside the log ``[log start, end]`` is an error naming the
topic, partition and valid range; with ``--fail_on_data_loss=false`` it is
clamped into the range, logged and counted instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import beam_zdl.kafka as kafka
from beam_zdl.errors import ConfigError

__all__ = ["Position", "parse", "resolve", "resolve_text", "EARLIEST", "LATEST"]

_LOGGER = logging.getLogger(__name__)

EARLIEST = -2
LATEST = -1

TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class Position:
    """A parsed position flag (see the module doc)."""
    kind: str  # earliest | latest | committed | timestamp | offsets
    timestamp_ms: int = 0
    offsets: dict[str, dict[int, int]] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "timestamp":
            return f"timestamp:{self.timestamp_ms}"
        if self.kind == "offsets":
            return json.dumps({t: {str(p): o for p, o in m.items()}
                               for t, m in self.offsets.items()}, sort_keys=True)
        return self.kind


def parse(text: Any, flag: str, topics: Iterable[str] = (), *, end: bool = False) -> Position:
    """Parse a position flag; raise :class:`ConfigError` naming ``flag`` when it is bad.

    Args:
        text: the flag's value.
        flag: ``--starting_offsets`` or ``--ending_offsets`` (for errors).
        topics: ``--topics``: a JSON map may name no other topic.
        end: an end position (``committed`` and ``-2``/earliest are refused).
    """
    forms = ("latest, timestamp:<epoch ms> or a JSON map such as "
             '{"topic": {"0": 1234, "1": -1}}') if end else (
        "earliest, latest, committed, timestamp:<epoch ms> or a JSON map such as "
        '{"topic": {"0": 1234, "1": -2}} (-2 earliest, -1 latest)')
    value = str(text).strip()
    if value in (("latest",) if end else ("earliest", "latest", "committed")):
        return Position(value)
    if value.startswith("timestamp:"):
        ms = value[len("timestamp:"):]
        if not ms.isdigit():
            raise ConfigError(f"{flag}={value}: the timestamp must be epoch milliseconds, "
                              f"e.g. timestamp:1767225600000")
        return Position("timestamp", timestamp_ms=int(ms))
    if value.startswith("{"):
        return Position("offsets", offsets=_offsets_map(value, flag, set(topics), end))
    raise ConfigError(f"{flag} must be {forms}; got {value!r}")


def _offsets_map(value: str, flag: str, topics: set[str], end: bool) -> dict[str, dict[int, int]]:
    try:
        raw = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} is not valid JSON ({exc}): give "
                          '{"topic": {"0": 1234, "1": -2}}') from None
    if not isinstance(raw, dict) or not all(isinstance(m, dict) for m in raw.values()):
        raise ConfigError(f"{flag} must map each topic to a map of partition to offset, "
                          'e.g. {"topic": {"0": 1234, "1": -2}}')
    unknown = sorted(set(raw) - topics) if topics else []
    if unknown:
        raise ConfigError(f"{flag} names topics that are not in --topics: {', '.join(unknown)}")
    out: dict[str, dict[int, int]] = {}
    lowest = LATEST if end else EARLIEST
    for topic, partitions in raw.items():
        for p, offset in partitions.items():
            if not str(p).isdigit():
                raise ConfigError(f"{flag}: partition {p!r} of {topic} is not a number")
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < lowest:
                allowed = "-1 (latest)" if end else "-2 (earliest), -1 (latest)"
                raise ConfigError(f"{flag}: {topic}[{p}] must be an offset >= 0, or {allowed}; "
                                  f"got {offset!r}")
            out.setdefault(topic, {})[int(p)] = offset
    return out


def resolve(consumer: Any, position: Position, partitions: list[TopicPartition], *,
            flag: str, bootstrap_servers: str, fail_on_data_loss: bool = True,
            marks: Optional[dict[TopicPartition, tuple[int, int]]] = None
            ) -> dict[TopicPartition, int]:
    """The offset ``position`` names in each of ``partitions``.

    Raises:
        ConfigError: a JSON map lacks a partition, or names an offset outside the log
            (unless ``fail_on_data_loss`` is False: then it is clamped and logged).
    """
    if marks is None:
        marks = kafka.watermarks(consumer, partitions, bootstrap_servers)
    if position.kind == "earliest":
        return {tp: marks[tp][0] for tp in partitions}
    if position.kind == "latest":
        return {tp: marks[tp][1] for tp in partitions}
    if position.kind == "committed":
        committed = kafka.committed_offsets(consumer, partitions, bootstrap_servers)
        # A committed offset below the log start is kept: the reader reports the gap.
        return {tp: c if (c := committed.get(tp)) is not None else marks[tp][0]
                for tp in partitions}
    if position.kind == "timestamp":
        found = kafka.offsets_for_time(consumer, partitions, position.timestamp_ms,
                                       bootstrap_servers)
        return {tp: found[tp] if found.get(tp, -1) >= 0 else marks[tp][1] for tp in partitions}
    missing = [f"{t}[{p}]" for t, p in partitions if p not in position.offsets.get(t, {})]
    if missing:
        raise ConfigError(f"{flag} gives no offset for {', '.join(missing)}: a JSON map names "
                          "every partition of --topics (-2 earliest, -1 latest)")
    out = {}
    clamped = 0
    for tp in partitions:
        low, high = marks[tp]
        offset = position.offsets[tp[0]][tp[1]]
        offset = low if offset == EARLIEST else high if offset == LATEST else offset
        if not low <= offset <= high:
            where = (f"{flag}: {tp[0]}[{tp[1]}] offset {offset} is outside the log, which "
                     f"holds offsets [{low}, {high})")
            if fail_on_data_loss:
                raise ConfigError(where + f"; give an offset from {low} to {high} (or -2 / -1), "
                                  "or run with --fail_on_data_loss=false to clamp it")
            fixed = min(max(offset, low), high)
            clamped += abs(fixed - offset)
            _LOGGER.error("%s; clamped to %d (--fail_on_data_loss=false)", where, fixed,
                          extra={"topic": tp[0], "partition": tp[1]})
            offset = fixed
        out[tp] = offset
    if clamped:
        _LOGGER.error("%s: clamped positions skip %d offsets in all", flag, clamped)
    return out


def resolve_text(consumer: Any, text: str, partitions: list[TopicPartition], *, flag: str,
                 bootstrap_servers: str, fail_on_data_loss: bool = True,
                 end: bool = False) -> dict[TopicPartition, int]:
    """:func:`parse` then :func:`resolve` (a flag's text as validated by ZdlConfig)."""
    return resolve(consumer, parse(text, flag, end=end), partitions, flag=flag,
                   bootstrap_servers=bootstrap_servers, fail_on_data_loss=fail_on_data_loss)
