"""Runner flags beam_zdl sets, how a runner's failure text becomes an error, how the Flink
job server's output is filtered: pure logic, no runner started."""

from __future__ import annotations

import logging
import pickle

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_zdl.errors import BatchFailedError
from beam_zdl.runners import (FlinkOptions, apply_runner_defaults, batch_failure, is_flink,
                              reports_failure_as_text)


def _forwarded(options: PipelineOptions) -> dict:
    """What a portable runner sends to the job server (as PortableRunner builds it)."""
    return options.get_all_options(drop_default=True)


@pytest.mark.parametrize("runner", ["FlinkRunner", "flink",
                                    "apache_beam.runners.portability.flink_runner.FlinkRunner"])
def test_flink_gets_finish_bundle_before_checkpointing_with_a_log_line(runner, caplog):
    options = PipelineOptions([f"--runner={runner}", "--streaming",
                               "--checkpointing_interval=1000"])
    with caplog.at_level(logging.INFO, logger="beam_zdl.runners"):
        apply_runner_defaults(options)
    assert _forwarded(options)["finish_bundle_before_checkpointing"] is True
    assert _forwarded(options)["checkpointing_interval"] == 1000
    assert "PR #12345" in caplog.text


@pytest.mark.parametrize("flag, want", [("--finish_bundle_before_checkpointing", True),
                                        ("--finish_bundle_before_checkpointing=true", True),
                                        ("--finish_bundle_before_checkpointing=false", False)])
def test_a_value_the_user_set_is_kept(flag, want):
    options = PipelineOptions(["--runner=FlinkRunner", "--streaming", flag])
    apply_runner_defaults(options)
    assert options.view_as(FlinkOptions).finish_bundle_before_checkpointing is want


@pytest.mark.parametrize("runner", [None, "PrismRunner", "DirectRunner", "DataflowRunner"])
def test_other_runners_are_left_alone(runner):
    options = PipelineOptions([f"--runner={runner}"] if runner else [])
    apply_runner_defaults(options)
    assert not is_flink(options)
    assert "finish_bundle_before_checkpointing" not in _forwarded(options)


# The shape of Beam's error for a batch that failed on Flink (tests/test_flink_cluster.py
# asserts the same on the real cluster): Java's wrapper, the worker's Python traceback,
# then Java frames and causes.
_FLINK_FAILURE = (
    "Pipeline BeamApp-root-1203-faeda93c failed in state FAILED: java.lang.RuntimeException: "
    "Error received from SDK harness for instruction 4: Traceback (most recent call last):\n"
    '  File "apache_beam/runners/common.py", line 1498, in process\n'
    "    return self.do_fn_invoker.invoke_process(windowed_value)\n"
    "ValueError: poison record at offset 0 of partition 1 [while running 'Map(_check)']\n"
    "\n\tat org.apache.beam.runners.fnexecution.control.FnApiControlClient.onNext(X.java:1)\n"
    "java.lang.IllegalStateException: a later Java cause\n")


def test_a_batch_failed_on_flink_names_the_batch_job_and_worker_error():
    error = batch_failure(RuntimeError(_FLINK_FAILURE), 7, "FlinkRunner")
    assert isinstance(error, BatchFailedError)
    assert (error.batch_id, error.runner, error.job_id) == (7, "FlinkRunner",
                                                            "BeamApp-root-1203-faeda93c")
    assert error.summary == ("ValueError: poison record at offset 0 of partition 1 "
                             "[while running 'Map(_check)']")
    assert str(error).startswith("batch 7 failed on FlinkRunner (job BeamApp-root-1203-"
                                 f"faeda93c): {error.summary}. The batch stays pending")
    assert error.reason.endswith("a later Java cause")  # the runner's whole text
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.reason) == (str(error), error.reason)


def test_a_failure_without_a_python_traceback_quotes_its_first_line():
    error = batch_failure(RuntimeError("Pipeline j1 failed in state CANCELLED: cancelled by "
                                       "the user\nmore"), 2, "PrismRunner")
    assert str(error).startswith("batch 2 failed on PrismRunner (job j1): cancelled by the "
                                 "user. ")


def test_only_the_local_runner_raises_the_workers_own_exception():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    assert not reports_failure_as_text(FnApiRunner())
    assert reports_failure_as_text("FlinkRunner") and reports_failure_as_text("PrismRunner")


def test_batches_on_flink_skip_beams_pip_freeze_for_the_run_only():
    """Beam runs `pip freeze` for every pipeline it submits to a job service (0.36 s of a
    tiny batch on Flink); flink_job_server turns it off while the run lasts."""
    from apache_beam.options.pipeline_options import DebugOptions

    from beam_zdl.runners import flink_job_server
    options = PipelineOptions(["--runner=FlinkRunner", "--job_endpoint=localhost:1",
                               "--experiments=mine"])
    debug = options.view_as(DebugOptions)
    with flink_job_server(options) as endpoint:
        assert endpoint == "localhost:1"  # given: used as is, nothing started
        assert debug.lookup_experiment("disable_logging_submission_environment")
        assert _forwarded(options)["experiments"] == [
            "mine", "disable_logging_submission_environment"]
    assert debug.experiments == ["mine"]
    streaming = PipelineOptions(["--runner=FlinkRunner", "--streaming"])
    with flink_job_server(streaming):
        assert not streaming.view_as(DebugOptions).lookup_experiment(
            "disable_logging_submission_environment")


def test_a_beam_zdl_error_raised_on_a_worker_is_the_same_class_on_every_runner():
    """`except DataLossError` catches a gap found on a Flink worker as on the local runner;
    the runner's text stays reachable through the cause."""
    from beam_zdl.errors import ConfigError, DataLossError, WalCorruptionError
    for cls, text in [(DataLossError, "offsets [10, 40) of partition t-1 are gone"),
                      (WalCorruptionError, "segment s-0001: bad CRC at byte 4096"),
                      (ConfigError, "--topics is empty")]:
        failure = _FLINK_FAILURE.replace("ValueError: poison record at offset 0 of "
                                         "partition 1", f"{cls.__module__}.{cls.__name__}: "
                                         f"{text}")
        cause = RuntimeError(failure)
        error = batch_failure(cause, 7, "FlinkRunner")
        assert type(error) is cls
        assert str(error).startswith(f"{text} [while running 'Map(_check)'] (raised in batch "
                                     "7 on FlinkRunner (job BeamApp-root-1203-faeda93c); the "
                                     "batch stays pending")
        assert isinstance(error.__cause__, BatchFailedError)
        assert error.__cause__.__cause__ is cause
        assert error.__cause__.reason.endswith("a later Java cause")


def test_an_error_of_another_package_with_a_beam_zdl_name_stays_a_batch_failure():
    failure = _FLINK_FAILURE.replace("ValueError:", "mypkg.errors.DataLossError:")
    assert type(batch_failure(RuntimeError(failure), 1, "FlinkRunner")) is BatchFailedError


def test_the_job_servers_lines_go_to_a_file_and_only_warnings_and_errors_on():
    """The filter beam_zdl gives Beam for the Flink job server's output (relayed by Beam's
    thread `log_stdout`): a JVM line before the job server's first is let through, an INFO
    line and its continuation are not, a WARN's first line is, an ERROR's trace is."""
    from pathlib import Path

    from beam_zdl.runners import JOB_SERVER_LOGGER, _JobServerLog
    lines = [
        ("SLF4J: Class path contains multiple SLF4J bindings.", logging.WARNING),
        ("[main] INFO org.apache.beam.runners.jobsubmission.JobServerDriver - JobService "
         "started on localhost:8099", None),
        ("[flink-runner-job-invoker-0] INFO org.apache.flink.X - accumulators:", None),
        ('{ "NAMESPACE": "beam_zdl" }', None),
        ("[MapPartition (MapPartition at [3]{ReadBatch}) (1/1)#0] WARN org.apache.beam.Y - "
         "Error cleaning up servers urn: \"beam:env:external:v1\"", logging.WARNING),
        ("java.lang.IllegalStateException: call already closed", None),
        ("[grpc-default-executor-0] ERROR org.apache.beam.Z - job failed", logging.ERROR),
        ("java.lang.RuntimeException: ValueError: poison", logging.ERROR),
        ("\tat org.apache.beam.Z.run(Z.java:1)", logging.ERROR),
        ("[main] INFO org.apache.beam.W - done", None),
    ]
    logging.getLogger(JOB_SERVER_LOGGER).setLevel(logging.INFO)  # as a user may leave it
    log = _JobServerLog()
    try:
        relayed = []
        for line, want in lines:
            record = logging.LogRecord(JOB_SERVER_LOGGER, logging.INFO, __file__, 1, line,
                                       None, None, func="log_stdout")
            relayed.append(record.levelno if log.filter(record) else None)
        assert relayed == [want for _, want in lines]
        other = logging.LogRecord(JOB_SERVER_LOGGER, logging.INFO, __file__, 1, "x", None, None)
        assert log.filter(other)  # not a line of the job server's output: left alone
    finally:
        log.close()
    assert Path(log.path).read_text().splitlines() == [line for line, _ in lines]
    Path(log.path).unlink()

    # The level the user gave the logger still holds (Beam sets INFO when it starts).
    logger = logging.getLogger(JOB_SERVER_LOGGER)
    logger.setLevel(logging.ERROR)
    log = _JobServerLog()
    logger.setLevel(logging.INFO)
    try:
        kept = [log.filter(logging.LogRecord(JOB_SERVER_LOGGER, logging.INFO, __file__, 1,
                                             line, None, None, func="log_stdout"))
                for line, _ in lines[1:]]
    finally:
        log.close()
    Path(log.path).unlink()
    assert kept == [want == logging.ERROR for _, want in lines[1:]]
    assert logger.level == logging.ERROR
    logger.setLevel(logging.NOTSET)
