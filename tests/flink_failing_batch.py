"""A micro-batch driver whose batch always fails on the workers (a poison record).

Usage: python -m tests.flink_failing_batch <ZdlOptions flags...>
The run's error is printed on stdout as one JSON line (class, batch id, message) before
it is raised.
"""

from __future__ import annotations

import json
import logging
import sys

import apache_beam as beam

import beam_zdl


def _check(record):
    if record.value == b"poison":
        raise ValueError(f"poison record at offset {record.offset} of partition "
                         f"{record.partition}")
    return record


def main(argv: list[str]) -> None:
    def build(records, batch):
        records | beam.Map(_check)

    try:
        beam_zdl.run_micro_batches(build, beam_zdl.ZdlOptions(argv))
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "batch_id": getattr(exc, "batch_id", None),
                          "message": str(exc)}), flush=True)
        raise


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, force=True)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    main(sys.argv[1:])
