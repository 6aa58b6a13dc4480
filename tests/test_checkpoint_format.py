"""Checkpoint files are framed and checked: every flipped bit, truncation, misplaced or
format-1 file is an error naming the file, on every storage; format 1 migrates explicitly."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beam_zdl.cli import main
from beam_zdl.coordinator import (KIND_COMPLETION, KIND_CONFIG, KIND_EPOCH, KIND_PLAN, MAGIC,
                                  CheckpointCoordinator, decode_checkpoint_file,
                                  encode_checkpoint_file, migrate_format1)
from beam_zdl.errors import (CheckpointConflictError, CheckpointCorruptionError, StorageError,
                             UnsupportedCheckpointFormatError, WalCorruptionError, ZdlError)
from beam_zdl.receiver import wal_resume_positions
from beam_zdl.wal import claim_writer_epoch, parse_writer_claim
from beam_zdl.storage import join, open_storage
from beam_zdl.v1 import checkpoint_pb2 as pb
from tests.test_coordinator import _config, _plan

KINDS = [KIND_CONFIG, KIND_EPOCH, KIND_PLAN, KIND_COMPLETION]


# --- pure framing: every damage is detected --------------------------------------------------

def _flips(data: bytes):
    for bit in range(len(data) * 8):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        yield bit, bytes(damaged)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(KINDS), payload=st.binary(max_size=96))
def test_every_bit_flip_and_truncation_is_detected(kind: int, payload: bytes) -> None:
    data = encode_checkpoint_file(kind, payload)
    assert len(data) == len(payload) + 17 and data.startswith(MAGIC)
    assert decode_checkpoint_file(data, kind, "mem://f") == payload
    for bit, damaged in _flips(data):
        with pytest.raises(CheckpointCorruptionError, match=r"^checkpoint file mem://f ") as err:
            decode_checkpoint_file(damaged, kind, "mem://f")
        assert err.value.uri == "mem://f", bit
    for size in range(len(data)):
        with pytest.raises(CheckpointCorruptionError, match="truncated|size mismatch"):
            decode_checkpoint_file(data[:size], kind, "mem://f")
    with pytest.raises(CheckpointCorruptionError, match="size mismatch"):
        decode_checkpoint_file(data + b"\0", kind, "mem://f")


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(KINDS), other=st.sampled_from(KINDS), payload=st.binary(max_size=32))
def test_a_file_of_another_kind_is_never_read(kind: int, other: int, payload: bytes) -> None:
    data = encode_checkpoint_file(other, payload)
    if other == kind:
        assert decode_checkpoint_file(data, kind) == payload
    else:
        with pytest.raises(CheckpointCorruptionError, match="not a "):
            decode_checkpoint_file(data, kind)


def test_messages_say_what_is_wrong() -> None:
    plan = pb.BatchPlan(batch_id=3, ranges=[pb.OffsetRange(topic="t", start=0, stop=5)])
    data = encode_checkpoint_file(KIND_PLAN, plan.SerializeToString())
    cases = {
        data[:5]: "truncated to 5 bytes",
        data[:-1]: "size mismatch: the header announces a",
        data[:8] + b"\x01" + data[9:]: "CRC32C mismatch",  # kind flipped to config
        data[:7] + b"\x03" + data[8:]: "unknown format version 3",
        b"X" + data[1:]: "bad magic",
        data[:20] + bytes([data[20] ^ 4]) + data[21:]: "CRC32C mismatch",
        plan.SerializeToString(): "bad magic",  # unframed (format 1) bytes are never parsed
    }
    for damaged, reason in cases.items():
        with pytest.raises(CheckpointCorruptionError) as err:
            decode_checkpoint_file(damaged, KIND_PLAN, "gs://b/ckpt/plans/000000000003.pb",
                                   "gs://b/ckpt")
        message = str(err.value)
        assert reason in err.value.reason and not isinstance(err.value, StorageError)
        assert message.startswith("checkpoint file gs://b/ckpt/plans/000000000003.pb cannot "
                                  "be used: ")
        assert "`beam-zdl inspect gs://b/ckpt`" in message and "new --checkpoint_dir" in message


# --- on real storage --------------------------------------------------------------------------

def _replace(storage, name: str, data: bytes) -> None:
    storage.delete(name)
    storage.create(name, data)


def _flip(storage, name: str, byte: int = -3) -> bytes:
    original = storage.read(name)
    damaged = bytearray(original)
    damaged[byte] ^= 0x01
    _replace(storage, name, bytes(damaged))
    return original


def _truncate(storage, name: str) -> bytes:
    original = storage.read(name)
    _replace(storage, name, original[:len(original) // 2])
    return original


def _two_batches(ckpt: str) -> CheckpointCoordinator:
    coord = CheckpointCoordinator(ckpt, owner="first")
    coord.open(_config())
    coord.write_plan(_plan(0))
    coord.complete(0, records=10)
    coord.write_plan(_plan(1))  # pending
    return coord


@pytest.mark.parametrize("name, damage", [
    ("plans/000000000001.pb", _truncate), ("plans/000000000001.pb", _flip),
    ("plans/000000000000.pb", _flip), ("completions/000000000000.pb", _flip),
    ("completions/000000000000.pb", _truncate), ("config.pb", _flip),
    ("epochs/000000000001", _truncate),
])
def test_damaged_file_stops_the_next_driver_naming_it(any_storage_uri: str, name, damage) -> None:
    ckpt = join(any_storage_uri, "ckpt")
    _two_batches(ckpt)
    storage = open_storage(ckpt)
    original = damage(storage, name)
    uri = storage.uri(name)

    restarted = CheckpointCoordinator(ckpt)
    with pytest.raises(CheckpointCorruptionError, match=re.escape(f"checkpoint file {uri} ")):
        restarted.open(_config())
        restarted.pending()
    assert [d.uri for d in restarted.damaged_files()] == [uri]
    assert restarted.planned_ids() == [0, 1]  # nothing was written or removed

    _replace(storage, name, original)  # restored: the checkpoint is whole again
    restarted = CheckpointCoordinator(ckpt)
    restarted.open(_config())
    assert [p.batch_id for p in restarted.pending()] == [1]
    assert restarted.damaged_files() == []


def test_no_reader_skips_a_damaged_file(any_storage_uri: str) -> None:
    """Callers that treat a StorageError as "removed meanwhile" must not swallow damage."""
    ckpt = join(any_storage_uri, "ckpt")
    coord = _two_batches(ckpt)
    storage = open_storage(ckpt)
    _flip(storage, "plans/000000000000.pb")
    with pytest.raises(CheckpointCorruptionError, match="plans/000000000000.pb"):
        wal_resume_positions(join(any_storage_uri, "wal"), ckpt)
    with pytest.raises(CheckpointCorruptionError, match="plans/000000000000.pb"):
        coord.pending()
    # A completed batch's files deleted by retention are passed over, not an error.
    storage.delete("plans/000000000000.pb")
    storage.delete("completions/000000000000.pb")
    assert [p.batch_id for p in coord.pending()] == [1]


def test_an_undecodable_writer_claim_names_its_uri(tmp_path) -> None:
    wal = str(tmp_path / "wal")
    epoch = claim_writer_epoch(wal, "recv-1")
    assert parse_writer_claim(wal, epoch)["owner"] == "recv-1"
    storage = open_storage(wal)
    name = f"_writers/{epoch:08d}"
    _truncate(storage, name)
    with pytest.raises(WalCorruptionError, match=re.escape(f"WAL writer claim {storage.uri(name)} "
                                                           "does not decode")):
        parse_writer_claim(wal, epoch)


def test_misplaced_files_are_refused(any_storage_uri: str) -> None:
    ckpt = join(any_storage_uri, "ckpt")
    coord = _two_batches(ckpt)
    storage = open_storage(ckpt)
    _replace(storage, "plans/000000000001.pb", storage.read("completions/000000000000.pb"))
    with pytest.raises(CheckpointCorruptionError, match="holds a completion, not a batch plan"):
        coord.read_plan(1)
    _replace(storage, "plans/000000000001.pb", storage.read("plans/000000000000.pb"))
    with pytest.raises(CheckpointCorruptionError, match="holds the plan of 0, not of 1"):
        coord.read_plan(1)


def test_a_damaged_newer_epoch_still_fences(tmp_path) -> None:
    ckpt = str(tmp_path / "ckpt")
    old = CheckpointCoordinator(ckpt, owner="old")
    old.open(_config())
    CheckpointCoordinator(ckpt, owner="new").open(_config())
    _truncate(open_storage(ckpt), "epochs/000000000002")
    with pytest.raises(CheckpointConflictError,
                       match=r"fenced by epoch 2, whose file is damaged \(size mismatch"):
        old.write_plan(_plan(0))


def test_inspect_names_damaged_files(any_storage_uri: str, capsys) -> None:
    ckpt = join(any_storage_uri, "ckpt")
    _two_batches(ckpt)
    storage = open_storage(ckpt)
    _flip(storage, "completions/000000000000.pb")
    _truncate(storage, "plans/000000000001.pb")

    assert main(["inspect", ckpt]) == 1
    text = capsys.readouterr().out
    assert f"checkpoint {ckpt}: 2 damaged file(s)" in text
    assert f"DAMAGED {storage.uri('completions/000000000000.pb')}: CRC32C mismatch" in text
    assert f"DAMAGED {storage.uri('plans/000000000001.pb')}: size mismatch" in text
    assert "Restore this file from a copy" in text

    assert main(["inspect", ckpt, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [d["uri"] for d in doc["damaged"]] == [storage.uri("completions/000000000000.pb"),
                                                  storage.uri("plans/000000000001.pb")]
    assert doc["damaged"][1]["reason"].startswith("size mismatch")


# --- format 1 (unframed): refused, migrated explicitly ---------------------------------------

def _format1_checkpoint(ckpt: str) -> None:
    """What beam_zdl wrote before checkpoint files were framed."""
    storage = open_storage(ckpt)
    storage.create("config.pb", pb.CheckpointConfig(
        format_version=1, topics=["a", "b"], mode=pb.MODE_DIRECT, consumer_group="g",
        created_ms=1).SerializeToString())
    for epoch in (1, 2):
        storage.create(f"epochs/{epoch:012d}",
                       json.dumps({"owner": f"host:{epoch}", "claimed_ms": epoch}).encode())
    for batch_id in (0, 1, 2):
        storage.create(f"plans/{batch_id:012d}.pb",
                       _plan(batch_id).SerializeToString())
    for batch_id in (0, 1):
        storage.create(f"completions/{batch_id:012d}.pb", pb.Completion(
            batch_id=batch_id, records=10, epoch=1).SerializeToString())


def test_format1_is_refused_and_migrated(any_storage_uri: str, capsys) -> None:
    old, new = join(any_storage_uri, "old"), join(any_storage_uri, "new")
    _format1_checkpoint(old)
    before = {i.name: open_storage(old).read(i.name) for i in open_storage(old).list("")}

    with pytest.raises(UnsupportedCheckpointFormatError,
                       match=re.escape(f"`beam-zdl migrate {old} NEW_DIR`")):
        CheckpointCoordinator(old).open(_config())
    with pytest.raises(UnsupportedCheckpointFormatError, match="format 1"):
        CheckpointCoordinator(old).read_plan(2)  # any file, not only the config
    assert main(["inspect", old]) == 1
    assert "format 1 (unframed" in capsys.readouterr().out

    assert main(["migrate", old, new]) == 0
    assert f"run with --checkpoint_dir={new}" in capsys.readouterr().out
    assert main(["migrate", old, new, "--json"]) == 0  # a rerun keeps what is there
    assert len(json.loads(capsys.readouterr().out)["files"]) == 8
    after = {i.name: open_storage(old).read(i.name) for i in open_storage(old).list("")}
    assert after == before  # the old directory is only read

    coord = CheckpointCoordinator(new)
    assert coord.damaged_files() == []
    assert coord.epoch_claim(2)["owner"] == "host:2"
    assert coord.open(_config()) == 3
    assert coord.pending() == [_plan(2)]
    assert coord.read_config().format_version == 2
    with pytest.raises(ZdlError, match="in format 2 already: nothing to migrate"):
        migrate_format1(new, join(any_storage_uri, "other"))


def test_migrate_refuses_undecodable_and_mixed(tmp_path) -> None:
    old = str(tmp_path / "old")
    _format1_checkpoint(old)
    storage = open_storage(old)
    _replace(storage, "completions/000000000001.pb", b"\xff\xff\xff")
    with pytest.raises(CheckpointCorruptionError, match="completions/000000000001.pb.*does not "
                                                        "decode as a Completion"):
        migrate_format1(old, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").rglob("*.pb"))
    _replace(storage, "completions/000000000001.pb",
             encode_checkpoint_file(KIND_COMPLETION, pb.Completion(batch_id=1).SerializeToString()))
    with pytest.raises(ZdlError, match="mixes formats"):
        migrate_format1(old, str(tmp_path / "new"))
