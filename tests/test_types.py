"""beam_zdl/ type-checks clean under ``mypy --strict`` (config: pyproject's [tool.mypy]).

Run in the fast suite so an unannotated function or a new Optional misuse fails the
change that brings it, not a later cleanup.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_mypy_strict_is_clean() -> None:
    # The repo root as cwd: mypy reads pyproject.toml there and keeps its
    # incremental cache in .mypy_cache/, which makes reruns take seconds.
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO,
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, (
        f"mypy exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
