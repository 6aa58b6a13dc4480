"""The masked CRC32C that guards every durable byte beam_zdl writes.

One helper for both formats: WAL segments (:mod:`beam_zdl.wal`, frames with a
head and a frame CRC) and checkpoint files (:mod:`beam_zdl.coordinator`, one
CRC over header and payload). Each module's docstring has its byte layout.

``mcrc(b)`` is the *masked* CRC32C (Castagnoli, computed by google-crc32c) of
``b``, as in LevelDB and TFRecord: ``((c >> 15) | (c << 17)) + 0xA282EAD8``
mod 2**32, so that the CRC of data that itself holds CRCs stays strong.
"""

from __future__ import annotations

import google_crc32c

__all__ = ["mcrc"]

_MASK_DELTA = 0xA282EAD8


def mcrc(data: bytes) -> int:
    """The masked CRC32C of ``data`` (see the module docstring).

    Args:
        data: the bytes to guard.

    Returns:
        An unsigned 32-bit integer.
    """
    crc: int = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF
