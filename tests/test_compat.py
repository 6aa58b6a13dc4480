"""Every private Beam / client API beam_zdl uses (beam_zdl/compat.py) still behaves.

Each test fails naming the installed version, so an upgrade that changes a
private API is caught here, not as a silent misbehaviour in a read.
"""

from __future__ import annotations

import apache_beam as beam
import google.api_core.exceptions as gexc
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow
from google.cloud import storage as gcs

import beam_zdl.compat as compat

BEAM = f"apache-beam {beam.__version__}"
GCS = f"google-cloud-storage {gcs.__version__}"


def test_windowed_value_is_passed_on_as_is_by_a_dofn():
    wv = compat.windowed_value_maker()("x", 5_000_000, (GlobalWindow(),))
    assert (wv.value, wv.timestamp.micros, tuple(wv.windows)) == \
        ("x", 5_000_000, (GlobalWindow(),)), f"{BEAM}: windowed_value.create changed"

    class EmitWindowed(beam.DoFn):
        def process(self, element, window=beam.DoFn.WindowParam):
            yield compat.windowed_value_maker()(element, 7_000_000, (window,))

    class Stamp(beam.DoFn):
        def process(self, element, ts=beam.DoFn.TimestampParam):
            yield (element, ts.micros)

    with beam.Pipeline() as p:
        out = p | beam.Create(["a", "b"]) | beam.ParDo(EmitWindowed()) | beam.ParDo(Stamp())
        # If Beam stopped passing a yielded WindowedValue on as is, the element would be
        # the WindowedValue itself (wrapped again) with the input's timestamp.
        assert_that(out, equal_to([("a", 7_000_000), ("b", 7_000_000)]))


def test_offset_tracker_private_state():
    tracker = OffsetRestrictionTracker(OffsetRange(10, 100))
    assert compat.tracker_last_attempt(tracker) is None, \
        f"{BEAM}: OffsetRestrictionTracker._last_claim_attempt changed"
    assert tracker.try_claim(12)
    assert compat.tracker_last_attempt(tracker) == 12, \
        f"{BEAM}: OffsetRestrictionTracker._last_claim_attempt no longer tracks try_claim"
    assert not compat.tracker_checkpointed(tracker)
    tracker.try_split(0)
    assert compat.tracker_checkpointed(tracker), \
        f"{BEAM}: OffsetRestrictionTracker._checkpointed no longer set by try_split(0)"
    assert tracker.try_split(0) is None, f"{BEAM}: a checkpointed tracker split again"

    other = OffsetRestrictionTracker(OffsetRange(0, 50))
    compat.mark_tracker_checkpointed(other)
    assert other.try_split(0) is None, \
        f"{BEAM}: try_split(0) no longer honours _checkpointed"
    compat.set_tracker_range(other, OffsetRange(0, 20))
    assert other.current_restriction() == OffsetRange(0, 20), \
        f"{BEAM}: OffsetRestrictionTracker._range is not current_restriction()"
    assert not other.try_claim(20), f"{BEAM}: try_claim ignores _range"


@pytest.mark.parametrize("exc, transient", [
    (gexc.ServiceUnavailable("down"), True),
    (gexc.TooManyRequests("slow down"), True),
    (ConnectionError("reset"), True),
    (gexc.PreconditionFailed("exists"), False),
    (gexc.NotFound("gone"), False),
])
def test_gcs_transient_predicate(exc, transient):
    assert compat.gcs_transient_predicate()(exc) is transient, \
        f"{GCS}: DEFAULT_RETRY._predicate changed its idea of a transient {type(exc).__name__}"


def test_cached_dofn_specs_answer_as_beam_does_and_once_per_class():
    from apache_beam.transforms import userstate
    from apache_beam.transforms.userstate import BagStateSpec

    class Stateful(beam.DoFn):
        BAG = BagStateSpec("bag", beam.coders.StrUtf8Coder())

        def process(self, element, bag=beam.DoFn.StateParam(BAG)):
            yield element

    class Plain(beam.DoFn):
        def process(self, element):
            yield element

    class Holder:
        def method(self, element, bag=beam.DoFn.StateParam(Stateful.BAG)):
            return element

    original = userstate.get_dofn_specs
    expected = {name: original(dofn) for name, dofn in
                [("stateful", Stateful()), ("plain", Plain()),
                 ("bound", beam.transforms.core.CallableWrapperDoFn(Holder().method))]}
    calls = []

    def counting(dofn):
        calls.append(type(dofn).__name__)
        return original(dofn)

    userstate.get_dofn_specs = counting
    try:
        with compat.cached_dofn_specs():
            assert userstate.get_dofn_specs is not counting, \
                f"{BEAM}: userstate.get_dofn_specs is no longer the module function Beam calls"
            for _ in range(3):
                assert userstate.is_stateful_dofn(Stateful()) and \
                    not userstate.is_stateful_dofn(Plain())
                assert userstate.get_dofn_specs(Stateful()) == expected["stateful"]
                assert userstate.get_dofn_specs(Plain()) == expected["plain"]
                # An instance holding its own bound method is asked every time.
                bound = beam.transforms.core.CallableWrapperDoFn(Holder().method)
                assert userstate.get_dofn_specs(bound) == expected["bound"]
            # A pipeline built inside the block still knows a stateful DoFn.
            with beam.Pipeline() as p:
                (p | beam.Create([("k", "a")]) | beam.ParDo(Stateful()))
        assert userstate.get_dofn_specs is counting, "the original was not restored"
    finally:
        userstate.get_dofn_specs = original
    assert calls.count("Stateful") == 1 and calls.count("Plain") == 1, calls
    assert calls.count("CallableWrapperDoFn") >= 3, calls  # (Create uses them too)


def test_handler_managers_reusable_on_this_beam():
    assert compat.handler_managers_reusable(), (
        f"{BEAM}: FnApiRunner no longer builds its WorkerHandlerManager by module name, or "
        "BundleManager no longer holds _cache_token_generator: every batch now gets its own "
        "manager (slower, still correct); adapt beam_zdl.compat")


def test_reuse_handler_manager_runs_pipelines_on_the_given_manager():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner, fn_runner
    from apache_beam.runners.portability.fn_api_runner.worker_handlers import (
        WorkerHandlerManager)
    original = fn_runner.WorkerHandlerManager
    kept = []

    class Kept(WorkerHandlerManager):
        closes = 0

        def close_all(self):  # what Beam calls at the end of every pipeline
            self.closes += 1

        def register_process_bundle_descriptor(self, descriptor):
            # Beam's ids repeat from pipeline to pipeline (see worker_pool._SessionHandlers)
            if not descriptor.id.startswith("run"):
                descriptor.id = f"run{self.closes}-{descriptor.id}"
            super().register_process_bundle_descriptor(descriptor)

    class OneManager(FnApiRunner):
        def run_stages(self, stage_context, stages):
            if not kept:
                kept.append(Kept(stage_context.components.environments,
                                 self._provision_info))
            with compat.reuse_handler_manager(kept[0]):
                return super().run_stages(stage_context, stages)

    try:
        for values in ([1, 2], [5]):
            with beam.Pipeline(runner=OneManager()) as p:
                assert_that(p | beam.Create(values) | beam.Map(lambda x: x + 1),
                            equal_to([v + 1 for v in values]))
        assert kept[0].closes == 2, f"{BEAM}: run_stages did not run on the given manager"
    finally:
        if kept:
            WorkerHandlerManager.close_all(kept[0])
    assert fn_runner.WorkerHandlerManager is original, "the patch was not removed"


def test_clear_runner_state_empties_the_state_servicer():
    from apache_beam.portability.api import beam_fn_api_pb2
    from apache_beam.runners.portability.fn_api_runner.worker_handlers import StateServicer
    servicer = StateServicer()
    key = beam_fn_api_pb2.StateKey(runner=beam_fn_api_pb2.StateKey.Runner(key=b"k"))
    servicer.append_raw(key, b"data")
    assert servicer.get_raw(key)[0] == b"data"
    compat.clear_runner_state(servicer)
    assert servicer.get_raw(key)[0] == b"", f"{BEAM}: StateServicer kept state"


def test_prefix_cache_tokens_prefixes_what_a_bundle_manager_sends():
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    manager = fn_runner.BundleManager(
        None, cache_token_generator=fn_runner.FnApiRunner.get_cache_token_generator(
            static=False))
    plain = next(fn_runner.FnApiRunner.get_cache_token_generator(static=False))
    compat.prefix_cache_tokens(manager, b"zdl-7-")
    token = next(manager._cache_token_generator)
    assert token.token == b"zdl-7-" + plain.token and token.HasField("user_state"), \
        f"{BEAM}: BundleManager's cache tokens changed shape"


def test_impulse_payloads_feed_the_named_impulse_only():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    assert compat.impulse_payloads_supported(), (
        f"{BEAM}: the FnApiRunner no longer enqueues Impulse elements as "
        "compat.impulse_payloads expects")
    with compat.impulse_payloads({"Data": b"the payload"}):
        with beam.Pipeline(runner=FnApiRunner()) as p:
            data = p | "Data" >> beam.Impulse() | "D" >> beam.Map(bytes)
            other = p | "Other" >> beam.Impulse() | "O" >> beam.Map(bytes)
            assert_that(data, equal_to([b"the payload"]), label="CheckData")
            assert_that(other, equal_to([b""]), label="CheckOther")
    # Outside the block (and in other contexts) every Impulse emits b"" again.
    with beam.Pipeline(runner=FnApiRunner()) as p:
        assert_that(p | "Data" >> beam.Impulse(), equal_to([b""]))


def test_yield_and_return_check_answers_as_beam_does_once_per_code_object():
    from apache_beam.transforms import core

    class Both(beam.DoFn):
        def process(self, element):
            if element:
                return [element]
            yield element

    class Yields(beam.DoFn):
        def process(self, element):
            yield element

    original = core._check_fn_use_yield_and_return
    expected = {"both": original(Both().process), "yields": original(Yields().process)}
    assert expected == {"both": True, "yields": False}, \
        f"{BEAM}: _check_fn_use_yield_and_return answers differently"
    calls = []

    def counting(fn):
        calls.append(fn)
        return original(fn)

    core._check_fn_use_yield_and_return = counting
    try:
        with compat.cached_dofn_specs():
            assert core._check_fn_use_yield_and_return is not counting, \
                f"{BEAM}: _check_fn_use_yield_and_return is no longer what ParDo calls"
            for _ in range(3):
                beam.ParDo(Both())
                beam.ParDo(Yields())
                beam.Map(lambda x: x)
            assert core._check_fn_use_yield_and_return(Both().process) is True
            assert core._check_fn_use_yield_and_return(Yields().process) is False
        assert core._check_fn_use_yield_and_return is counting, "the original was not restored"
    finally:
        core._check_fn_use_yield_and_return = original
    # Once per code object: Both.process, Yields.process, the Map's wrapper.
    assert len(calls) <= 3, calls
