"""The beam-zdl command: inspect and verify, text and JSON, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from beam_zdl.cli import main
from beam_zdl.coordinator import CheckpointCoordinator
from beam_zdl.storage import join, open_storage
from beam_zdl.v1 import checkpoint_pb2 as pb
from beam_zdl.v1 import wal_pb2
from beam_zdl.wal import WalWriter


def _wal(wal_dir: str, segments: int = 2, per_segment: int = 5) -> list[pb.SegmentRef]:
    writer = WalWriter(wal_dir, "recv-1", 1)
    refs = []
    for s in range(segments):
        for i in range(per_segment):
            writer.append(wal_pb2.WalRecord(topic="orders", partition=i % 2,
                                            offset=s * per_segment + i, value=b"x" * 100))
        refs.append(writer.seal())
    return refs


def _checkpoint(ckpt: str, wal_dir: str, refs: list[pb.SegmentRef]) -> None:
    coord = CheckpointCoordinator(ckpt, owner="driver-A")
    coord.open(pb.CheckpointConfig(topics=["orders"], mode=pb.MODE_WAL, consumer_group="g1",
                                   wal_dir=wal_dir))
    coord.write_plan(pb.BatchPlan(batch_id=0, mode=pb.MODE_WAL, segments=refs[:1]))
    coord.complete(0, records=5)
    coord.write_plan(pb.BatchPlan(batch_id=1, mode=pb.MODE_WAL, segments=refs[1:]))


def test_inspect_text_and_json(any_storage_uri: str, capsys: pytest.CaptureFixture) -> None:
    ckpt, wal_dir = join(any_storage_uri, "ckpt"), join(any_storage_uri, "wal")
    refs = _wal(wal_dir)
    _checkpoint(ckpt, wal_dir, refs)

    assert main(["inspect", ckpt]) == 0
    text = capsys.readouterr().out
    assert f"checkpoint  {ckpt}" in text
    assert "mode        WAL" in text and "group       g1" in text
    assert "epoch       1 by " in text and ":driver-A at " in text
    assert "last batch 0: 5 records" in text and "next batch  2" in text
    assert "pending batches: 1" in text
    assert f"{refs[1].uri} (5 records, " in text
    assert f"WAL segments in {wal_dir}: 2," in text
    assert "seg-00000001-000000000001.wal  1      1    " in text

    assert main(["inspect", ckpt, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["topics"] == ["orders"] and doc["config"]["mode"] == "WAL"
    assert doc["epoch"]["current"] == 1
    assert doc["completed"]["last"]["batch_id"] == 0
    assert [p["batch_id"] for p in doc["pending"]] == [1]
    assert doc["pending"][0]["segments"][0]["uri"] == refs[1].uri
    assert [s["size_bytes"] for s in doc["wal"]["segments"]] == [r.size_bytes for r in refs]


def test_inspect_direct_mode_ranges(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = str(tmp_path / "ckpt")
    coord = CheckpointCoordinator(ckpt)
    coord.open(pb.CheckpointConfig(topics=["a"], mode=pb.MODE_DIRECT, consumer_group="g"))
    coord.write_plan(pb.BatchPlan(batch_id=0, mode=pb.MODE_DIRECT, ranges=[
        pb.OffsetRange(topic="a", partition=0, start=0, stop=100),
        pb.OffsetRange(topic="a", partition=1, start=7, stop=9)]))
    assert main(["inspect", ckpt]) == 0
    text = capsys.readouterr().out
    assert "a/0 [0, 100) = 100 records" in text and "a/1 [7, 9) = 2 records" in text
    assert "completed   none" in text and "WAL: none" in text


def test_inspect_of_a_non_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(tmp_path)]) == 2
    assert f"{tmp_path} is not a beam_zdl checkpoint" in capsys.readouterr().err


def test_verify_ok_and_corrupt(any_storage_uri: str, capsys: pytest.CaptureFixture) -> None:
    wal_dir = join(any_storage_uri, "wal")
    refs = _wal(wal_dir, segments=3)
    assert main(["verify", wal_dir]) == 0
    assert "verified 3 segments, 15 records" in capsys.readouterr().out
    assert main(["verify", refs[0].uri]) == 0  # one segment
    capsys.readouterr()

    storage = open_storage(wal_dir)
    name = refs[1].uri.rsplit("/", 1)[1]
    data = bytearray(storage.read(name))
    data[200] ^= 0x10
    storage.delete(name)
    storage.create(name, bytes(data))
    assert main(["verify", wal_dir]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPT WAL segment {refs[1].uri} is corrupt at byte " in out
    assert "verified 3 segments, 10 records" in out and "1 CORRUPT" in out

    assert main(["verify", wal_dir, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["corrupt"] == 1 and [r["ok"] for r in doc["results"]] == [True, False, True]


def test_verify_empty_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["verify", str(tmp_path)]) == 1
    assert "no WAL segments" in capsys.readouterr().out
    assert main(["verify", str(tmp_path), "--allow_empty"]) == 0


def test_console_script_usage_errors() -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys; from beam_zdl.cli import main; "
                           "sys.exit(main())", "bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'bogus'" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", "import sys; from beam_zdl.cli import main; "
                           "sys.exit(main())", "verify", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--allow_empty" in proc.stdout


_NO_BEAM = """
import json, sys
from beam_zdl.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "beam": "apache_beam" in sys.modules}))
"""


def _receive_without_beam(flags: list[str]) -> tuple[dict, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-c", _NO_BEAM, "receive", *flags],
                          capture_output=True, text=True, timeout=120)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


def test_receive_runs_without_importing_beam(kafka, tmp_path: Path) -> None:
    """Apache Beam is ~140 MB of RSS the stand-alone receiver does not need."""
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, b"x" * 100, i % 2) for i in range(500)))
    result, proc = _receive_without_beam([
        f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
        f"--wal_dir={tmp_path / 'wal'}", f"--consumer_group=g-{topic}",
        "--starting_offsets=earliest", "--drain_to_end",
        '--consumer_config={"session.timeout.ms": 6000}'])
    assert result == {"code": 0, "beam": False}, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-2])["records"] == 500
    assert kafka.committed(f"g-{topic}", topic) == {0: 250, 1: 250}


def test_receive_stops_at_the_end_with_an_explicit_available_now_trigger(kafka, tmp_path: Path) -> None:
    """--trigger=available_now written out means what it means to run_micro_batches: drain, stop."""
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, ((None, b"x" * 100, i % 2) for i in range(300)))
    result, proc = _receive_without_beam([
        f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
        f"--wal_dir={tmp_path / 'wal'}", f"--consumer_group=g-{topic}",
        "--starting_offsets=earliest", "--trigger", "available_now",
        '--consumer_config={"session.timeout.ms": 6000}'])
    assert result == {"code": 0, "beam": False}, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-2])["records"] == 300
    assert kafka.committed(f"g-{topic}", topic) == {0: 150, 1: 150}


def test_receive_refuses_drain_to_end_with_a_continuous_trigger(tmp_path: Path) -> None:
    result, proc = _receive_without_beam(["--topics=t", f"--wal_dir={tmp_path}",
                                          "--trigger=continuous", "--drain_to_end"])
    assert result == {"code": 2, "beam": False}
    assert ("beam-zdl receive: error: --drain_to_end contradicts --trigger=continuous"
            in proc.stderr)


def test_receive_names_a_bad_flag_without_importing_beam(tmp_path: Path) -> None:
    result, proc = _receive_without_beam(["--topics=t", f"--wal_dir={tmp_path}",
                                          "--max_buffered_bytes=0"])
    assert result == {"code": 2, "beam": False}
    assert "beam-zdl receive: error: --max_buffered_bytes must be > 0, got 0" in proc.stderr
    result, proc = _receive_without_beam(["--topics=t"])
    assert result == {"code": 2, "beam": False}
    assert "--wal_dir is required with --zdl_mode=wal" in proc.stderr


def test_receive_parses_flags_as_zdl_options_does() -> None:
    from beam_zdl.config import ZdlConfig
    from beam_zdl.options import ZdlOptions
    flags = ["--topics=a, b", "--zdl_mode=wal", "--wal_dir=/w", "--fail_on_data_loss=no",
             "--wal_segment_records=7", "--wal_segment_age_s=0.5",
             '--consumer_config={"session.timeout.ms": 6000}', "--unknown_flag"]
    assert ZdlConfig.from_flags(flags) == ZdlConfig.from_options(ZdlOptions(flags))
    flags.append("--bootstrap_servers=k1:9092,k2:9092")
    assert ZdlConfig.from_flags(flags) == ZdlConfig.from_options(ZdlOptions(flags))
    assert ZdlConfig.from_flags(flags).bootstrap_servers == "k1:9092,k2:9092"


def test_zdl_config_from_beam_options_needs_zdl_options_registered() -> None:
    """Without ZdlOptions defined, Beam would hand back beam_zdl's flags as strings."""
    proc = subprocess.run([sys.executable, "-c", (
        "from apache_beam.options.pipeline_options import PipelineOptions\n"
        "from beam_zdl.config import ZdlConfig\n"
        "ZdlConfig.from_options(PipelineOptions(['--topics=t', '--max_batches=3']))")],
        capture_output=True, text=True, timeout=120)
    assert "ConfigError: beam_zdl's flags are not registered with Beam: import " \
           "beam_zdl.options (ZdlOptions)" in proc.stderr
