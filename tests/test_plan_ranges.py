"""Offset arithmetic of batch planning (property tests, no broker)."""

from hypothesis import given, strategies as st

from beam_zdl.ranges import plan_ranges

offsets = st.integers(min_value=0, max_value=10**12)


@given(st.lists(st.tuples(offsets, offsets), min_size=1, max_size=8),
       st.integers(min_value=0, max_value=10**6))
def test_ranges_never_go_backwards_and_respect_the_cap(pairs, cap):
    partitions = [("t", p) for p in range(len(pairs))]
    starts = {tp: s for tp, (s, _) in zip(partitions, pairs)}
    ends = {tp: e for tp, (_, e) in zip(partitions, pairs)}

    ranges = plan_ranges(partitions, starts, ends, cap)

    assert [(r.topic, r.partition) for r in ranges] == partitions  # every partition listed
    for r, (start, end) in zip(ranges, pairs):
        assert r.start == start  # a batch starts exactly where the last one stopped
        assert start <= r.stop <= max(start, end)  # never past the end, never backwards
        if cap:
            assert r.stop - r.start == min(cap, max(0, end - start))
        else:
            assert r.stop == max(start, end)


@given(offsets, st.integers(min_value=1, max_value=10**9), st.integers(min_value=1, max_value=60))
def test_consecutive_capped_batches_cover_the_backlog_once(start, backlog, wanted_batches):
    cap = -(-backlog // wanted_batches)
    tp = ("t", 0)
    position, covered, batches = start, 0, 0
    while True:
        (r,) = plan_ranges([tp], {tp: position}, {tp: start + backlog}, cap)
        if r.stop == r.start:
            break
        assert r.start == position
        covered += r.stop - r.start
        position = r.stop
        batches += 1
        assert batches <= backlog  # terminates
    assert covered == backlog and position == start + backlog
    assert batches == -(-backlog // cap)
