"""The offset-range reader under a split while it reads: the primary is read exactly."""

from __future__ import annotations

import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.transforms.window import GlobalWindow

from beam_zdl.direct import RangeGroup, ReadOffsetRangesFn, ReadSettings, group_chunks
from beam_zdl.ranges import PartitionRange
from beam_zdl.trackers import RangeGroupTracker


def _records(polls) -> list[tuple[int, int]]:
    return [(wv.value.partition, wv.value.offset) for poll in polls for wv in poll]


def _group(topic: str, spans) -> RangeGroup:
    return RangeGroup(tuple(PartitionRange(topic, p, s.start, s.stop)
                            for p, s in enumerate(spans)))


def _read(fn, topic, spans, tracker=None):
    tracker = tracker or RangeGroupTracker(tuple(spans))
    polls = list(fn.process(_group(topic, spans), window=GlobalWindow(), tracker=tracker))
    tracker.check_done()
    return _records(polls)


@pytest.mark.parametrize("partitions,split_after_polls,fraction", [
    (1, 1, 0), (1, 3, 0), (3, 2, 0), (3, 2, 0.5), (3, 5, 0.25)])
def test_split_mid_read_reads_exactly_the_primary(kafka, partitions, split_after_polls,
                                                  fraction):
    topic = kafka.create_topic(partitions=partitions)
    per = 1000
    kafka.produce(topic, ((None, f"v{i}".encode(), i % partitions)
                          for i in range(per * partitions)))
    fn = ReadOffsetRangesFn(ReadSettings(kafka.bootstrap_servers, f"g-{topic}", poll_batch=100))
    fn.setup()
    try:
        spans = [OffsetRange(0, per)] * partitions
        tracker = RangeGroupTracker(tuple(spans))
        reading = fn.process(_group(topic, spans), window=GlobalWindow(), tracker=tracker)
        polls = [next(reading) for _ in range(split_after_polls)]
        primary, residual = tracker.try_split(fraction)  # a runner's checkpoint or split
        polls.extend(reading)
        tracker.check_done()

        read = _records(polls)
        expected = [(p, o) for p, span in enumerate(primary) for o in range(span.start, span.stop)]
        assert sorted(read) == expected, "primary not read exactly"
        assert len(read) == len(set(read))
        for p, (first, rest) in enumerate(zip(primary, residual)):
            assert first.start == 0 and first.stop == rest.start and rest.stop == per
            mine = [o for q, o in read if q == p]
            assert mine == sorted(mine), "a partition's records out of order"

        # The residual, read as its own restriction, gives the rest once.
        rest_read = _read(fn, topic, residual)
        everything = sorted(read + rest_read)
        assert everything == [(p, o) for p in range(partitions) for o in range(per)]
    finally:
        fn.teardown()


def test_a_group_reads_many_partitions_and_leaves_nothing_assigned(kafka):
    topic = kafka.create_topic(partitions=16)
    kafka.produce(topic, ((None, b"v", i % 16) for i in range(16 * 30)))
    fn = ReadOffsetRangesFn(ReadSettings(kafka.bootstrap_servers, f"g-{topic}"))
    fn.setup()
    try:
        # Uneven chunks, one empty, each ending below the partition's end (the prefetch
        # past a stop must not be emitted).
        spans = [OffsetRange(p % 5, 30 - p % 7) for p in range(16)]
        spans[3] = OffsetRange(7, 7)
        read = _read(fn, topic, spans)
        fn.finish_bundle()
        assert sorted(read) == [(p, o) for p, s in enumerate(spans)
                                for o in range(s.start, s.stop)]
        assert fn._consumer.assignment() == []
    finally:
        fn.teardown()


def test_group_chunks_packs_small_chunks_only_and_gives_every_worker_a_share():
    big = PartitionRange("t", 0, 0, 100_000)
    small = [PartitionRange("t", p, 0, 30_000 + p) for p in range(1, 9)]
    groups = group_chunks([big, *small])
    assert groups[0].ranges == (big,)
    sizes = [sum(r.stop - r.start for r in g.ranges) for g in groups[1:]]
    assert len(sizes) == 2 and max(sizes) <= 200_000  # 240k offsets: 2 groups
    assert sorted(r for g in groups for r in g.ranges) == sorted([big, *small])
    tiny = [PartitionRange("t", p, 0, 25) for p in range(256)]
    assert [len(g.ranges) for g in group_chunks(tiny, workers=2)] == [128, 128]
    assert len(group_chunks(tiny[:1], workers=4)) == 1
