"""run_micro_batches on a real broker stops at a damaged checkpoint file, naming it; once the
file is restored, the run goes on with nothing read twice or skipped."""

from __future__ import annotations

import json
import signal

import pytest

from beam_zdl.coordinator import CheckpointCoordinator
from beam_zdl.storage import open_storage
from tests.driver_proc import read_batches, run_driver
from tests.test_checkpoint_format import _flip, _replace, _truncate
from tests.test_direct_mode import _assert_exactly_once, _flags
from tests import test_wal_mode


def _newest_epoch(storage) -> str:
    return max(i.name for i in storage.list("epochs/"))


@pytest.mark.parametrize("damages", [
    pytest.param([("plans/000000000001.pb", _truncate), ("plans/000000000001.pb", _flip)],
                 id="pending-plan"),
    pytest.param([("completions/000000000000.pb", _flip), ("config.pb", _flip),
                  ("plans/000000000000.pb", _truncate), (_newest_epoch, _truncate)],
                 id="completion-config-completed-plan-epoch", marks=pytest.mark.slow),
])
def test_driver_stops_naming_the_damaged_file(kafka, tmp_path, damages) -> None:
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 2) for i in range(400)))
    flags = _flags(kafka, topic, tmp_path, "--max_records_per_partition=100")
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    crashed = run_driver(out, flags, crash_at="after_plan:2")  # batch 0 done, batch 1 pending
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    storage = open_storage(str(ckpt))
    pending = CheckpointCoordinator(str(ckpt)).read_plan(1).SerializeToString()
    written, committed = read_batches(out), kafka.committed(f"g-{topic}", topic)

    for name, damage in damages:
        name = name(storage) if callable(name) else name
        original = damage(storage, name)

        failed = run_driver(out, flags)

        assert failed.returncode == 1, failed.stderr[-3000:]
        assert f"CheckpointCorruptionError: checkpoint file {storage.uri(name)} cannot be used" \
            in failed.stderr, failed.stderr[-3000:]
        assert read_batches(out) == written  # no batch ran
        assert kafka.committed(f"g-{topic}", topic) == committed
        _replace(storage, name, original)

    restarted = run_driver(out, flags)

    assert restarted.returncode == 0, restarted.stderr[-3000:]
    summary = json.loads(restarted.stdout.strip().splitlines()[-1])
    assert summary["replayed"] == 1 and summary["batch_ids"][0] == 1
    assert CheckpointCoordinator(str(ckpt)).read_plan(1).SerializeToString() == pending
    _assert_exactly_once(kafka, topic, out, ckpt, f"g-{topic}")


@pytest.mark.slow
def test_wal_mode_driver_and_receiver_stop_naming_a_damaged_plan(kafka, tmp_path) -> None:
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 2) for i in range(1200)))
    out, ckpt, wal = tmp_path / "out", tmp_path / "ckpt", tmp_path / "wal"
    flags = test_wal_mode._flags(kafka, topic, ckpt, wal)
    crashed = run_driver(out, flags, crash_at="after_plan:2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    storage = open_storage(str(ckpt))
    written = read_batches(out)
    for name in ("plans/000000000001.pb", "plans/000000000000.pb"):
        original = _flip(storage, name, byte=20)

        failed = run_driver(out, flags)

        assert failed.returncode == 1, failed.stderr[-3000:]
        assert f"checkpoint file {storage.uri(name)} cannot be used: CRC32C mismatch" \
            in failed.stderr, failed.stderr[-3000:]
        assert read_batches(out) == written
        _replace(storage, name, original)

    restarted = run_driver(out, flags)

    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert json.loads(restarted.stdout.strip().splitlines()[-1])["batch_ids"][0] == 1
    test_wal_mode._assert_exactly_once(kafka, topic, out, ckpt, wal)
