"""Which Beam runner a beam_zdl pipeline runs on, and the runner flags it needs.

Flink
    Beam's Python ``FlinkRunnerOptions`` does not declare two Flink flags that
    beam_zdl's streaming read depends on, and FlinkRunner drops flags Python
    cannot parse. :class:`FlinkOptions` declares them, so they travel in the
    pipeline options to the job server:

    ``--checkpointing_interval``
        Flink finalizes bundles, and so beam_zdl commits offsets, only when a
        checkpoint completes: without it nothing is ever committed.
    ``--finish_bundle_before_checkpointing``
        Flink's Beam runner otherwise buffers a bundle's output during a
        checkpoint, and the output of the Impulse stage's first bundle, closed
        by the first checkpoint, is never flushed: the unbounded read then
        receives no partition at all (Beam's "Flushing of buffered elements
        during checkpoint can stall", apache/beam PR #12345, BEAM-10558).
        :func:`apply_runner_defaults` sets it when the runner is Flink and the
        user did not set it.

One job server per run
    Python's FlinkRunner starts a Beam job server (a JVM) for every pipeline
    it runs unless given ``--job_endpoint``, and stops none of them before
    the process exits: a micro-batch run on Flink would pay a JVM start per
    batch and keep one per batch alive. :func:`flink_job_server` starts one
    for a whole :func:`beam_zdl.run_micro_batches` call and points every
    batch at it; a ``--job_endpoint`` given by the user is used as is.

The job server's output
    Beam relays every line the job server prints to Python logging at INFO:
    about 550 lines per batch on a cluster (930 on ``[local]``, which starts
    an embedded Flink per job), JSON dumps of accumulators among them.
    :class:`_JobServerLog` writes them all to a file (its path logged once,
    when the job server starts) and relays to the logger
    ``beam_zdl.runners.flink_job_server`` only the job server's WARN lines
    (the first line of each) and ERROR lines (with their stack traces).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import re
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Iterator

from apache_beam.options.pipeline_options import (DebugOptions, FlinkRunnerOptions,
                                                  PipelineOptions, PortableOptions,
                                                  StandardOptions)

import beam_zdl.errors as errors
from beam_zdl.compat import filter_job_server_output
from beam_zdl.errors import BatchFailedError, ZdlError
from beam_zdl.options import parse_bool

if TYPE_CHECKING:
    from apache_beam.runners.runner import PipelineRunner

__all__ = ["FlinkOptions", "pipeline_runner", "is_flink", "apply_runner_defaults",
           "flink_job_server", "JOB_SERVER_LOGGER", "runner_name", "reports_failure_as_text",
           "batch_failure"]

_LOGGER = logging.getLogger(__name__)

_FLINK_NAMES = ("flinkrunner", "flink")


class FlinkOptions(PipelineOptions):
    """Flink runner flags Beam's Python SDK does not declare (see module doc)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--checkpointing_interval", type=int, default=None,
            help="Flink: milliseconds between checkpoints. Required for streaming "
                 "reads: Flink finalizes bundles (beam_zdl commits offsets) when a "
                 "checkpoint completes.")
        parser.add_argument(
            "--finish_bundle_before_checkpointing", type=parse_bool, nargs="?",
            const=True, default=None,
            help="Flink: finish the open bundle before a checkpoint instead of "
                 "buffering its output. beam_zdl sets it to true for streaming reads "
                 "on Flink unless given (buffered Impulse output is never flushed, "
                 "apache/beam PR #12345).")
        parser.add_argument(
            "--pipeline_resources_detector_factory_class", default=None,
            help="Job server: the Java class (a PipelineResourcesDetector.Factory) that "
                 "finds the jars a job stages. By default the job server's whole "
                 "classpath (about 150 MB) is uploaded for every job; a factory that "
                 "finds none suits a cluster with the runner on its classpath (see the "
                 "Flink guide).")


def is_flink(options: PipelineOptions, runner: object = None) -> bool:
    """Whether the pipeline runs on Flink (by ``--runner`` or the runner object)."""
    if runner is not None and type(runner).__name__.lower() in _FLINK_NAMES:
        return True
    name = options.view_as(StandardOptions).runner
    if name is None:
        return False
    if not isinstance(name, str):
        name = type(name).__name__
    return name.rsplit(".", 1)[-1].lower() in _FLINK_NAMES


def apply_runner_defaults(options: PipelineOptions, runner: object = None) -> None:
    """Set the runner flags a streaming read needs when the user did not set them.

    On Flink: ``--finish_bundle_before_checkpointing=true`` (see module doc),
    with a log line saying why.
    """
    if not is_flink(options, runner):
        return
    flink = options.view_as(FlinkOptions)
    if flink.finish_bundle_before_checkpointing is None:
        flink.finish_bundle_before_checkpointing = True
        _LOGGER.info(
            "beam_zdl: setting --finish_bundle_before_checkpointing on Flink: without "
            "it Flink's Beam runner buffers bundle output during a checkpoint and never "
            "flushes the Impulse stage's, so the streaming read receives no partition "
            "(apache/beam PR #12345); pass --finish_bundle_before_checkpointing=false "
            "to override")
    elif not flink.finish_bundle_before_checkpointing:
        _LOGGER.warning(
            "beam_zdl: --finish_bundle_before_checkpointing=false on Flink: a streaming "
            "read may receive no partition once checkpointing is on (apache/beam "
            "PR #12345)")
    if flink.checkpointing_interval is None and options.view_as(StandardOptions).streaming:
        _LOGGER.warning(
            "beam_zdl: streaming on Flink without --checkpointing_interval: Flink "
            "finalizes bundles only on completed checkpoints, so no offset will ever be "
            "committed to the consumer group; pass e.g. --checkpointing_interval=10000")


def pipeline_runner(options: PipelineOptions) -> PipelineRunner | str | None:
    """The runner for one bounded batch.

    The DirectRunner (Beam's default) first tries Prism, which it downloads at
    run time; bounded batches need none of that, so they run on the
    FnApiRunner, which honours ``--direct_num_workers`` and
    ``--direct_running_mode``; inside :func:`beam_zdl.run_micro_batches` its
    worker processes are those of the run's :mod:`beam_zdl.worker_pool`. Any
    other runner is used as given.
    """
    runner: PipelineRunner | str | None = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "direct", "FnApiRunner"):
        from beam_zdl.worker_pool import warm_runner
        warm = warm_runner(options)  # run_micro_batches keeps worker processes warm
        if warm is not None:
            return warm
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        return FnApiRunner()
    return runner


def runner_name(runner: object) -> str:
    """A runner's name for messages: the ``--runner`` string, or its class name."""
    return runner if isinstance(runner, str) else type(runner).__name__


def reports_failure_as_text(runner: object) -> bool:
    """Whether a failed pipeline on ``runner`` surfaces as the runner's text rather than
    the worker's exception: every runner but the local FnApiRunner (Flink and the other
    runners behind a Beam job service raise a RuntimeError holding the job's last error)."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    return not isinstance(runner, FnApiRunner)


# Beam's PortableRunner: "Pipeline <job id> failed in state FAILED: <the job's last error>".
_JOB_FAILED = re.compile(r"Pipeline (\S+) failed in state (\w+): (.*)", re.S)
# The exception line that ends a Python traceback (the worker's error, quoted in the
# runner's text after Java's); Beam appends " [while running '<step>']".
_PYTHON_ERROR = re.compile(r"^((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)"
                           r"(?:: .*)?)$", re.M)
_SUMMARY_CHARS = 600


def batch_failure(exc: BaseException, batch_id: int, runner: object) -> ZdlError:
    """The error for a batch whose pipeline failed on ``runner`` with ``exc``.

    A :class:`~beam_zdl.errors.BatchFailedError`: the job id and the worker's exception
    picked out of the runner's text (all of which the error keeps as ``reason``). When the
    worker raised one of beam_zdl's own errors (a ``DataLossError``, a
    ``WalCorruptionError``, ...), that class again, so ``except DataLossError`` means the
    same on every runner; its cause is the ``BatchFailedError``, whose cause is ``exc``.
    """
    text = str(exc) or type(exc).__name__
    job_id = ""
    if found := _JOB_FAILED.match(text):
        job_id, text = found.group(1), found.group(3)
    reason = text.strip()
    _, traceback, tail = text.rpartition("Traceback (most recent call last):")
    worker_error = _PYTHON_ERROR.search(tail) if traceback else None
    summary = (worker_error.group(1) if worker_error
               else reason.splitlines()[0] if reason else "")
    if len(summary) > _SUMMARY_CHARS:
        summary = summary[:_SUMMARY_CHARS] + " ..."
    failed = BatchFailedError(batch_id, runner_name(runner), job_id, reason, summary)
    failed.__cause__, failed.__suppress_context__ = exc, True
    name, _, message = summary.partition(": ")
    worker_class = _own_error_class(name)
    if worker_class is None:
        return failed
    job = f" (job {job_id})" if job_id else ""
    error = worker_class(
        f"{message} (raised in batch {batch_id} on {runner_name(runner)}{job}; the batch "
        "stays pending and is replayed with the same input on the next start)")
    error.__cause__, error.__suppress_context__ = failed, True
    return error


def _own_error_class(name: str) -> type[ZdlError] | None:
    """beam_zdl's error class a worker's traceback names (``beam_zdl.errors.X``), if its
    constructor takes the message alone."""
    module, _, class_name = name.rpartition(".")
    found = getattr(errors, class_name, None) if module == errors.__name__ else None
    if not (isinstance(found, type) and issubclass(found, ZdlError)):
        return None
    own_init = any("__init__" in vars(cls) for cls in found.__mro__
                   if cls.__module__ == errors.__name__)
    return None if own_init else found


@contextlib.contextmanager
def flink_job_server(options: PipelineOptions) -> Iterator[str | None]:
    """One Flink job server for every bounded pipeline run inside (see module doc).

    On a bounded Flink run without ``--job_endpoint``: start Beam's job server for
    ``--flink_master`` (with ``--flink_job_server_jar`` if given), set
    ``--job_endpoint`` to it for the duration, and stop it at the end. Otherwise
    do nothing. Yields the endpoint, or None.
    """
    portable = options.view_as(PortableOptions)
    if not is_flink(options) or options.view_as(StandardOptions).streaming:
        yield portable.job_endpoint
        return
    debug = options.view_as(DebugOptions)
    # Beam runs `pip freeze` in a subprocess for every pipeline it submits to a job
    # service and stages the list with the job, where workers may log how their packages
    # differ: a diagnostic, and 0.35 s of a tiny batch's 3.5 s on Flink here.
    added = not debug.lookup_experiment(_NO_PIP_FREEZE)
    if added:
        debug.add_experiment(_NO_PIP_FREEZE)
        _LOGGER.info("beam_zdl: batches on Flink are submitted with --experiments=%s "
                     "(Beam would run `pip freeze` for every batch)", _NO_PIP_FREEZE)
    try:
        if portable.job_endpoint:
            yield portable.job_endpoint
        else:
            with _job_server(options) as endpoint:
                yield endpoint
    finally:
        if added:
            debug.experiments.remove(_NO_PIP_FREEZE)


_NO_PIP_FREEZE = "disable_logging_submission_environment"


@contextlib.contextmanager
def _job_server(options: PipelineOptions) -> Iterator[str]:
    """Beam's Flink job server for ``--flink_master``, its address in ``--job_endpoint``
    while inside."""
    portable = options.view_as(PortableOptions)
    from apache_beam.runners.portability.flink_runner import FlinkJarJobServer, FlinkRunner
    flink = options.view_as(FlinkRunnerOptions)
    flink.flink_master = FlinkRunner.add_http_scheme(flink.flink_master)

    class _JobServer(FlinkJarJobServer):
        endpoint = ""

        def subprocess_cmd_and_endpoint(self) -> tuple[list[str], str]:
            # start() answers a gRPC stub; batches need the address (--job_endpoint)
            cmd, endpoint = super().subprocess_cmd_and_endpoint()  # type: ignore[no-untyped-call]
            self.endpoint = endpoint
            return cmd, endpoint

    # Beam relays the job server's output to the logger named after this class, through
    # the filter set by filter_job_server_output.
    _JobServer.__name__ = JOB_SERVER_LOGGER
    server = _JobServer(options)  # type: ignore[no-untyped-call]
    job_server_log = _JobServerLog()
    filter_job_server_output(server, job_server_log)
    _LOGGER.info("beam_zdl: the Flink job server's output goes to %s (only its WARN and "
                 "ERROR lines to the logger %s)", job_server_log.path, JOB_SERVER_LOGGER)
    started = time.monotonic()
    try:
        try:
            server.start()  # type: ignore[no-untyped-call]  # returns once the service answers
        except Exception:
            _LOGGER.error("beam_zdl: the Flink job server did not start; its output is in %s",
                          job_server_log.path)
            raise
        endpoint = server.endpoint
        _LOGGER.info("beam_zdl: Flink job server for %s at %s, started in %.1f s; every "
                     "batch of this run is submitted through it", flink.flink_master,
                     endpoint, time.monotonic() - started)
        portable.job_endpoint = endpoint
        try:
            yield endpoint
        finally:
            portable.job_endpoint = None
            server.stop()  # type: ignore[no-untyped-call]
    finally:
        job_server_log.close()


JOB_SERVER_LOGGER = "beam_zdl.runners.flink_job_server"
# A job server line of its own (slf4j-simple's format): "[<thread>] <LEVEL> <logger> - ...".
# Other lines (stack traces, JSON dumps, protos) continue the last one. A thread's name
# may hold brackets ("[MapPartition (MapPartition at [3]{...}) (1/1)#0] WARN ...").
_JAVA_LINE = re.compile(r"^\[.*?\] (TRACE|DEBUG|INFO|WARN|ERROR) ")
_JAVA_LEVELS = {"WARN": logging.WARNING, "ERROR": logging.ERROR}
# An ERROR's stack trace is relayed up to this many lines; the file holds the rest.
_RELAYED_LINES = 40
# The file rotates: a run on the continuous trigger prints 550 lines a batch for days.
_LOG_FILE_BYTES = 32 << 20
_LOG_FILE_BACKUPS = 3


class _JobServerLog(logging.Filter):
    """Beam's log filter for the job server's output (see module doc): writes every line
    to a file in the temp directory, lets through WARN (first line) and ERROR lines.

    Lines before the first line of the job server's own format (the JVM's, e.g. a jar
    that cannot be opened) are let through as WARNING: nothing explains them otherwise.
    """

    def __init__(self) -> None:
        super().__init__()
        handle, self.path = tempfile.mkstemp(prefix="beam_zdl-flink-job-server-",
                                             suffix=".log")
        os.close(handle)
        self._file = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=_LOG_FILE_BYTES, backupCount=_LOG_FILE_BACKUPS,
            encoding="utf-8")
        self._file.setFormatter(logging.Formatter("%(message)s"))
        self._lock = threading.Lock()
        self._seen_own_line = False
        self._level: int | None = None  # relayed level of the line being continued
        self._continued = 0
        self._closed = False
        logger = logging.getLogger(JOB_SERVER_LOGGER)
        logger.removeFilter(_LATE_LINES)
        # Beam sets the logger's level to INFO when it starts the job server (its filter
        # then sees every line); the level the user gave it still decides what is relayed.
        self._own_level, self._min_level = logger.level, logger.getEffectiveLevel()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName != "log_stdout":  # not a line of the job server's output
            return True
        with self._lock:
            if self._closed:
                return False
            self._file.handle(record)
            if found := _JAVA_LINE.match(record.getMessage()):
                self._seen_own_line, self._continued = True, 0
                self._level = level = _JAVA_LEVELS.get(found.group(1))
            elif not self._seen_own_line:
                level = logging.WARNING
            else:
                self._continued += 1
                level = (logging.ERROR if self._level == logging.ERROR
                         and self._continued <= _RELAYED_LINES else None)
        if level is None or level < self._min_level:
            return False
        record.levelno, record.levelname = level, logging.getLevelName(level)
        return True

    def close(self) -> None:
        """Stop writing (the relaying thread may outlive the job server by a line)."""
        with self._lock:
            self._closed = True
            self._file.close()
        logger = logging.getLogger(JOB_SERVER_LOGGER)
        logger.removeFilter(self)
        logger.addFilter(_LATE_LINES)
        logger.setLevel(self._own_level)


def _drop_late_line(record: logging.LogRecord) -> bool:
    """Drops the lines a stopped job server prints while Beam's thread drains its pipe
    (each job server has its own filter, so one for all would drop the next one's)."""
    return record.funcName != "log_stdout"


_LATE_LINES = _drop_late_line
