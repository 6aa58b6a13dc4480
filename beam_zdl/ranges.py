"""Offset ranges and the one planner that makes them.

A batch of direct mode, and a bounded :class:`~beam_zdl.ReadFromKafka`, read
exactly a list of :class:`PartitionRange`: per topic-partition the half-open
offsets ``[start, stop)``. :func:`plan` makes that list for both — from the
next positions (a checkpoint's, else ``--starting_offsets``) to the end
offsets (``--ending_offsets``, or those seen at start by an ``available_now``
run, else now), capped by ``--max_records_per_partition`` and
``--max_records_per_batch`` (:func:`cap_batch`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Optional

import beam_zdl.kafka as kafka
import beam_zdl.positions as positions_

if TYPE_CHECKING:
    from beam_zdl.config import ZdlConfig

__all__ = ["PartitionRange", "TopicPartition", "Offsets", "plan", "plan_ranges",
           "positions", "end_positions", "cap_batch"]

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


def cap_batch(ranges: list[PartitionRange], cap: int) -> list[PartitionRange]:
    """Cut ``ranges`` to ``cap`` offsets in all, shared in proportion to each one's size.

    Spark's ``maxOffsetsPerTrigger``: each range keeps ``cap * size / total``
    rounded down, and the offsets left over by rounding go one each to the ranges
    with the largest remainders (ties: the larger range, then plan order). So the
    total is exactly ``cap``, every share is within one offset of its proportion,
    and no range grows. ``cap`` 0, or a total within it, leaves the ranges as they are.
    """
    sizes = [r.stop - r.start for r in ranges]
    total = sum(sizes)
    if not cap or total <= cap:
        return list(ranges)
    shares = [cap * n // total for n in sizes]
    left = cap - sum(shares)
    by_remainder = sorted(range(len(ranges)), key=lambda i: (-(cap * sizes[i] % total),
                                                            -sizes[i], i))
    for i in by_remainder[:left]:
        shares[i] += 1
    return [r._replace(stop=r.start + share) for r, share in zip(ranges, shares)]


def end_positions(consumer: Any, config: "ZdlConfig",
                  partitions: Optional[list[TopicPartition]] = None) -> Offsets:
    """Where reading stops: ``--ending_offsets`` if given, else the end offsets now."""
    if partitions is None:
        partitions = kafka.partitions_of(consumer, config.topics, config.bootstrap_servers)
    if config.ending_offsets:
        return positions_.resolve_text(consumer, config.ending_offsets, partitions,
                                       flag="--ending_offsets",
                                       bootstrap_servers=config.bootstrap_servers,
                                       fail_on_data_loss=config.fail_on_data_loss, end=True)
    return {tp: high for tp, (_, high) in kafka.watermarks(
        consumer, partitions, config.bootstrap_servers).items()}


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
        return positions_.resolve_text(
            consumer, config.starting_offsets, partitions, flag="--starting_offsets",
            bootstrap_servers=config.bootstrap_servers,
            fail_on_data_loss=config.fail_on_data_loss)
    out = dict(known)
    new = [tp for tp in partitions if tp not in out]
    if new:
        _LOGGER.info("new partitions %s start at their log start", new)
        out.update(positions_.resolve_text(consumer, "earliest", new, flag="--starting_offsets",
                                           bootstrap_servers=config.bootstrap_servers))
    return out


def plan(consumer: Any, config: "ZdlConfig", known: Optional[Mapping[TopicPartition, int]] = None,
         ends: Optional[Mapping[TopicPartition, int]] = None,
         partitions: Optional[list[TopicPartition]] = None) -> list[PartitionRange]:
    """The next ranges of every partition of ``--topics``.

    Args:
        consumer: a confluent-kafka consumer to ask the brokers with.
        config: the validated settings (topics, starting offsets, cap).
        known: positions recorded by a checkpoint (see :func:`positions`).
        ends: where to stop (a run's targets); default: :func:`end_positions`.
        partitions: every partition of ``--topics``, when the caller just asked (the
            metadata of a topic of 1,000 partitions takes ~50 ms to ask and read);
            default: asked here.
    """
    if partitions is None:
        partitions = kafka.partitions_of(consumer, config.topics, config.bootstrap_servers)
    if ends is None:
        ends = end_positions(consumer, config, partitions)
    ranges = plan_ranges(partitions, positions(consumer, config, partitions, known), ends,
                         config.max_records_per_partition)
    return cap_batch(ranges, config.max_records_per_batch)
