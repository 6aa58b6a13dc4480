"""Offset ranges and the one planner that makes them.

A batch of direct mode, and a bounded :class:`~beam_zdl.ReadFromKafka`, read
exactly a list of :class:`PartitionRange`: per topic-partition the half-open
offsets ``[start, stop)``. :func:`plan` makes that list for both — from the
next positions (a checkpoint's, else ``--starting_offsets``) to the end
offsets (seen at start by an ``available_now`` run, else now), capped by
``--max_records_per_partition``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Optional

import beam_zdl.kafka as kafka

if TYPE_CHECKING:
    from beam_zdl.options import ZdlConfig

__all__ = ["PartitionRange", "TopicPartition", "Offsets", "plan", "plan_ranges",
           "positions"]

_LOGGER = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
Offsets = dict[TopicPartition, int]


class PartitionRange(NamedTuple):
    """Offsets ``[start, stop)`` of one topic-partition: one batch's share of it."""
    topic: str
    partition: int
    start: int
    stop: int


def plan_ranges(partitions: Iterable[TopicPartition], starts: Mapping[TopicPartition, int],
                ends: Mapping[TopicPartition, int], cap: int = 0) -> list[PartitionRange]:
    """``[start, end)`` per partition, at most ``cap`` offsets each (0: no cap).

    A partition whose end is at or below its start gets an empty range, so a
    plan always lists every partition and its position.
    """
    ranges = []
    for tp in partitions:
        start = starts[tp]
        stop = max(start, ends.get(tp, start))
        if cap:
            stop = min(stop, start + cap)
        ranges.append(PartitionRange(tp[0], tp[1], start, stop))
    return ranges


def positions(consumer: Any, config: "ZdlConfig", partitions: list[TopicPartition],
              known: Optional[Mapping[TopicPartition, int]] = None) -> Offsets:
    """The next offset to read of each partition.

    Args:
        known: the positions a checkpoint recorded (the last plan's stops), or None
            before the first batch: then every partition starts at
            ``--starting_offsets``. With ``known``, a partition it lacks was added to
            the topic later and starts at its log start.
    """
    if known is None:
        return kafka.starting_positions(consumer, partitions, config.starting_offsets,
                                        config.bootstrap_servers)
    out = dict(known)
    new = [tp for tp in partitions if tp not in out]
    if new:
        _LOGGER.info("new partitions %s start at their log start", new)
        out.update(kafka.starting_positions(consumer, new, "earliest",
                                            config.bootstrap_servers))
    return out


def plan(consumer: Any, config: "ZdlConfig", known: Optional[Mapping[TopicPartition, int]] = None,
         ends: Optional[Mapping[TopicPartition, int]] = None) -> list[PartitionRange]:
    """The next ranges of every partition of ``--topics``.

    Args:
        consumer: a confluent-kafka consumer to ask the brokers with.
        config: the validated settings (topics, starting offsets, cap).
        known: positions recorded by a checkpoint (see :func:`positions`).
        ends: where to stop (an ``available_now`` run's targets); default: the end
            offsets now.
    """
    partitions = kafka.partitions_of(consumer, config.topics, config.bootstrap_servers)
    if ends is None:
        ends = {tp: high for tp, (_, high) in kafka.watermarks(
            consumer, partitions, config.bootstrap_servers).items()}
    return plan_ranges(partitions, positions(consumer, config, partitions, known), ends,
                       config.max_records_per_partition)
