"""WAL mode's receiver as a child process of the driver (beam_zdl.receiver_process).

Real processes on a real broker: the child dies with a SIGKILLed driver, its
error comes back to the driver as the same class and message, and its
secrets travel over a pipe, never its command line or its logs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import beam_zdl
from beam_zdl.options import ZdlOptions
from beam_zdl.receiver_process import ReceiverProcess
from beam_zdl.testing._process import wait_until
from beam_zdl.wal import list_segments, read_segment
from tests.driver_proc import start_driver
from tests.test_wal_mode import _config, _produce

LITERAL = "receiver-process-literal-secret-71d3"


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (nothing left of it runs)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def _receiver_child(driver_pid: int) -> int | None:
    found = [k for k in _children(driver_pid) if "beam_zdl.receiver_process" in _cmdline(k)]
    return found[0] if found else None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_receiver_child_dies_with_a_sigkilled_driver_and_keeps_secrets_to_itself(
        kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    _produce(kafka, topic, 2000, partitions=2)
    wal = str(tmp_path / "wal")
    consumer_config = {"session.timeout.ms": 4000, "heartbeat.interval.ms": 500,
                       "ssl.key.password": LITERAL}
    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--wal_dir={wal}", "--zdl_mode=wal",
             f"--consumer_group=g-{topic}", "--starting_offsets=earliest",
             "--consumer_config=" + json.dumps(consumer_config), "--trigger=continuous",
             "--batch_interval_s=0.5", "--wal_segment_records=250", "--wal_segment_age_s=0.5"]
    log = tmp_path / "driver.log"
    driver = start_driver(tmp_path / "out", flags, log)
    try:
        wait_until(lambda: _receiver_child(driver.pid) is not None, 120,
                   "the driver's receiver process")
        receiver = _receiver_child(driver.pid)
        assert receiver is not None
        wait_until(lambda: len(list_segments(wal)) > 0, 120, "a sealed WAL segment")
        command = _cmdline(receiver)
        assert "beam_zdl.receiver_process" in command and LITERAL not in command, command
        assert not _gone(receiver)

        driver.kill()
        driver.wait()

        wait_until(lambda: _gone(receiver), 30, f"receiver pid {receiver} gone with the driver")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    text = log.read_text(errors="replace")
    assert "writer epoch" in text, "the receiver's log lines did not reach the driver's log"
    assert LITERAL not in text


def test_receiver_error_in_the_child_surfaces_in_the_driver_as_the_same_error(kafka, tmp_path):
    """The child cannot claim a writer epoch (``_writers`` is a file): the driver raises the
    child's exception, same class and message, naming the path."""
    topic = kafka.create_topic(partitions=2)
    _produce(kafka, topic, 100, partitions=2)
    wal = tmp_path / "wal"
    wal.mkdir()
    (wal / "_writers").write_text("not a directory")
    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--wal_dir={wal}", "--zdl_mode=wal",
             f"--consumer_group=g-{topic}", "--starting_offsets=earliest"]

    with pytest.raises(FileExistsError) as raised:
        beam_zdl.run_micro_batches(lambda records, batch: None, ZdlOptions(flags))

    assert "_writers" in str(raised.value), raised.value


def test_receiver_process_drains_and_reports_done(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    _produce(kafka, topic, 600, partitions=2)
    wal = str(tmp_path / "wal")
    targets = {(topic, p): o for p, o in kafka.end_offsets(topic).items()}
    receiver = ReceiverProcess(_config(kafka, topic, wal), checkpoint_dir=None, drain=True,
                               targets=targets)
    receiver.start()
    deadline = time.monotonic() + 120
    while receiver.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not receiver.running and receiver.error() is None
    assert receiver.drained and receiver.stats["records"] == 600
    assert sum(1 for seg in list_segments(wal) for _ in read_segment(seg.uri)) == 600
    assert receiver.pid is not None and _gone(receiver.pid)


def test_stop_seals_and_commits_what_the_child_holds(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    _produce(kafka, topic, 300, partitions=2)
    wal = str(tmp_path / "wal")
    # Segments seal only on stop: a record count and an age it never reaches.
    config = _config(kafka, topic, wal, "--wal_segment_records=100000",
                     "--wal_segment_age_s=600")
    receiver = ReceiverProcess(config, checkpoint_dir=None, drain=False, targets=None)
    receiver.start()
    wait_until(lambda: os.path.isdir(os.path.join(wal, "_writers")), 60,
               "the receiver's writer epoch")
    time.sleep(3)  # let it read what is there (nothing seals before the stop)
    assert list_segments(wal) == []

    receiver.stop()

    assert receiver.error() is None and not receiver.running
    assert kafka.committed(f"g-{topic}", topic) == kafka.end_offsets(topic)
    assert len(list_segments(wal)) == 1
    assert not receiver.drained
