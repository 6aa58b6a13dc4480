"""The checked-in generated protobuf code matches protos/ exactly and loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2.py*"))
    checked_in = sorted(p.relative_to(REPO) for p in (REPO / "beam_zdl" / "v1").glob("*_pb2.py*"))
    assert fresh == checked_in, "generated file set differs: run `make protos` and commit"
    for rel in fresh:
        assert (tmp_path / rel).read_bytes() == (REPO / rel).read_bytes(), (
            f"{rel} differs from protoc's output: do not hand-edit it; "
            "change protos/ and run `make protos`")


def test_generated_code_loads_and_keeps_none_distinct_from_empty() -> None:
    from beam_zdl.v1 import checkpoint_pb2, wal_pb2

    rec = wal_pb2.WalRecord(topic="t", value=b"",
                            headers=[wal_pb2.Header(key="h"), wal_pb2.Header(key="h", value=b"")])
    back = wal_pb2.WalRecord.FromString(rec.SerializeToString())
    assert not back.HasField("key") and back.HasField("value") and back.value == b""
    assert [h.HasField("value") for h in back.headers] == [False, True]
    plan = checkpoint_pb2.BatchPlan(batch_id=2**63, mode=checkpoint_pb2.MODE_WAL,
                                    ranges=[checkpoint_pb2.OffsetRange(topic="t", start=1, stop=5)])
    assert checkpoint_pb2.BatchPlan.FromString(plan.SerializeToString()) == plan
