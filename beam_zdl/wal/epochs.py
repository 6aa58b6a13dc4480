"""Writer epochs: each receiver of a WAL directory claims one no writer ever used
(create-once ``_writers/<epoch>``); segment names start with it, so writers never collide."""

from __future__ import annotations

import json
import time
from typing import Any

from beam_zdl.errors import ObjectExistsError, WalCorruptionError
from beam_zdl.storage import open_storage
from beam_zdl.wal.directory import list_segments

__all__ = ["claim_writer_epoch", "parse_writer_claim"]

_WRITERS = "_writers/"


def claim_writer_epoch(wal_dir: str, owner: str) -> int:
    """Claim a writer epoch no receiver of ``wal_dir`` ever used (create-once ``_writers/<n>``).

    Returns:
        The epoch, above every claimed epoch and every segment's epoch.
    """
    storage = open_storage(wal_dir)
    claimed = [int(i.name[len(_WRITERS):]) for i in storage.list(_WRITERS)
               if i.name[len(_WRITERS):].isdigit()]
    used = [s.epoch for s in list_segments(wal_dir)]
    epoch = max(claimed + used, default=0) + 1
    body = json.dumps({"owner": owner, "claimed_ms": int(time.time() * 1000)}).encode()
    while True:
        try:
            storage.create(f"{_WRITERS}{epoch:08d}", body)
            return epoch
        except ObjectExistsError:
            epoch += 1


def parse_writer_claim(wal_dir: str, epoch: int) -> dict[str, Any]:
    """Who claimed a writer epoch (``owner``, ``claimed_ms``), for inspection.

    Raises:
        WalCorruptionError: the claim is not a JSON object; names its URI.
    """
    storage, name = open_storage(wal_dir), f"{_WRITERS}{epoch:08d}"
    try:
        claim = json.loads(storage.read(name))
        if not isinstance(claim, dict):
            raise ValueError(f"a JSON {type(claim).__name__}, not an object")
    except ValueError as exc:
        raise WalCorruptionError(f"WAL writer claim {storage.uri(name)} does not decode ({exc}); "
                                 "it is only informational: delete it or restore it") from None
    return claim
