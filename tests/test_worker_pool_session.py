"""One runner session for the batches of a run (beam_zdl.worker_pool.WarmRunner): workers,
harnesses and bundle processors are kept from batch to batch, and yet every batch reads
exactly its planned ranges, sees only its own side inputs and user state, and a build_fn
that changes its pipeline per batch gets what it built.

Each case runs with the in-process worker (``in_memory``) and with two workers (one a
warm process); outputs are checked in real files, one per batch.
"""

from __future__ import annotations

import json
import os
import uuid

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.userstate import BagStateSpec

import beam_zdl
import beam_zdl.worker_pool as worker_pool
from beam_zdl.coordinator import CheckpointCoordinator
from tests.beam_helpers import MULTI_WORKER
from tests.driver_proc import read_batches, write_batch

MODES = {"in_memory": ["--direct_num_workers=1"], "two_workers": MULTI_WORKER}


def _options(kafka, topic, tmp_path, mode, *extra):
    return beam_zdl.ZdlOptions([
        f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
        f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--consumer_group=g-{topic}",
        "--starting_offsets=earliest", "--trigger=available_now",
        "--max_records_per_partition=25", *MODES[mode], *extra])


def _topic(kafka):
    """400 records, 4 partitions; 25 per partition and batch make 4 batches of 100."""
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((None, f"v{i}".encode(), i % 4) for i in range(400)))
    return topic


def _uneven_topic(kafka):
    """Partition p holds 20 * (p + 1) records: batches of 95, 65, 35 and 5 records."""
    topic = kafka.create_topic(partitions=4)
    kafka.produce(topic, ((None, f"v{p}-{i}".encode(), p) for p in range(4)
                          for i in range(20 * (p + 1))))
    return topic


def _planned(tmp_path) -> dict[int, list[tuple]]:
    """Every completed batch's planned offsets, as sorted (topic, partition, offset)."""
    coord = CheckpointCoordinator(str(tmp_path / "ckpt"))
    assert coord.pending() == []
    return {b: sorted((r.topic, r.partition, o) for r in coord.read_plan(b).ranges
                      for o in range(r.start, r.stop))
            for b in coord.completed_ids()}


class _MarkSetup(beam.DoFn):
    """Leaves one file per ``setup`` call: how many DoFn instances were built."""

    def __init__(self, marks: str) -> None:
        self._marks = marks

    def setup(self) -> None:
        open(os.path.join(self._marks, uuid.uuid4().hex), "w").close()

    def process(self, record):
        yield record


class _CountPerKey(beam.DoFn):
    """User state: the number of elements seen for the key so far, emitted with each."""
    SEEN = BagStateSpec("seen", beam.coders.VarIntCoder())

    def process(self, element, seen=beam.DoFn.StateParam(SEEN)):
        key, offset = element
        seen.add(offset)
        yield [offset, len(list(seen.read()))]


@pytest.mark.parametrize("mode", MODES)
def test_an_unchanged_stage_is_reused_and_every_batch_reads_its_own_ranges(
        kafka, tmp_path, mode):
    topic = _topic(kafka)
    out, marks = tmp_path / "out", tmp_path / "marks"
    out.mkdir()
    marks.mkdir()

    def build(records, batch):
        # The reading stage is the same in every batch (only the write, after a shuffle,
        # names the batch): its DoFns are set up once per worker, not once per batch.
        (records
         | beam.ParDo(_MarkSetup(str(marks)))
         | beam.Map(lambda r: [r.topic, r.partition, r.offset])
         | beam.combiners.ToList()
         | beam.Map(write_batch, str(out), batch.batch_id))

    summary = beam_zdl.run_micro_batches(build, _options(kafka, topic, tmp_path, mode))

    assert summary.batches == 4 and summary.records == 400
    batches = read_batches(out)
    assert {b: sorted(rows) for b, rows in batches.items()} == _planned(tmp_path)
    assert len(os.listdir(marks)) <= len(MODES[mode]), \
        f"{len(os.listdir(marks))} setups for {summary.batches} batches: nothing was reused"


@pytest.mark.parametrize("mode", MODES)
def test_a_build_fn_that_changes_per_batch_gets_its_own_pipeline(
        kafka, tmp_path, mode, monkeypatch):
    # Few stages per session: sessions are also closed and reopened during the run.
    monkeypatch.setattr(worker_pool, "MAX_SESSION_DESCRIPTORS", 6)
    topic = _topic(kafka)
    out = tmp_path / "out"
    out.mkdir()

    def build(records, batch):
        # The batch id is in the reading stage itself: a new stage every batch.
        (records
         | beam.Map(lambda r, b: [b, r.topic, r.partition, r.offset], batch.batch_id)
         | beam.combiners.ToList()
         | beam.Map(write_batch, str(out), batch.batch_id))

    summary = beam_zdl.run_micro_batches(build, _options(kafka, topic, tmp_path, mode))

    assert summary.batches == 4 and summary.records == 400
    batches = read_batches(out)
    for batch_id, rows in batches.items():
        assert {b for b, *_ in rows} == {batch_id}, f"batch {batch_id} ran another's DoFn"
    assert {b: sorted(tuple(r[1:]) for r in rows) for b, rows in batches.items()} == \
        _planned(tmp_path)


@pytest.mark.parametrize("mode", MODES)
def test_side_inputs_and_user_state_start_empty_in_every_batch(kafka, tmp_path, mode):
    topic = _uneven_topic(kafka)  # batches of different sizes: a stale count shows
    out_side, out_state = tmp_path / "side", tmp_path / "state"
    out_side.mkdir()
    out_state.mkdir()

    def build(records, batch):
        count = records | beam.combiners.Count.Globally()
        (records
         | "WithCount" >> beam.Map(lambda r, n: [r.partition, r.offset, n],
                                   n=beam.pvalue.AsSingleton(count))
         | "SideRows" >> beam.combiners.ToList()
         | "WriteSide" >> beam.Map(write_batch, str(out_side), batch.batch_id))
        (records
         | beam.Map(lambda r: ("one key", r.offset))
         | beam.ParDo(_CountPerKey())
         | "StateRows" >> beam.combiners.ToList()
         | "WriteState" >> beam.Map(write_batch, str(out_state), batch.batch_id))

    summary = beam_zdl.run_micro_batches(build, _options(kafka, topic, tmp_path, mode))

    assert summary.batches == 4 and summary.records == 200
    planned = _planned(tmp_path)
    assert sorted(len(offsets) for offsets in planned.values()) == [5, 35, 65, 95]
    for batch_id, rows in read_batches(out_side).items():
        assert {n for *_, n in rows} == {len(planned[batch_id])}, \
            f"batch {batch_id} saw another batch's side input"
    for batch_id, rows in read_batches(out_state).items():
        assert sorted(seen for _, seen in rows) == list(range(1, len(planned[batch_id]) + 1)), \
            f"batch {batch_id}'s state held another batch's elements"


def test_warm_runner_runs_pipelines_with_the_same_shape_and_other_data():
    """Without Kafka: pipelines that differ only in their Create values (the shape of a
    batch whose ranges differ) on one in-process session."""
    runner = worker_pool.WarmRunner(None, "in_memory")
    try:
        for values in ([1, 2, 3], [10, 20], [7]):
            with beam.Pipeline(runner=runner) as p:
                doubled = p | "Values" >> beam.Create(values) | beam.Map(lambda x: 2 * x)
                assert_that(doubled, equal_to([2 * v for v in values]))
                total = p | "Again" >> beam.Create(values) | beam.CombineGlobally(sum)
                assert_that(total, equal_to([sum(values)]), label="Total")
        assert runner._session is not None, "the runner kept no session"
    finally:
        runner.close()
    assert runner._session is None


def test_records_counted_per_batch_with_a_reused_reader(kafka, tmp_path):
    """The records counter of each batch (its completion) counts that batch only."""
    topic = _topic(kafka)

    def build(records, batch):
        records | beam.Map(lambda r: None)

    beam_zdl.run_micro_batches(build, _options(kafka, topic, tmp_path, "two_workers"))

    coord = CheckpointCoordinator(str(tmp_path / "ckpt"))
    planned = _planned(tmp_path)
    for batch_id, offsets in planned.items():
        assert coord.read_completion(batch_id).records == len(offsets)


@pytest.mark.parametrize("mode", MODES)
def test_ranges_reach_the_read_as_data_so_its_stages_are_the_same_every_batch(
        kafka, tmp_path, mode, monkeypatch):
    # Batches of 95, 65, 35 and 5 records: partitions drop out as they run dry, so the
    # ranges differ in number and size from batch to batch.
    topic = _uneven_topic(kafka)
    out = tmp_path / "out"
    out.mkdir()
    registered: list[set[str]] = []
    register = worker_pool._SessionHandlers.register_process_bundle_descriptor

    def record(self, descriptor):
        register(self, descriptor)
        registered[-1].add(descriptor.id)

    monkeypatch.setattr(worker_pool._SessionHandlers, "register_process_bundle_descriptor",
                        record)

    def build(records, batch):
        registered.append(set())
        (records
         | beam.Map(lambda r: [r.topic, r.partition, r.offset])
         | beam.combiners.ToList()
         | beam.Map(write_batch, str(out), batch.batch_id))

    summary = beam_zdl.run_micro_batches(build, _options(kafka, topic, tmp_path, mode))

    assert summary.batches == 4 and summary.records == 200
    planned = _planned(tmp_path)
    assert sorted(len(offsets) for offsets in planned.values()) == [5, 35, 65, 95]
    assert {b: sorted(tuple(r) for r in rows) for b, rows in read_batches(out).items()} == \
        planned
    # Only the write names the batch: every other stage, the one the ranges reach
    # included, is the same descriptor in every batch.
    shared = set.intersection(*registered)
    assert all(len(ids - shared) <= 1 for ids in registered), \
        f"stages rebuilt per batch: {[sorted(ids - shared) for ids in registered]}"
    assert len(shared) >= 2


def test_a_read_without_its_ranges_fails_instead_of_reading_nothing():
    """A PayloadImpulse run where nothing hands it its payload emits b"": the read's
    decode refuses it (a batch that read nothing would be completed and lost)."""
    from beam_zdl.microbatch.batch_ranges import decode_groups
    with pytest.raises(beam_zdl.ZdlError, match="did not hand this read its ranges"):
        decode_groups(b"")
