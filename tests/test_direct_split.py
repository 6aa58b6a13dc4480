"""The offset-range reader under a split while it reads: the primary is read exactly."""

from __future__ import annotations

import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.window import GlobalWindow

from beam_zdl.direct import ReadOffsetRangesFn, ReadSettings
from beam_zdl.ranges import PartitionRange


def _offsets(polls) -> list[int]:
    return [wv.value.offset for poll in polls for wv in poll]


@pytest.mark.parametrize("split_after_polls", [1, 3])
def test_checkpoint_split_mid_read_reads_exactly_the_primary(kafka, split_after_polls):
    topic = kafka.create_topic(partitions=1)
    kafka.produce(topic, ((None, f"v{i}".encode()) for i in range(1000)))
    fn = ReadOffsetRangesFn(ReadSettings(kafka.bootstrap_servers, f"g-{topic}", poll_batch=100))
    fn.setup()
    try:
        tracker = OffsetRestrictionTracker(OffsetRange(0, 1000))
        reading = fn.process(PartitionRange(topic, 0, 0, 1000), window=GlobalWindow(),
                             tracker=tracker)
        polls = [next(reading) for _ in range(split_after_polls)]
        primary, residual = tracker.try_split(0)  # what a runner's checkpoint does
        polls.extend(reading)

        read = _offsets(polls)
        assert read == list(range(primary.start, primary.stop)), "primary not read exactly"
        assert residual.stop == 1000 and residual.start == primary.stop
        tracker.check_done()

        # The residual, read as its own restriction, gives the rest once.
        rest_tracker = OffsetRestrictionTracker(residual)
        rest = _offsets(fn.process(PartitionRange(topic, 0, residual.start, 1000),
                                   window=GlobalWindow(), tracker=rest_tracker))
        assert sorted(read + rest) == list(range(1000))
        rest_tracker.check_done()
    finally:
        fn.teardown()
