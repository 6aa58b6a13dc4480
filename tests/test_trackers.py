"""GrowableOffsetRangeTracker: offset arithmetic, as properties (no broker)."""

from __future__ import annotations

import pickle

import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from hypothesis import given, strategies as st

from beam_zdl.streaming import PartitionOffsets
from beam_zdl.trackers import OPEN_END, GrowableOffsetRangeTracker

starts = st.integers(min_value=0, max_value=2 ** 62)
gaps = st.lists(st.integers(min_value=1, max_value=1000), min_size=0, max_size=30)
fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def _tracker(start: int, end_estimate: int) -> GrowableOffsetRangeTracker:
    return GrowableOffsetRangeTracker(OffsetRange(start, OPEN_END), lambda: end_estimate)


def _claim_all(tracker, start: int, steps: list[int]) -> list[int]:
    claimed, pos = [], start
    for step in steps:
        pos += step - 1 if not claimed else step
        assert tracker.try_claim(pos)
        claimed.append(pos)
    return claimed


@given(starts, gaps)
def test_claims_must_strictly_increase(start, steps):
    tracker = _tracker(start, start)
    claimed = _claim_all(tracker, start, steps)
    assert not tracker.is_bounded()
    if claimed:
        with pytest.raises(ValueError, match="strictly increase"):
            tracker.try_claim(claimed[-1])
    with pytest.raises(ValueError, match="smaller than the start"):
        _tracker(start, start).try_claim(start - 1)


@given(starts, gaps, st.integers(min_value=0, max_value=10 ** 6))
def test_checkpoint_splits_right_after_the_last_claim(start, steps, ahead):
    tracker = _tracker(start, start + ahead)
    claimed = _claim_all(tracker, start, steps)
    primary, residual = tracker.try_split(0)
    split = claimed[-1] + 1 if claimed else start
    assert (primary.start, primary.stop) == (start, split)
    assert (residual.start, residual.stop) == (split, OPEN_END)
    assert tracker.is_bounded()
    tracker.check_done()  # everything in the primary was claimed
    assert tracker.try_split(0) is None  # a checkpoint happens once
    assert tracker.try_split(0.5) is None
    assert not tracker.try_claim(split)  # the residual is someone else's


@given(starts, gaps, st.integers(min_value=0, max_value=10 ** 9), fractions.filter(lambda f: f > 0))
def test_fraction_split_lands_within_the_estimated_backlog(start, steps, backlog, fraction):
    tracker = _tracker(start, 0)
    claimed = _claim_all(tracker, start, steps)
    cur = claimed[-1] if claimed else start - 1
    end = cur + 1 + backlog
    tracker._estimator = lambda: end
    result = tracker.try_split(fraction)
    if result is None:
        return
    primary, residual = result
    assert primary.stop == residual.start
    assert cur < residual.start <= end  # after the last claim, not past the estimate
    assert residual.stop == OPEN_END and primary.start == start
    expected = cur + max(1, int((end - cur) * fraction))
    assert abs(residual.start - expected) <= 1  # floor of exact arithmetic
    assert tracker.is_bounded()


@given(starts, gaps, st.integers(min_value=-100, max_value=10 ** 6))
def test_progress_counts_claimed_and_estimated_remaining(start, steps, ahead):
    tracker = _tracker(start, 0)
    claimed = _claim_all(tracker, start, steps)
    last = claimed[-1] if claimed else None
    end = (last + 1 if last is not None else start) + ahead
    tracker._estimator = lambda: end
    progress = tracker.current_progress()
    if last is None:
        assert progress.completed_work == 0
        assert progress.remaining_work == max(0, end - start)
    else:
        assert progress.completed_work == last - start + 1
        assert progress.remaining_work == max(0, end - last - 1)


def test_estimator_failure_never_fails_a_split_or_progress():
    def broken() -> int:
        raise RuntimeError("broker down")
    tracker = GrowableOffsetRangeTracker(OffsetRange(10, OPEN_END), broken)
    assert tracker.try_claim(10)
    assert tracker.current_progress().remaining_work == 0
    assert tracker.try_split(0.5)[1].start == 11


@given(starts, st.integers(min_value=1, max_value=1000))
def test_closed_range_behaves_like_an_offset_tracker(start, size):
    tracker = GrowableOffsetRangeTracker(OffsetRange(start, start + size), lambda: 0)
    assert tracker.is_bounded()
    assert tracker.try_claim(start + size - 1)
    assert not tracker.try_claim(start + size)
    tracker.check_done()


def test_partition_offsets_keep_their_partition_through_splits_and_pickling():
    r = PartitionOffsets("t", 3, 5, OPEN_END)
    tracker = GrowableOffsetRangeTracker(r, lambda: 100)
    tracker.try_claim(7)
    primary, residual = tracker.try_split(0)
    for part in (primary, residual, pickle.loads(pickle.dumps(residual))):
        assert isinstance(part, PartitionOffsets) and (part.topic, part.partition) == ("t", 3)
    assert (residual.start, residual.stop) == (8, OPEN_END)


# --- RangeGroupTracker: a group of offset ranges, each claimed on its own -------------------

@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=5),
       st.lists(st.tuples(st.integers(0, 4), st.integers(1, 20)), max_size=20),
       st.floats(min_value=0, max_value=1))
def test_group_split_keeps_every_offset_in_exactly_one_side(bounds, claims, fraction):
    from beam_zdl.trackers import RangeGroupTracker
    spans = tuple(OffsetRange(a, a + n) for a, n in bounds)
    tracker = RangeGroupTracker(spans)
    claimed: set[tuple[int, int]] = set()
    nxt = [s.start for s in spans]
    for index, step in claims:  # claims in increasing order per range, interleaved
        index %= len(spans)
        offset = nxt[index] + step - 1
        if tracker.try_claim((index, offset)):
            claimed.add((index, offset))
        nxt[index] = offset + 1
    split = tracker.try_split(fraction)
    if split is None:
        return
    primary, residual = split
    assert tracker.current_restriction() == primary
    for i, (whole, first, rest) in enumerate(zip(spans, primary, residual)):
        assert first.start == whole.start and first.stop == rest.start
        assert rest.stop == whole.stop or rest.start == rest.stop == whole.stop
        # nothing claimed falls to the residual
        assert all(not rest.start <= o < rest.stop for j, o in claimed if j == i)
    # claim through the primary: done, and nothing of the residual can be claimed
    for i, first in enumerate(primary):
        if nxt[i] < first.stop:
            assert tracker.try_claim((i, first.stop - 1))
        if nxt[i] <= first.stop:
            assert not tracker.try_claim((i, max(nxt[i], first.stop)))
    tracker.check_done()
    progress = tracker.current_progress()
    assert progress.remaining_work == 0


def test_group_check_done_names_the_unclaimed_range():
    from beam_zdl.trackers import RangeGroupTracker
    tracker = RangeGroupTracker((OffsetRange(0, 5), OffsetRange(10, 20)))
    assert tracker.try_claim((0, 4)) and tracker.try_claim((1, 12))
    with pytest.raises(ValueError, match=r"range 1: offsets \[13, 20\) were never claimed"):
        tracker.check_done()
    with pytest.raises(ValueError, match="claims must increase"):
        tracker.try_claim((1, 12))
