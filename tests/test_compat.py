"""Every private Beam / client API beam_zdl uses (beam_zdl/compat.py) still behaves.

Each test names the Beam version it was checked against (``compat.CHECKED_BEAM``,
the minor versions pyproject.toml pins) and fails naming the installed one, so an
upgrade that changes a private API is caught here, not as a silent misbehaviour in a
read. When a fast path's check fails, a WARNING says so once per process.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import apache_beam as beam
import google.api_core.exceptions as gexc
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow
from google.cloud import storage as gcs

import beam_zdl.compat as compat

BEAM = (f"apache-beam {beam.__version__} (beam_zdl.compat checked against "
        f"{', '.join(compat.CHECKED_BEAM)})")
ROOT = Path(__file__).resolve().parents[1]
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
                                 compat.runner_provision_info(self)))
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


def test_beam_is_pinned_to_the_checked_minor_versions():
    """pyproject.toml allows exactly the minor versions compat was checked against, and
    the installed Beam is one of them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    beam_req = next(r for r in project["dependencies"] if r.startswith("apache-beam"))
    pin = re.fullmatch(r"apache-beam>=(\d+)\.(\d+),<(\d+)\.(\d+)", beam_req)
    assert pin, f"pin apache-beam to minor versions (>=2.X,<2.Y): {beam_req}"
    low, high = (int(pin[1]), int(pin[2])), (int(pin[3]), int(pin[4]))
    allowed = {f"{low[0]}.{minor}" for minor in range(low[1], high[1])}
    assert low[0] == high[0] and allowed == set(compat.CHECKED_BEAM), (beam_req, BEAM)
    installed = ".".join(beam.__version__.split(".")[:2])
    assert installed in compat.CHECKED_BEAM, f"{BEAM}: not a checked version"


def test_every_fast_path_is_on_for_this_beam(caplog):
    checks = [compat.handler_managers_reusable, compat.impulse_payloads_supported,
              compat.dofn_checks_cacheable, compat.option_views_memoizable]
    with caplog.at_level("WARNING", logger="beam_zdl.compat"):
        assert [check() for check in checks] == [True] * len(checks), \
            f"{BEAM}: a fast path is off: " + " | ".join(r.getMessage() for r in caplog.records)
    assert caplog.records == []


def test_a_fast_path_turned_off_is_said_once_per_process_with_the_reason():
    """A Beam that differs (here: a private method removed, in a child process) turns the
    fast path off, and one WARNING names it and what is missing, however often it is
    asked."""
    script = """
import logging
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
from apache_beam.runners.portability.fn_api_runner import execution, fn_runner
del fn_runner.FnApiRunner._get_bundle_manager
del execution.FnApiRunnerExecutionContext._enqueue_stage_initial_inputs
import beam_zdl.compat as compat
from beam_zdl.worker_pool import feeds_payload_impulses, WarmRunner
print([compat.handler_managers_reusable() for _ in range(3)],
      [feeds_payload_impulses(WarmRunner(None, "in_memory")) for _ in range(3)],
      compat.option_views_memoizable(), flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[False, False, False] [False, False, False] True"
    warnings = [line for line in proc.stderr.splitlines()
                if line.startswith("WARNING beam_zdl.compat")]
    assert len(warnings) == 2, proc.stderr[-3000:]
    session, impulse = sorted(warnings, key=lambda w: "impulse" in w)
    assert "fast path 'runner session' is off" in session
    assert "FnApiRunner has no _get_bundle_manager" in session
    assert f"apache-beam {beam.__version__}" in session
    assert "fast path 'impulse payloads' is off" in impulse
    assert "has no _enqueue_stage_initial_inputs" in impulse
    assert "Results are the same, only slower" in impulse


def test_option_views_built_from_a_parse_are_beams_views():
    import copy

    from apache_beam.options.pipeline_options import (DebugOptions, PipelineOptions,
                                                      StandardOptions)
    flags = ["--runner=FnApiRunner", "--experiments=a"]
    options = PipelineOptions(flags)
    assert compat.options_flags(options) == flags, f"{BEAM}: PipelineOptions._flags changed"
    assert compat.options_flags(PipelineOptions()) is None, \
        f"{BEAM}: options from sys.argv no longer keep _flags None"
    beams = options.view_as(DebugOptions)
    view = compat.view_from_parse(DebugOptions, flags, copy.deepcopy(compat.view_parse(beams)),
                                  compat.options_values(options))
    assert type(view) is DebugOptions and view.experiments == beams.experiments == ["a"], \
        f"{BEAM}: PipelineOptions._visible_options changed"
    assert compat.options_values(view) is compat.options_values(options), \
        f"{BEAM}: views no longer share _all_options"
    view.experiments = ["b"]  # set in one view: seen in all, as Beam's views do
    assert options.view_as(DebugOptions).experiments == ["b"]
    standard = compat.view_from_parse(
        StandardOptions, flags, copy.deepcopy(compat.view_parse(options.view_as(StandardOptions))),
        compat.options_values(options))
    standard.streaming = True
    assert options.view_as(StandardOptions).streaming is True
    assert standard.runner == "FnApiRunner"
    assert compat.option_views_memoizable(), f"{BEAM}: a view built from a parse differs"


def _in_thread_handler_class(started):
    """A GrpcWorkerHandler that serves a pipeline with an SDK harness thread."""
    from apache_beam.runners.portability.fn_api_runner.worker_handlers import (
        FNAPI_RUNNER_CAPABILITIES, GrpcWorkerHandler)
    from apache_beam.runners.worker.sdk_worker import SdkHarness

    class InThread(GrpcWorkerHandler):
        def __init__(self, payload, state, provision_info, grpc_server):
            super().__init__(state, provision_info, grpc_server)
            started.append(payload)

        def start_worker(self):
            threading.Thread(target=SdkHarness(
                self.control_address, worker_id=self.worker_id,
                runner_capabilities=frozenset(FNAPI_RUNNER_CAPABILITIES)).run,
                daemon=True).start()

        def stop_worker(self):
            pass  # the harness ends when the runner closes its control stream

    return InThread


def test_register_worker_handler_serves_an_environment_urn():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    urn = "beam:env:beam_zdl_compat_test:v1"
    started = []
    compat.register_worker_handler(urn, bytes, _in_thread_handler_class(started))

    class OwnEnvironment(FnApiRunner):
        def run_via_runner_api(self, pipeline_proto, options):
            for env in pipeline_proto.components.environments.values():
                env.urn, env.payload = urn, b"the payload"
            return super().run_via_runner_api(pipeline_proto, options)

    with beam.Pipeline(runner=OwnEnvironment()) as p:
        assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x * 10), equal_to([10, 20]))
    assert started and set(started) == {b"the payload"}, \
        f"{BEAM}: WorkerHandler.register_environment no longer serves the URN"


def test_bundle_managers_pass_through_the_hook_and_tokens_are_prefixed():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    made = []

    @compat.hooks_bundle_managers
    class Hooked(FnApiRunner):
        def bundle_manager_made(self, manager):
            compat.prefix_cache_tokens(manager, b"zdl-hooked-")
            made.append(manager)

    with beam.Pipeline(runner=Hooked()) as p:
        assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x + 1), equal_to([2, 3]))
    assert made, f"{BEAM}: FnApiRunner no longer builds bundle managers in _get_bundle_manager"
    token = next(made[0]._cache_token_generator)
    assert token.token.startswith(b"zdl-hooked-"), f"{BEAM}: cache tokens changed shape"
    assert compat.runner_provision_info(Hooked()).provision_info.retrieval_token, \
        f"{BEAM}: FnApiRunner._provision_info changed"


def test_abort_control_requests_fails_what_the_runner_waits_on():
    from apache_beam.portability.api import beam_fn_api_pb2
    from apache_beam.runners.portability.fn_api_runner.worker_handlers import ControlConnection

    class Handler:  # what a worker handler is to Beam's runner here: its control connection
        control_conn = ControlConnection()

    future = Handler.control_conn.push(beam_fn_api_pb2.InstructionRequest(instruction_id="i1"))
    lost = RuntimeError("worker lost")
    compat.abort_control_requests(Handler(), lost)
    with pytest.raises(RuntimeError, match="worker lost"):
        future.get(timeout=5)


def test_filter_job_server_output_sees_every_line_the_job_server_prints():
    """Beam relays a job server's output line by line through the filter, from its thread
    function `log_stdout` (beam_zdl.runners writes the lines to a file and relays only
    warnings and errors). A process that prints and exits without serving is enough: Beam
    gives up on it after its retries."""
    import sys

    from apache_beam.runners.portability.job_server import SubprocessJobServer

    class Printer(SubprocessJobServer):
        def subprocess_cmd_and_endpoint(self):
            return ([sys.executable, "-c",
                     "import time; print('[main] WARN x - from the job server', flush=True); "
                     "time.sleep(0.5)"], "localhost:1")

    seen = []

    class Seen(logging.Filter):
        def filter(self, record):
            seen.append((record.funcName, record.getMessage()))
            return False

    server, log_filter = Printer(), Seen()
    compat.filter_job_server_output(server, log_filter)
    try:
        with pytest.raises(RuntimeError):
            server.start()
    finally:
        logging.getLogger("Printer").removeFilter(log_filter)
        server.stop()
    assert ("log_stdout", "[main] WARN x - from the job server") in seen, \
        f"{BEAM}: a job server's output no longer passes through SubprocessJobServer's " \
        f"_log_filter (seen: {seen[:3]})"
