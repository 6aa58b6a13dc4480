"""Seeing a run: BatchProgress, listeners, the progress history, /metrics, the report.

One real run (module fixture) on the session broker: 3 partitions, 300 records of
which 30 do not decode, batches capped at 120 records, a user counter and a
distribution in ``build_fn``, ``--metrics_port`` scraped with a real HTTP client
from a listener while the run goes on, a listener that raises at every event, and
a secret in ``--consumer_config`` that must appear nowhere.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Optional

import apache_beam as beam
import pytest
from apache_beam.metrics import Metrics

import beam_zdl
from beam_zdl.cli import main as cli_main
from beam_zdl.coordinator import CheckpointCoordinator
from beam_zdl.progress_history import ProgressHistory, read_history
from beam_zdl.testing._process import free_port
from tests.scrape import get, sample

SECRET = "hunter2-progress-secret"
RECORDS = 300
BAD = 30  # values that are not JSON: dead letters
CAP = 120


class Recorder(beam_zdl.ProgressListener):
    """Records every event; on each batch scrapes /metrics and /healthz."""

    def __init__(self, port: int) -> None:
        self.events: list[tuple[str, Any]] = []
        self.port = port
        self.scrapes: list[tuple[int, str, int, str]] = []

    def on_start(self, checkpoint_dir: str, epoch: int) -> None:
        self.events.append(("start", epoch))

    def on_progress(self, progress: beam_zdl.BatchProgress) -> None:
        self.events.append(("progress", progress))
        self.scrapes.append((*get(f"http://127.0.0.1:{self.port}/metrics"),
                             *get(f"http://127.0.0.1:{self.port}/healthz")))

    def on_idle(self) -> None:
        self.events.append(("idle", None))

    def on_end(self, summary: Any, error: Optional[BaseException]) -> None:
        self.events.append(("end", (summary, error)))
        self.end_scrape = get(f"http://127.0.0.1:{self.port}/metrics")[1]


class Raiser(beam_zdl.ProgressListener):
    def on_start(self, checkpoint_dir: str, epoch: int) -> None:
        raise RuntimeError("listener bug in on_start")

    def on_progress(self, progress: beam_zdl.BatchProgress) -> None:
        raise RuntimeError("listener bug in on_progress")

    def on_idle(self) -> None:
        raise RuntimeError("listener bug in on_idle")

    def on_end(self, summary: Any, error: Optional[BaseException]) -> None:
        raise RuntimeError("listener bug in on_end")


def _build(records: beam.PCollection, batch: beam_zdl.Batch) -> None:
    decoded = records | beam_zdl.DecodeRecords(value="json")

    def count(record: Any) -> int:
        Metrics.counter("user", "decoded").inc()
        Metrics.distribution("user", "n").update(record.value["n"])
        return 1

    decoded.records | beam.Map(count)


@pytest.fixture(scope="module")
def run(kafka, tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("progress")
    topic = kafka.create_topic(partitions=3)
    kafka.produce(topic, ((None, b"not json" if i % 10 == 9 else json.dumps({"n": i}).encode(),
                           i % 3) for i in range(RECORDS)))
    port = free_port()
    recorder = Recorder(port)
    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--checkpoint_dir={tmp / 'ckpt'}", f"--consumer_group=g-{topic}",
             "--starting_offsets=earliest", f"--max_records_per_batch={CAP}",
             f"--metrics_port={port}", "--retain_batches=3",
             json.dumps({"ssl.key.password": SECRET}).join(["--consumer_config=", ""])]
    logs: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logs.append(self.format(record) + repr(record.__dict__))

    handler = Capture(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        summary = beam_zdl.run_micro_batches(_build, beam_zdl.ZdlOptions(flags),
                                             listeners=[Raiser(), recorder])
    finally:
        logging.getLogger().removeHandler(handler)
    return {"summary": summary, "recorder": recorder, "ckpt": str(tmp / "ckpt"),
            "topic": topic, "logs": logs, "tmp": tmp, "port": port}


def test_batch_progress_matches_each_plan_and_carries_user_metrics(run):
    summary = run["summary"]
    progress = [e[1] for e in run["recorder"].events if e[0] == "progress"]
    coord = CheckpointCoordinator(run["ckpt"])
    assert [p.batch_id for p in progress] == summary.batch_ids == [0, 1, 2]
    for p in progress:
        plan = {(r.topic, r.partition): (r.start, r.stop)
                for r in coord.read_plan(p.batch_id).ranges}
        assert {(x.topic, x.partition): (x.start_offset, x.end_offset)
                for x in p.partitions} == plan
        assert p.records == sum(x.records for x in p.partitions) <= CAP  # the cap held
        assert p.records == coord.read_completion(p.batch_id).records
        assert p.mode == "direct" and not p.replay and p.bytes > 0
        assert set(p.durations_s) == {"plan", "run", "complete", "commit", "total"}
        assert p.durations_s["total"] >= p.durations_s["run"] > 0
        assert p.processed_rows_per_s > 0 and p.input_rows_per_s > 0
        assert p.counters["user"]["decoded"] == p.records - p.dead_letter_records
        assert p.distributions["user"]["n"]["count"] == p.counters["user"]["decoded"]
        assert json.loads(p.to_json())["batch_id"] == p.batch_id
    assert sum(p.records for p in progress) == RECORDS
    assert sum(p.dead_letter_records for p in progress) == BAD
    assert sum(p.data_loss_records for p in progress) == 0
    assert progress[-1].lag == 0 and all(x.lag == 0 for x in progress[-1].partitions)
    assert progress[0].lag == RECORDS - progress[0].records
    good = [i for i in range(RECORDS) if i % 10 != 9]
    assert summary.counters["user"]["decoded"] == len(good)
    assert summary.distributions["user"]["n"] == {
        "count": len(good), "sum": sum(good), "min": 0, "max": max(good)}
    assert summary.counters["beam_zdl"]["dead_letter_records"] == BAD
    assert [p.batch_id for p in summary.recent_progress] == [0, 1, 2]


def test_listener_sees_every_event_in_order_and_a_raising_one_changes_nothing(run):
    events = run["recorder"].events
    kinds = [k for k, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert [k for k in kinds if k != "idle"] == ["start", "progress", "progress", "progress",
                                                 "end"]
    assert kinds[-2] == "idle"  # the last check found nothing: available_now ends
    summary, error = events[-1][1]
    assert error is None and summary is run["summary"] and summary.records == RECORDS
    raised = [line for line in run["logs"] if "listener bug in" in line]
    assert {m for m in ("on_start", "on_progress", "on_idle", "on_end")
            if any(f"Raiser.{m} raised" in line for line in raised)} == {
        "on_start", "on_progress", "on_idle", "on_end"}


def test_metrics_scraped_during_the_run_rise_and_lag_ends_at_zero(run):
    scrapes = run["recorder"].scrapes
    assert len(scrapes) == 3
    topic = run["topic"]
    batches = []
    for status, text, health_status, health in scrapes:
        assert status == 200 and health_status == 200, health
        assert json.loads(health)["status"] == "ok"
        batches.append(sample(text, "beam_zdl_batches_total", mode="direct", replay="false"))
    assert batches == [1.0, 2.0, 3.0]
    last = scrapes[-1][1]
    assert sample(last, "beam_zdl_records_total") == RECORDS
    assert sample(last, "beam_zdl_dead_letter_records_total") == BAD
    assert sample(last, "beam_zdl_batch_duration_seconds_count", step="run") == 3
    assert sample(last, "beam_zdl_pipeline_counter_total", namespace="user",
                   name="decoded") == RECORDS - BAD
    assert sample(last, "beam_zdl_commit_failures_total") == 0
    for p in range(3):
        assert sample(last, "beam_zdl_lag_offsets", topic=topic, partition=str(p)) == 0
    first = scrapes[0][1]
    assert sum(sample(first, "beam_zdl_lag_offsets", topic=topic, partition=str(p)) or 0
               for p in range(3)) > 0
    with pytest.raises(OSError):  # the server stops with the run
        urllib.request.urlopen(f"http://127.0.0.1:{run['port']}/healthz", timeout=5)


def test_history_is_kept_checked_and_shown_by_inspect(run, capsys):
    history = read_history(run["ckpt"])
    assert history.damaged == []
    assert [p.to_dict() for p in history.progress] == [
        p.to_dict() for p in run["summary"].recent_progress]
    assert cli_main(["inspect", run["ckpt"], "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["batch_id"] for p in doc["progress"]] == [0, 1, 2]
    assert cli_main(["inspect", run["ckpt"]]) == 0
    text = capsys.readouterr().out
    assert "recent batches (progress records): 3" in text

    # A damaged record is reported and skipped; it fails nothing.
    damaged_copy = Path(run["tmp"]) / "ckpt-damaged"
    import shutil
    shutil.copytree(run["ckpt"], damaged_copy)
    path = damaged_copy / "progress" / f"{1:012d}.json"
    data = bytearray(path.read_bytes())
    data[20] ^= 0x01
    path.write_bytes(bytes(data))
    history = read_history(str(damaged_copy))
    assert [p.batch_id for p in history.progress] == [0, 2]
    assert len(history.damaged) == 1 and "CRC32C mismatch" in history.damaged[0].reason
    assert cli_main(["inspect", str(damaged_copy), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["uri"] for d in doc["damaged_progress"]] == [str(path)]
    assert [p["batch_id"] for p in doc["progress"]] == [0, 2]

    # Only the last --retain_batches records are kept.
    coord = CheckpointCoordinator(str(damaged_copy))
    ProgressHistory(coord, keep_last=3).write(dataclasses.replace(history.progress[-1],
                                                                  batch_id=3))
    assert coord.progress_ids() == [1, 2, 3]


class _Parsed(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, Optional[str]]]] = []
        self.rows: dict[str, int] = {}
        self._table: Optional[str] = None
        self.data: dict[str, str] = {}
        self._script: Optional[str] = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._table = a.get("id")
            self.rows[self._table or ""] = 0
        if tag == "tr" and self._table and self.tags:
            self.rows[self._table] += 1
        if tag == "script":
            self._script = a.get("id")

    def handle_data(self, data: str) -> None:
        if self._script:
            self.data[self._script] = self.data.get(self._script, "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None


def test_report_is_one_self_contained_html_file_with_a_point_per_batch(run, capsys):
    out = Path(run["tmp"]) / "report.html"
    assert cli_main(["report", run["ckpt"], "-o", str(out)]) == 0
    assert "3 batches" in capsys.readouterr().out
    page = out.read_text()
    parsed = _Parsed()
    parsed.feed(page)
    parsed.close()
    assert parsed.rows["batches-table"] == 1 + 3  # header + one row per batch
    assert [b["batch_id"] for b in json.loads(parsed.data["batches"])] == [0, 1, 2]
    images = [a for t, a in parsed.tags if t == "img"]
    assert len(images) == 1 and (images[0]["src"] or "").startswith("data:image/png;base64,")
    # Opens without network: nothing is loaded from anywhere.
    for tag, attrs in parsed.tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not value or value.startswith("data:"), (tag, key, value)
    assert "<script src" not in page and "<link" not in page


def test_no_secret_in_progress_metrics_logs_or_report(run):
    everything = [p.to_json() for p in run["summary"].recent_progress]
    everything += [text + health for _, text, _, health in run["recorder"].scrapes]
    everything += run["logs"]
    everything += [p.read_text(errors="replace") for p in Path(run["ckpt"]).rglob("*")
                   if p.is_file()]
    everything += [p.read_text() for p in Path(run["tmp"]).glob("*.html")]
    assert len(everything) > 10
    assert not [text for text in everything if SECRET in text]


def test_wal_mode_driver_serves_the_receiver_metrics_too(kafka, tmp_path):
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, json.dumps({"n": i}).encode(), i % 2) for i in range(200)))
    port = free_port()
    recorder = Recorder(port)
    flags = [f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
             f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--wal_dir={tmp_path / 'wal'}",
             "--zdl_mode=wal", f"--consumer_group=g-{topic}", "--starting_offsets=earliest",
             "--wal_segment_records=50", "--wal_segment_age_s=0.5", f"--metrics_port={port}"]
    summary = beam_zdl.run_micro_batches(_build, beam_zdl.ZdlOptions(flags),
                                         listeners=[recorder])
    assert summary.records == 200 and summary.counters["user"]["decoded"] == 200
    progress = summary.recent_progress
    assert sum(p.wal_segments for p in progress) >= 4 and all(p.mode == "wal" for p in progress)
    last = recorder.scrapes[-1][1]
    assert sample(last, "beam_zdl_records_total") == 200
    assert sample(last, "beam_zdl_batches_total", mode="wal", replay="false") == len(progress)
    end = recorder.end_scrape  # the server serves until the listeners heard on_end
    assert sample(end, "beam_zdl_receiver_records_total") == 200
    assert (sample(end, "beam_zdl_receiver_segments_sealed_total") or 0) >= 4
    assert sample(end, "beam_zdl_receiver_seal_seconds_count") == sample(
        end, "beam_zdl_receiver_segments_sealed_total")


def test_a_stuck_listener_stalls_nothing(caplog):
    """Listeners run on their own thread: posting never waits for them, and closing waits
    a bounded time (no broker needed: this is the bus alone)."""
    from beam_zdl.batch_progress import ListenerBus
    release = threading.Event()
    heard: list[int] = []

    class Stuck(beam_zdl.ProgressListener):
        def on_idle(self) -> None:
            heard.append(1)
            release.wait(60)

    bus = ListenerBus([Stuck()])
    started = time.monotonic()
    for _ in range(100):
        bus.post("on_idle")
    assert time.monotonic() - started < 0.5
    with caplog.at_level(logging.WARNING, logger="beam_zdl.batch_progress"):
        bus.close(timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert heard == [1] and "still busy" in caplog.text
    release.set()
