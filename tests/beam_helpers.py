"""Helpers for tests that run real Beam pipelines and inspect their real output."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

import beam_zdl.metrics as metrics

from beam_zdl.runners import pipeline_runner
from beam_zdl.io import ReadFromKafka
from beam_zdl.options import ZdlOptions

MULTI_WORKER = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


class WriteRecordIds(beam.DoFn):
    """Writes each bundle's records as JSON lines into a folder (one file per bundle)."""

    def __init__(self, out_dir: str) -> None:
        self._out_dir = out_dir

    def start_bundle(self) -> None:
        self._rows = []

    def process(self, record) -> None:
        self._rows.append([record.topic, record.partition, record.offset,
                           None if record.key is None else record.key.decode(),
                           None if record.value is None else record.value.decode()])

    def finish_bundle(self) -> None:
        if self._rows:
            path = Path(self._out_dir) / f"{uuid.uuid4().hex}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in self._rows))


def read_output(out_dir) -> list[tuple]:
    """Every row written by WriteRecordIds, as tuples."""
    rows = []
    for path in sorted(Path(out_dir).glob("*.jsonl")):
        rows.extend(tuple(json.loads(line)) for line in path.read_text().splitlines())
    return rows


def options(kafka, topic: str, *extra: str) -> ZdlOptions:
    return ZdlOptions([f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
                       *extra])


def read_with_beam(kafka, topic: str, out_dir, ranges=None, extra=(),
                   counters: dict | None = None) -> list[tuple]:
    """Run a bounded pipeline reading ``ranges`` of ``topic``; return what it read.

    ``counters``, when given, receives the run's ``beam_zdl`` counters by name.
    """
    os.makedirs(out_dir, exist_ok=True)
    opts = options(kafka, topic, *extra)
    p = beam.Pipeline(runner=pipeline_runner(opts), options=opts)
    (p | ReadFromKafka(opts, ranges=ranges) | beam.ParDo(WriteRecordIds(str(out_dir))))
    result = p.run()
    result.wait_until_finish()
    if counters is not None:
        query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
        for c in query["counters"]:
            counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
    return read_output(out_dir)


class WriteElements(beam.DoFn):
    """Writes each element's records as one JSON line of ``[topic, partition, offset]``
    rows (a record batch's records, or one record), one file per bundle."""

    def __init__(self, out_dir: str) -> None:
        self._out_dir = out_dir

    def start_bundle(self) -> None:
        self._lines = []

    def process(self, element) -> None:
        records = element if isinstance(element, list) else [element]
        self._lines.append(json.dumps([[r.topic, r.partition, r.offset] for r in records]))

    def finish_bundle(self) -> None:
        if self._lines:
            os.makedirs(self._out_dir, exist_ok=True)
            path = Path(self._out_dir) / f"{uuid.uuid4().hex}.jsonl"
            path.write_text("".join(line + "\n" for line in self._lines))


def read_elements(out_dir) -> list[list[tuple]]:
    """Every element WriteElements wrote, as its list of (topic, partition, offset)."""
    return [[tuple(row) for row in json.loads(line)]
            for path in sorted(Path(out_dir).glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def assert_record_batches(elements: list[list[tuple]]) -> None:
    """Each element a record batch of one topic-partition, offsets strictly ascending."""
    for element in elements:
        assert element, "an empty record batch"
        assert len({(t, p) for t, p, _ in element}) == 1, f"a batch mixes partitions: {element}"
        offsets = [o for _, _, o in element]
        assert offsets == sorted(set(offsets)), f"a batch's offsets do not ascend: {offsets}"
