"""A streaming pipeline run as a real subprocess by tests/test_streaming.py.

    python -m tests.streaming_proc ids|counts OUT_DIR <pipeline flags...>

``ids``: every record's (partition, offset) is written in the read's own
fused stage (one file per bundle, written before the bundle completes, so
before its offsets can be committed). ``counts``: records are counted per
1-second fixed event-time window and each window's count is written once,
when the watermark passes it.

It runs until killed (the tests SIGKILL it) or ``--run_seconds`` elapse.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from pathlib import Path

import apache_beam as beam
from apache_beam.transforms import window

from beam_zdl.io import ReadFromKafka
from beam_zdl.options import ZdlOptions


class _WriteIds(beam.DoFn):
    def __init__(self, out_dir: str) -> None:
        self._out_dir = out_dir

    def start_bundle(self) -> None:
        self._rows = []

    def process(self, record) -> None:
        self._rows.append((record.partition, record.offset))

    def finish_bundle(self) -> None:
        if self._rows:
            path = Path(self._out_dir) / f"{uuid.uuid4().hex}.jsonl"
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self._rows))
            tmp.replace(path)


class _WriteWindowCount(beam.DoFn):
    def __init__(self, out_dir: str) -> None:
        self._out_dir = out_dir

    def process(self, count, win=beam.DoFn.WindowParam) -> None:
        start_ms = int(win.start.micros // 1000)
        path = Path(self._out_dir) / f"w{start_ms}-{uuid.uuid4().hex[:8]}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([start_ms, count]))
        tmp.replace(path)


def main(argv: list[str]) -> None:
    mode, out_dir, *flags = argv
    run_seconds = 0.0
    for flag in list(flags):
        if flag.startswith("--run_seconds="):
            run_seconds = float(flag.split("=", 1)[1])
            flags.remove(flag)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    options = ZdlOptions(flags + ["--streaming"])
    pipeline = beam.Pipeline(options=options)
    records = pipeline | ReadFromKafka()
    if mode == "ids":
        records | "Write" >> beam.ParDo(_WriteIds(out_dir))
    else:
        (records
         | "Window" >> beam.WindowInto(window.FixedWindows(1))
         | "One" >> beam.Map(lambda r: 1)
         | "Count" >> beam.CombineGlobally(sum).without_defaults()
         | "Write" >> beam.ParDo(_WriteWindowCount(out_dir)))
    result = pipeline.run()
    (Path(out_dir) / "_started").write_text(str(time.time()))
    if run_seconds:
        result.wait_until_finish(duration=int(run_seconds * 1000))
        result.cancel()
    else:
        result.wait_until_finish()


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger().setLevel(logging.INFO)  # importing Beam may have configured root
    main(sys.argv[1:])
