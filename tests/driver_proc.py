"""A micro-batch driver run as a real process by the crash tests.

Usage: python -m tests.driver_proc <out_dir> <ZdlOptions flags...>
The sink writes batch-<id>.jsonl atomically, one line per record read:
idempotent, so a replayed batch rewrites the same file.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import apache_beam as beam

import beam_zdl


def write_batch(rows: list, out_dir: str, batch_id: int) -> None:
    path = os.path.join(out_dir, f"batch-{batch_id:06d}.jsonl")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        for row in sorted(rows):
            out.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


ROOT = Path(__file__).resolve().parents[1]


def _env(crash_at: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BEAM_ZDL_CRASH_AT", None)
    if crash_at:
        env["BEAM_ZDL_CRASH_AT"] = crash_at
    return env


def run_driver(out_dir, flags: list[str], crash_at: str | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run this script as a child process, optionally set to SIGKILL itself at ``crash_at``."""
    return subprocess.run([sys.executable, "-m", "tests.driver_proc", str(out_dir), *flags],
                          env=_env(crash_at), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def start_driver(out_dir, flags: list[str], log_path) -> subprocess.Popen:
    """Start this script as a child process (to be killed by the test); output to ``log_path``."""
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "tests.driver_proc", str(out_dir), *flags],
                            env=_env(None), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def read_batches(out_dir) -> dict[int, list[tuple]]:
    """The rows of every batch-<id>.jsonl file, by batch id."""
    return {int(p.stem.split("-")[1]): [tuple(json.loads(l)) for l in p.read_text().splitlines()]
            for p in sorted(Path(out_dir).glob("batch-*.jsonl"))}


def main(argv: list[str]) -> None:
    out_dir, flags = argv[0], argv[1:]
    os.makedirs(out_dir, exist_ok=True)

    def build(records, batch):
        (records
         | beam.Map(lambda r: [r.topic, r.partition, r.offset])
         | beam.combiners.ToList()
         | beam.Map(write_batch, out_dir, batch.batch_id))

    summary = beam_zdl.run_micro_batches(build, beam_zdl.ZdlOptions(flags))
    print(json.dumps({"batches": summary.batches, "replayed": summary.replayed,
                      "records": summary.records, "batch_ids": summary.batch_ids}))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, force=True)  # importing Beam configured WARNING
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    main(sys.argv[1:])
