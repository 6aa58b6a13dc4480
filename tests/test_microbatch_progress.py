"""microbatch.progress: the lag line and its numbers, as the loop feeds them (no broker)."""

from __future__ import annotations

from beam_zdl.microbatch.progress import Progress
from beam_zdl.ranges import PartitionRange


def test_a_bounded_run_counts_down_to_its_targets():
    progress = Progress()
    progress.start({("t", 0): 10, ("t", 1): 0}, {("t", 0): 50, ("t", 1): 30})
    assert progress.lag() == 70 and progress.ends() == {("t", 0): 50, ("t", 1): 30}
    assert progress.describe() == "; lag 70 offsets (t[0] 40, t[1] 30)"
    progress.done((PartitionRange("t", 0, 10, 30), PartitionRange("t", 1, 0, 30)))
    assert progress.lag() == 20
    assert progress.describe() == "; lag 20 offsets (t[0] 20)"
    progress.done((PartitionRange("t", 0, 30, 50),))
    assert progress.lag() == 0 and progress.describe() == "; lag 0 offsets"
    progress.close()


def test_a_replayed_or_repeated_range_is_not_counted_twice():
    progress = Progress()
    progress.start({("t", 0): 0}, {("t", 0): 100})
    progress.done((PartitionRange("t", 0, 0, 60),))
    progress.done((PartitionRange("t", 0, 0, 60),))  # the same batch again
    progress.done((PartitionRange("t", 0, 40, 50),))  # behind what is done
    assert progress.lag() == 40


def test_an_unbounded_run_knows_its_lag_from_its_last_plan_only():
    progress = Progress()
    progress.start({("t", 0): 5}, None)
    assert progress.lag() is None and progress.describe() == "" and progress.ends() == {}
    progress.planned_to({("t", 0): 25})
    assert progress.lag() == 20
    progress.done((PartitionRange("t", 0, 5, 25),))
    progress.planned_to({("t", 0): 40, ("t", 1): 3})  # a partition not seen before
    assert progress.lag() == 15
    assert progress.ends() == {("t", 0): 40, ("t", 1): 3}


def test_the_line_names_the_partitions_furthest_behind_first_at_most_four():
    progress = Progress()
    ends = {("t", p): 100 for p in range(6)}
    progress.start({("t", p): p * 10 for p in range(6)}, ends)
    line = progress.describe()
    assert line.startswith("; lag 450 offsets (t[0] 100, t[1] 90, t[2] 80, t[3] 70)")
    assert "t[4]" not in line


def test_no_bar_when_stderr_is_not_a_terminal(capsys):
    progress = Progress()
    progress.start({("t", 0): 0}, {("t", 0): 10})  # pytest captures stderr: not a tty
    progress.done((PartitionRange("t", 0, 0, 10),))
    progress.close()
    assert capsys.readouterr().err == ""
