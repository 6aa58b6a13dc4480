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

from typing import Any

from apache_beam.metrics import Metrics

__all__ = ["NAMESPACE", "RECORDS", "BYTES", "DATA_LOSS_RECORDS", "WAL_SEGMENTS",
           "WAL_LOST_FRAMES", "DEAD_LETTER_RECORDS", "lag_name", "ReadMetrics"]

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


class ReadMetrics:
    """The metrics every read keeps: counters ``records``, ``bytes`` and
    ``data_loss_records``, and a ``lag/<topic>/<partition>`` gauge per partition.

    Made once per DoFn; :meth:`read` and :meth:`lost` are called once a poll or a segment,
    never once a record.
    """

    def __init__(self) -> None:
        self._records = Metrics.counter(NAMESPACE, RECORDS)
        self._bytes = Metrics.counter(NAMESPACE, BYTES)
        self._lost = Metrics.counter(NAMESPACE, DATA_LOSS_RECORDS)
        # Per partition, made once: a gauge reports to whatever bundle is current at set().
        self._lags: dict[tuple[str, int], Any] = {}

    def read(self, records: int, nbytes: int) -> None:
        """Count ``records`` read holding ``nbytes`` of keys and values."""
        self._records.inc(records)
        self._bytes.inc(nbytes)

    def lost(self, records: int) -> None:
        """Count ``records`` skipped as lost (with ``--fail_on_data_loss=false``)."""
        self._lost.inc(records)

    def lag(self, topic: str, partition: int) -> Any:
        """The lag gauge of ``topic[partition]`` (its ``set`` takes end minus next offset)."""
        gauge = self._lags.get((topic, partition))
        if gauge is None:
            gauge = self._lags[topic, partition] = Metrics.gauge(NAMESPACE,
                                                                 lag_name(topic, partition))
        return gauge
