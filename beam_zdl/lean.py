"""Lean imports (opt-in): leave out the parts of Beam a reading process never uses.

``import apache_beam`` loads every IO Beam ships: Parquet (pyarrow, ~55 MB of RSS),
MongoDB (pymongo, bson) and Google Cloud (BigQuery, Pub/Sub, GCS through
``apache_beam.io.gcp``), ~75 MB of a process's ~185 MB before it reads a record.
A warm SDK worker and the driver of ``run_micro_batches`` use none of them
(beam_zdl's own GCS storage imports ``google.cloud.storage`` itself, which stays
importable).

With ``BEAM_ZDL_LEAN_IMPORTS=1`` in the environment, ``import beam_zdl`` (before
``import apache_beam``) and every warm worker process refuse those modules:
Beam's ``apache_beam.io`` treats them as not installed, as it does for an
install without its extras. It is opt-in because a user's DoFn or pipeline that
imports one of them then fails with a ``ModuleNotFoundError`` naming this
setting.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from typing import Any, Optional, Sequence

__all__ = ["ENV", "LEFT_OUT", "install", "install_if_asked"]

ENV = "BEAM_ZDL_LEAN_IMPORTS"
# Top-level names (and their submodules) a lean process refuses.
LEFT_OUT = ("pyarrow", "pymongo", "bson", "apache_beam.io.gcp", "apache_beam.transforms.xlang")


class _LeaveOut(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Optional[Sequence[str]],
                  target: Any = None) -> None:
        if any(name == m or name.startswith(m + ".") for m in LEFT_OUT):
            raise ModuleNotFoundError(
                f"No module named {name!r}: left out by {ENV}=1 (beam_zdl's lean imports); "
                f"unset {ENV} to import it", name=name)
        return None


def install() -> None:
    """Refuse the modules of ``LEFT_OUT`` in this process from now on (once)."""
    if not any(isinstance(f, _LeaveOut) for f in sys.meta_path):
        sys.meta_path.insert(0, _LeaveOut())


def install_if_asked() -> bool:
    """:func:`install` when ``$BEAM_ZDL_LEAN_IMPORTS`` is 1; whether it is."""
    if os.environ.get(ENV, "") in ("1", "true", "yes"):
        install()
        return True
    return False
