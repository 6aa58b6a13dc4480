"""Offset arithmetic of batch planning and position flags (property tests, no broker)."""

import pytest
from hypothesis import given, strategies as st

import beam_zdl.positions as positions
from beam_zdl.errors import ConfigError
from beam_zdl.ranges import PartitionRange, cap_batch, plan_ranges

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


sizes = st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=64)


@given(sizes, st.integers(min_value=0, max_value=10**10))
def test_batch_cap_is_shared_in_proportion_to_lag(lags, cap):
    ranges = [PartitionRange("t", p, 100, 100 + n) for p, n in enumerate(lags)]
    capped = cap_batch(ranges, cap)
    total = sum(lags)

    assert [(r.topic, r.partition, r.start) for r in capped] == \
        [(r.topic, r.partition, r.start) for r in ranges]
    assert sum(r.stop - r.start for r in capped) == (min(cap, total) if cap else total)
    for r, n in zip(capped, lags):
        assert 0 <= r.stop - r.start <= n  # no range grows or goes backwards
        if cap and total > cap:
            # within one offset of the exact proportional share
            assert abs((r.stop - r.start) * total - cap * n) < total


@given(offsets, st.integers(min_value=1, max_value=10**7), st.integers(min_value=1, max_value=16),
       st.integers(min_value=1, max_value=10**6))
def test_capped_batches_drain_every_partition_exactly(start, backlog, parts, cap):
    """Batch after batch under --max_records_per_batch, each offset planned once."""
    lags = [backlog // (p + 1) for p in range(parts)]
    cap = max(cap, sum(lags) // 200 + 1)  # at most ~200 batches per example
    ends = {("t", p): start + n for p, n in enumerate(lags)}
    position = {tp: start for tp in ends}
    planned = 0
    for _ in range(sum(lags) // cap + 2 + parts):
        rs = cap_batch(plan_ranges(sorted(ends), position, ends), cap)
        if all(r.stop == r.start for r in rs):
            break
        for r in rs:
            assert r.start == position[(r.topic, r.partition)]
            position[(r.topic, r.partition)] = r.stop
            planned += r.stop - r.start
    assert position == ends and planned == sum(lags)


@pytest.mark.parametrize("text, flag, end, kind", [
    ("earliest", "--starting_offsets", False, "earliest"),
    ("committed", "--starting_offsets", False, "committed"),
    ("latest", "--ending_offsets", True, "latest"),
    ("timestamp:1767225600000", "--starting_offsets", False, "timestamp"),
    ('{"t": {"0": 5, "1": -2}}', "--starting_offsets", False, "offsets"),
    ('{"t": {"0": 5, "1": -1}}', "--ending_offsets", True, "offsets"),
])
def test_positions_parse(text, flag, end, kind):
    assert positions.parse(text, flag, ["t"], end=end).kind == kind


@pytest.mark.parametrize("text, end, message", [
    ("yesterday", False, "--starting_offsets must be earliest, latest, committed, timestamp"),
    ("committed", True, "--ending_offsets must be latest, timestamp"),
    ("earliest", True, "--ending_offsets must be latest"),
    ("timestamp:soon", False, "the timestamp must be epoch milliseconds"),
    ('{"t": {"0": 5', False, "is not valid JSON"),
    ('{"u": {"0": 5}}', False, "names topics that are not in --topics: u"),
    ('{"t": {"x": 5}}', False, "partition 'x' of t is not a number"),
    ('{"t": {"0": -3}}', False, r"t\[0\] must be an offset >= 0, or -2 \(earliest\)"),
    ('{"t": {"0": -2}}', True, r"t\[0\] must be an offset >= 0, or -1 \(latest\)"),
    ('{"t": [0]}', False, "must map each topic to a map of partition to offset"),
])
def test_bad_positions_name_the_flag(text, end, message):
    flag = "--ending_offsets" if end else "--starting_offsets"
    with pytest.raises(ConfigError, match=message):
        positions.parse(text, flag, ["t"], end=end)
