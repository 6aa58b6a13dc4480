"""The Flink job server's output during run_micro_batches: whole in a file, only its WARN
and ERROR lines in the Python log, a failing batch's cause still shown. On Flink
``[local]`` (an embedded Flink in the job server), slow: two job server starts."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import beam_zdl
from beam_zdl.errors import BatchFailedError
from beam_zdl.runners import JOB_SERVER_LOGGER

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# A batch on [local] prints about 930 lines (the embedded Flink starts per job); a handful
# of WARN lines are relayed (delegation tokens, long operator names, ...).
_MAX_RELAYED_PER_BATCH = 25
_MIN_WRITTEN_PER_BATCH = 200


def _flags(kafka, topic: str, tmp_path: Path) -> list[str]:
    from beam_zdl.testing.flink import job_server_jar
    return [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
            f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--consumer_group=g-{topic}",
            "--starting_offsets=earliest", "--max_records_per_batch=100",
            "--runner=FlinkRunner", "--flink_master=[local]",
            f"--flink_job_server_jar={job_server_jar()}", "--environment_type=LOOPBACK",
            "--parallelism=1"]


def _check(record):
    if record.value == b"poison":
        raise ValueError(f"poison record at offset {record.offset}")
    return record


def _log_file(caplog) -> Path:
    [path] = [m.group(1) for r in caplog.records if r.name == "beam_zdl.runners"
              for m in [re.search(r"output goes to (\S+) ", r.getMessage())] if m]
    return Path(path)


def test_the_job_servers_output_goes_to_a_file_with_warnings_and_errors_relayed(
        kafka, tmp_path, caplog):
    import apache_beam as beam
    caplog.set_level(logging.INFO)
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, [(None, b"poison", 0)] +
                  [(None, f"v{i}".encode(), i % 2) for i in range(299)])

    # 1. A batch that fails on the worker: the error quotes the worker's exception.
    with pytest.raises(BatchFailedError) as failed:
        beam_zdl.run_micro_batches(lambda records, batch: records | beam.Map(_check),
                                   beam_zdl.ZdlOptions(_flags(kafka, topic, tmp_path)))
    assert "ValueError: poison record at offset 0" in str(failed.value)
    first_file = _log_file(caplog)
    assert "poison record at offset 0" in first_file.read_text()
    caplog.clear()

    # 2. The same checkpoint replays batch 0 and runs the rest.
    summary = beam_zdl.run_micro_batches(lambda records, batch: records | beam.Map(len),
                                         beam_zdl.ZdlOptions(_flags(kafka, topic, tmp_path)))
    assert summary.records == 300 and summary.batches >= 3
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)
    relayed = [r for r in caplog.records if r.name == JOB_SERVER_LOGGER]
    written = _log_file(caplog).read_text().splitlines()
    print(f"\n[flink local] {summary.batches} batches: {len(relayed)} job server lines "
          f"relayed, {len(written)} in {_log_file(caplog)}")
    assert all(r.levelno >= logging.WARNING for r in relayed)
    assert len(relayed) < _MAX_RELAYED_PER_BATCH * summary.batches
    assert len(written) > _MIN_WRITTEN_PER_BATCH * summary.batches
    assert any("JobService started" in line for line in written)
    assert {r.getMessage() for r in relayed} <= set(written)
