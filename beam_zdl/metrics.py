"""The Beam metrics beam_zdl reports: one namespace, one name per concept.

Counters (namespace ``beam_zdl``), reported by every read (direct, streaming,
WAL) where they apply:

======================  =========================================================
``records``             records read
``bytes``               key and value bytes read
``data_loss_records``   records skipped because they no longer exist (Kafka
                        retention) or sat in a damaged WAL frame, with
                        ``--fail_on_data_loss=false``; 0 otherwise
``wal_segments``        WAL segments read
``wal_lost_frames``     damaged WAL byte ranges skipped
``dead_letter_records`` records ``DecodeRecords`` could not decode, sent to its
                        dead-letter output
======================  =========================================================

Gauge ``lag/<topic>/<partition>``: end offset minus next offset to read.
"""

from __future__ import annotations

__all__ = ["NAMESPACE", "RECORDS", "BYTES", "DATA_LOSS_RECORDS", "WAL_SEGMENTS",
           "WAL_LOST_FRAMES", "DEAD_LETTER_RECORDS", "lag_name"]

NAMESPACE = "beam_zdl"
RECORDS = "records"
BYTES = "bytes"
DATA_LOSS_RECORDS = "data_loss_records"
WAL_SEGMENTS = "wal_segments"
WAL_LOST_FRAMES = "wal_lost_frames"
DEAD_LETTER_RECORDS = "dead_letter_records"


def lag_name(topic: str, partition: int) -> str:
    """The gauge name of a partition's lag."""
    return f"lag/{topic}/{partition}"
