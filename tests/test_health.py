"""/metrics and /healthz of a real driver process and a real ``beam-zdl receive``,
scraped with a real HTTP client while they run; the broker SIGSTOPped turns both
health checks to 503, SIGCONT back to 200. ``--log_format=json``: every stderr
line of a command is a JSON object."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from beam_zdl.testing._process import free_port
from tests.scrape import get, sample

ROOT = Path(__file__).resolve().parents[1]
BOUND_S = 3.0


def _wait(check: Callable[[], bool], what: str, procs: list[subprocess.Popen],
          timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        for proc in procs:
            assert proc.poll() is None, f"{proc.args[:4]} exited while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.2)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BEAM_ZDL_CRASH_AT", None)
    return env


def test_metrics_and_healthz_of_driver_and_receiver_through_a_hung_broker(kafka, tmp_path):
    direct_topic = kafka.create_topic(partitions=2)
    wal_topic = kafka.create_topic(partitions=2)
    for topic in (direct_topic, wal_topic):
        kafka.produce(topic, ((None, f"v{i}".encode(), i % 2) for i in range(200)))
    driver_port, receiver_port = free_port(), free_port()
    common = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--health_timeout_s={BOUND_S}",
              "--starting_offsets=earliest"]
    driver_log = open(tmp_path / "driver.log", "wb")
    receiver_log = open(tmp_path / "receiver.log", "wb")
    driver = subprocess.Popen(
        [sys.executable, "-m", "tests.driver_proc", str(tmp_path / "out"), *common,
         f"--topics={direct_topic}", f"--checkpoint_dir={tmp_path / 'ckpt'}",
         f"--consumer_group=g-{direct_topic}", "--trigger=continuous",
         "--batch_interval_s=0.5", f"--metrics_port={driver_port}"],
        env=_env(), cwd=ROOT, stdout=driver_log, stderr=subprocess.STDOUT)
    receiver = subprocess.Popen(
        [sys.executable, "-m", "beam_zdl.cli", "receive", "--log_format=json", *common,
         f"--topics={wal_topic}", f"--wal_dir={tmp_path / 'wal'}",
         f"--consumer_group=g-{wal_topic}", "--wal_segment_age_s=0.5",
         f"--metrics_port={receiver_port}"],
        env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs = [driver, receiver]
    driver_url = f"http://127.0.0.1:{driver_port}"
    receiver_url = f"http://127.0.0.1:{receiver_port}"

    def driver_records() -> float:
        return sample(get(f"{driver_url}/metrics")[1], "beam_zdl_records_total") or 0

    def receiver_records() -> float:
        return sample(get(f"{receiver_url}/metrics")[1], "beam_zdl_receiver_records_total") or 0

    def health(url: str) -> int:
        return get(f"{url}/healthz")[0]

    paused = False
    try:
        _wait(lambda: driver_records() == 200, "driver: 200 records", procs)
        _wait(lambda: receiver_records() == 200, "receiver: 200 records", procs)
        text = get(f"{driver_url}/metrics")[1]
        for p in (0, 1):
            assert sample(text, "beam_zdl_lag_offsets", topic=direct_topic,
                           partition=str(p)) == 0
        assert health(driver_url) == 200 and health(receiver_url) == 200
        rtext = get(f"{receiver_url}/metrics")[1]
        assert (sample(rtext, "beam_zdl_receiver_segments_sealed_total") or 0) >= 1
        assert sample(rtext, "beam_zdl_receiver_seal_seconds_count") == \
            sample(rtext, "beam_zdl_receiver_segments_sealed_total")
        assert sample(rtext, "beam_zdl_receiver_buffered_bytes") == 0
        # idle but turning: still healthy after more than the bound
        time.sleep(BOUND_S + 1)
        assert health(driver_url) == 200 and health(receiver_url) == 200

        kafka.pause()
        paused = True
        stuck_at = time.monotonic()
        _wait(lambda: health(driver_url) == 503, "driver /healthz 503", procs, 30)
        _wait(lambda: health(receiver_url) == 503, "receiver /healthz 503", procs, 30)
        stuck_body = json.loads(get(f"{driver_url}/healthz")[1])
        assert stuck_body["status"] == "stuck" and stuck_body["age_s"] > BOUND_S
        # stuck counts from the last turn before the pause: at most an idle cycle (0.5 s for
        # the driver, --health_timeout_s / 3 for the receiver's broker check) earlier
        assert time.monotonic() - stuck_at >= BOUND_S - BOUND_S / 3 - 0.5
        kafka.resume()
        paused = False
        _wait(lambda: health(driver_url) == 200, "driver /healthz 200 again", procs, 60)
        _wait(lambda: health(receiver_url) == 200, "receiver /healthz 200 again", procs, 60)

        for topic in (direct_topic, wal_topic):
            kafka.produce(topic, ((None, b"more", i % 2) for i in range(100)))
        _wait(lambda: driver_records() == 300, "driver: 300 records", procs)
        _wait(lambda: receiver_records() == 300, "receiver: 300 records", procs)
        text = get(f"{driver_url}/metrics")[1]
        assert sum(sample(text, "beam_zdl_lag_offsets", topic=direct_topic,
                           partition=str(p)) or 0 for p in (0, 1)) == 0
        driver.send_signal(signal.SIGINT)
        receiver.send_signal(signal.SIGTERM)
        assert driver.wait(60) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        _, stderr = receiver.communicate(timeout=60)
        assert receiver.returncode == 0, stderr[-3000:]
    finally:
        if paused:
            kafka.resume()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        driver_log.close()
        receiver_log.close()
    # --log_format=json: every line the receiver wrote on stderr is a JSON object.
    lines = stderr.decode().splitlines()
    assert lines
    for line in lines:
        doc = json.loads(line)
        assert isinstance(doc, dict) and {"time", "level", "message"} <= set(doc), line


def test_an_example_with_log_format_json_writes_only_json_lines(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, b"alpha beta", i % 2) for i in range(50)))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "wordcount_exactly_once.py"),
         f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
         f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--output_dir={tmp_path / 'out'}",
         "--starting_offsets=earliest", "--log_format=json"],
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    docs = []
    for line in proc.stderr.splitlines():
        doc = json.loads(line)
        assert isinstance(doc, dict) and {"time", "level", "logger", "message"} <= set(doc)
        docs.append(doc)
    done = [d for d in docs if d["message"].startswith("batch 0 done")]
    assert len(done) == 1 and done[0]["batch_id"] == 0 and done[0]["records"] == 50
