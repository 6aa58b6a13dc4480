"""CheckpointCoordinator on every storage: config checks, plans, fencing, races, retention."""

from __future__ import annotations

import threading
import pytest

from beam_zdl.coordinator import CheckpointCoordinator
from beam_zdl.errors import CheckpointConflictError, ConfigMismatchError, ZdlError
from beam_zdl.storage import join
from beam_zdl.v1 import checkpoint_pb2 as pb



def _config(**overrides) -> pb.CheckpointConfig:
    fields = dict(topics=["a", "b"], mode=pb.MODE_DIRECT, consumer_group="g")
    fields.update(overrides)
    return pb.CheckpointConfig(**fields)


def _plan(batch_id: int) -> pb.BatchPlan:
    return pb.BatchPlan(batch_id=batch_id, mode=pb.MODE_DIRECT,
                        ranges=[pb.OffsetRange(topic="a", partition=0, start=batch_id * 10,
                                               stop=batch_id * 10 + 10)])


def test_config_mismatch_names_fields_and_dir(any_storage_uri: str) -> None:
    ckpt = join(any_storage_uri, "ckpt")
    assert CheckpointCoordinator(ckpt).open(_config()) == 1
    assert CheckpointCoordinator(ckpt).open(_config(topics=["b", "a"])) == 2  # order is irrelevant
    with pytest.raises(ConfigMismatchError) as err:
        CheckpointCoordinator(ckpt).open(_config(topics=["a"], mode=pb.MODE_WAL,
                                                 consumer_group="other"))
    message = str(err.value)
    assert ckpt in message
    assert "topics: checkpoint has ['a', 'b'], this run has ['a']" in message
    assert "mode: checkpoint has MODE_DIRECT, this run has MODE_WAL" in message
    assert "consumer group: checkpoint has 'g', this run has 'other'" in message
    assert CheckpointCoordinator(ckpt).current_epoch() == 2  # a refused open claims nothing


def test_plans_pending_next_id_restart_and_completion(any_storage_uri: str) -> None:
    ckpt = join(any_storage_uri, "ckpt")
    coord = CheckpointCoordinator(ckpt)
    with pytest.raises(ZdlError, match="call open"):
        coord.write_plan(_plan(0))
    epoch = coord.open(_config())
    assert (coord.next_batch_id(), coord.pending(), coord.last_completed()) == (0, [], None)
    written = coord.write_plan(_plan(0))
    assert written.epoch == epoch and written.created_ms > 0
    coord.complete(0, records=10)
    coord.write_plan(_plan(1))
    coord.write_plan(_plan(2))
    with pytest.raises(ValueError, match="batch id 5 skips ids; the next batch id is 3"):
        coord.write_plan(_plan(5))
    with pytest.raises(ZdlError, match="batch 7 has no plan"):
        coord.complete(7, records=1)
    assert [p.batch_id for p in coord.pending()] == [1, 2]
    assert coord.next_batch_id() == 3

    restarted = CheckpointCoordinator(ckpt)
    assert restarted.open(_config()) == epoch + 1
    pending = restarted.pending()
    assert pending == [coord.read_plan(1), coord.read_plan(2)]
    assert list(pending[0].ranges) == list(_plan(1).ranges)  # replayed identically
    for plan in pending:
        restarted.complete(plan.batch_id, records=10)
    assert restarted.pending() == [] and restarted.completed_ids() == [0, 1, 2]
    last = restarted.last_completed()
    assert (last.batch_id, last.records, last.epoch) == (2, 10, epoch + 1)
    # Completing again (a replay after an old driver finished) keeps the first completion.
    assert restarted.complete(2, records=99).records == 10


def test_older_epoch_is_fenced_after_a_newer_open(any_storage_uri: str) -> None:
    ckpt = join(any_storage_uri, "ckpt")
    old = CheckpointCoordinator(ckpt, owner="old")
    old.open(_config())
    old.write_plan(_plan(0))
    new = CheckpointCoordinator(ckpt, owner="new")
    new_epoch = new.open(_config())
    with pytest.raises(CheckpointConflictError,
                       match=rf"fenced by epoch {new_epoch}, written by .*:new"):
        old.complete(0, records=1)
    with pytest.raises(CheckpointConflictError, match="fenced by epoch"):
        old.write_plan(_plan(1))
    assert [p.batch_id for p in new.pending()] == [0]
    new.complete(0, records=1)


def test_racing_drivers_exactly_one_wins_each_batch(any_storage_uri: str) -> None:
    ckpt = join(any_storage_uri, "ckpt")
    a, b = CheckpointCoordinator(ckpt, owner="a"), CheckpointCoordinator(ckpt, owner="b")
    a.open(_config())
    b.open(_config())  # b is newer: a is fenced, and b wins
    results: dict[str, object] = {}

    def plan(name: str, coord: CheckpointCoordinator) -> None:
        try:
            results[name] = coord.write_plan(_plan(0))
        except CheckpointConflictError as exc:
            results[name] = exc

    threads = [threading.Thread(target=plan, args=(n, c)) for n, c in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results["a"], CheckpointConflictError)
    assert isinstance(results["b"], pb.BatchPlan)
    # Same epoch-holder racing itself on one batch id (two threads): create-once decides.
    c = CheckpointCoordinator(ckpt, owner="c")
    c.open(_config())
    c.write_plan(_plan(1))
    with pytest.raises(CheckpointConflictError, match="batch 1 was already planned by epoch"):
        c.write_plan(_plan(1))


def test_concurrent_opens_get_distinct_epochs(any_storage_uri: str) -> None:
    ckpt = join(any_storage_uri, "ckpt")
    CheckpointCoordinator(ckpt).open(_config())
    coords = [CheckpointCoordinator(ckpt, owner=str(i)) for i in range(4)]
    epochs: list[int] = []
    threads = [threading.Thread(target=lambda c=c: epochs.append(c.open(_config())))
               for c in coords]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(epochs) == [2, 3, 4, 5]
    winners = []
    for coord in coords:
        try:
            coord.write_plan(_plan(0))
            winners.append(coord.epoch)
        except CheckpointConflictError:
            pass
    assert winners == [5]


def test_retention_keeps_last_completed_and_every_pending(any_storage_uri: str) -> None:
    ckpt = join(any_storage_uri, "ckpt")
    coord = CheckpointCoordinator(ckpt)
    coord.open(_config())
    for i in range(6):
        coord.write_plan(_plan(i))
    for i in (0, 1, 2, 4):
        coord.complete(i, records=i)
    with pytest.raises(ValueError, match="keep at least 1"):
        coord.retain(0)
    assert coord.retain(keep_last=2) == [0, 1]
    assert coord.completed_ids() == [2, 4]
    assert [p.batch_id for p in coord.pending()] == [3, 5]
    assert coord.retain(keep_last=1) == [2]
    assert coord.planned_ids() == [3, 4, 5] and coord.next_batch_id() == 6
