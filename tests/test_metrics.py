"""ReadMetrics, the metrics every read keeps (direct, streaming, WAL), without a broker:
a DoFn that counts through it, run by Beam, and the metrics Beam reports."""

from __future__ import annotations

from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from beam_zdl import metrics


class _Reads(beam.DoFn):
    """Counts like a reader: per "poll" of n records, 10 bytes each and one lost."""

    def __init__(self) -> None:
        self._metrics = metrics.ReadMetrics()

    def process(self, n: int) -> Iterator[Any]:
        self._metrics.read(n, 10 * n)
        self._metrics.lost(1)
        self._metrics.lag("t", n % 2).set(100 - n)
        yield n


def test_read_metrics_count_records_bytes_losses_and_set_the_lag_gauges() -> None:
    pipeline = beam.Pipeline()
    _ = pipeline | beam.Create([1, 2, 3]) | beam.ParDo(_Reads())
    result = pipeline.run()
    result.wait_until_finish()
    found = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    counters = {c.key.metric.name: c.committed for c in found["counters"]}
    assert counters == {metrics.RECORDS: 6, metrics.BYTES: 60, metrics.DATA_LOSS_RECORDS: 3}
    gauges = {g.key.metric.name: g.committed.value for g in found["gauges"]}
    assert gauges[metrics.lag_name("t", 0)] == 98
    assert gauges[metrics.lag_name("t", 1)] in (97, 99)
