"""A micro-batch driver whose batch always fails on the workers (a poison record).

Usage: python -m tests.flink_failing_batch <ZdlOptions flags...>
"""

from __future__ import annotations

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

    beam_zdl.run_micro_batches(build, beam_zdl.ZdlOptions(argv))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, force=True)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    main(sys.argv[1:])
