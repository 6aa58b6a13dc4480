"""Named crash points for crash tests: SIGKILL this process at a chosen step.

Set ``BEAM_ZDL_CRASH_AT=<point>`` (or ``<point>:<n>`` to crash on the n-th
time the point is reached). Unset, a crash point costs one dict lookup.
"""

from __future__ import annotations

import logging
import os
import signal

__all__ = ["crash_point"]

_LOGGER = logging.getLogger(__name__)
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL the current process if ``$BEAM_ZDL_CRASH_AT`` names this point."""
    wanted = os.environ.get("BEAM_ZDL_CRASH_AT")
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        _LOGGER.error("crash point %s reached: SIGKILL (BEAM_ZDL_CRASH_AT=%s)", name, wanted)
        os.kill(os.getpid(), signal.SIGKILL)
