"""What a person watching a micro-batch run wants to see: how far, how much is left.

After each batch the loop logs one line with the records done and the lag
left: per partition the end it reads to (a run's targets, else the end
offsets its last plan saw) minus where the batches have got. An
``available_now`` run (or one with ``--ending_offsets``) on a terminal also
draws a progress bar (tqdm) over the offsets between its start and targets.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping, Optional

from beam_zdl.ranges import Offsets, PartitionRange

__all__ = ["Progress"]

_SHOWN_PARTITIONS = 4


class Progress:
    """Positions against ends, reported per batch (see the module doc)."""

    def __init__(self) -> None:
        self._position: Offsets = {}
        self._ends: Offsets = {}
        self._bar: Optional[Any] = None

    def start(self, positions: Mapping[tuple[str, int], int],
              targets: Optional[Mapping[tuple[str, int], int]]) -> None:
        """Where the run starts and, for a bounded run, where it ends."""
        self._position = dict(positions)
        if targets is None:
            return
        self._ends = dict(targets)
        total = self.lag()
        if total and sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit=" offsets", unit_scale=True,
                             desc="beam_zdl catch-up", file=sys.stderr)

    def planned_to(self, ends: Mapping[tuple[str, int], int]) -> None:
        """An unbounded run's latest view of the end offsets (from its last plan)."""
        self._ends = dict(ends)

    def done(self, ranges: tuple[PartitionRange, ...]) -> None:
        """A batch over ``ranges`` completed."""
        moved = 0
        for r in ranges:
            tp = (r.topic, r.partition)
            before = self._position.get(tp, r.start)
            if r.stop > before:
                moved += r.stop - max(before, r.start)
                self._position[tp] = r.stop
        if self._bar is not None:
            self._bar.update(moved)

    def ends(self) -> dict[tuple[str, int], int]:
        """The end offsets known (a bounded run's targets, else the last plan's view)."""
        return dict(self._ends)

    def lag(self) -> Optional[int]:
        """Offsets left to the ends, None when no end is known."""
        if not self._ends:
            return None
        return sum(max(0, end - self._position.get(tp, end)) for tp, end in self._ends.items())

    def describe(self) -> str:
        """``lag N`` with the partitions furthest behind, for the per-batch log line."""
        lag = self.lag()
        if lag is None:
            return ""
        behind = sorted(((end - self._position.get(tp, end), tp)
                         for tp, end in self._ends.items()), reverse=True)
        worst = [f"{t}[{p}] {n}" for n, (t, p) in behind[:_SHOWN_PARTITIONS] if n > 0]
        return f"; lag {lag} offsets" + (f" ({', '.join(worst)})" if worst else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
