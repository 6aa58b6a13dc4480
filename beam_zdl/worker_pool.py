"""Warm SDK workers: worker processes started once per run_micro_batches, not per batch.

With ``--direct_running_mode=multi_processing`` Beam's FnApiRunner starts a new
SDK harness process (``python -m apache_beam.runners.worker.sdk_worker_main``)
per worker for every pipeline it runs, and every micro-batch is a pipeline, so
each batch paid a Python + Beam start-up per worker (about 1.9 s with 2
workers). Here those processes live as long as the run.

Worker process
    ``python -m beam_zdl.worker_pool`` imports Beam's SDK harness once, then
    loops: read one request (a runner's control address and a worker id) on
    stdin, run an ``SdkHarness`` against it until the runner closes the
    control stream (the batch's pipeline is done), answer ``done`` on its
    protocol pipe, wait for the next request. Its stdout is re-pointed at
    stderr, so a DoFn's ``print`` cannot corrupt the protocol. Its environment is
    the driver's, with glibc's malloc arenas capped (:func:`worker_env`).

The driver's worker
    With ``--direct_num_workers`` of 2 or more, one worker is the driver itself
    (:class:`_DriverWorker`, a harness thread, as Beam's ``multi_threading``
    mode runs one): the driver only waits while its batch runs, and every
    process that imports Beam costs ~140 MB before it reads a record, so this
    saves a process's memory and start-up. It cannot be replaced: its crash
    is the driver's, and the batch is replayed at the next start. Also in WAL
    mode, whose receiver is a process of its own (``driver_reads=False``
    makes every worker a process).

Runner side
    :class:`WarmRunner` is an FnApiRunner whose subprocess environment (what
    ``multi_processing`` asks for) is swapped for this pool's: its worker
    handler (:class:`_WarmWorkerHandler`) leases a warm process instead of
    starting one.

One runner session for the batches of a run
    Beam's FnApiRunner builds, for every pipeline, a ``WorkerHandlerManager``
    (control, data and state gRPC servers; one SDK harness per worker, which
    builds a ``BundleProcessor`` per stage: unpickled DoFns, ``setup``, a Kafka
    consumer) and closes it at the end: over half of a small batch's fixed
    cost. :func:`warm_workers` opens one :class:`WarmRunner` for the run (also
    with the in-process worker of ``--direct_running_mode=in_memory``), and it
    keeps one manager (:class:`_SessionHandlers`) across pipelines:

    * a stage's descriptor id is the hash of its content, so a harness reuses
      the BundleProcessor of an identical stage of an earlier batch, as it
      reuses one between bundles (Beam's ``BundleProcessorCache``; DoFns see
      ``start_bundle``/``finish_bundle`` per bundle, ``setup`` once); a stage
      that differs (a ``build_fn`` that changes) gets a new id and a new
      processor;
    * the batch's ranges are not in any stage: ``ReadFromKafka`` puts them in
      a :class:`PayloadImpulse`, whose one element the runner hands the stage
      as data (:func:`beam_zdl.compat.impulse_payloads`), so the read's stages
      are the same in every batch (building the stage that held them was a
      fifth of a small batch's fixed cost with 2 workers);
    * the runner's state (side inputs, user state) is emptied before each
      pipeline, and the harness's state cache tokens carry the pipeline's
      number, so nothing of one batch is seen by the next;
    * a failed pipeline closes the session (the next attempt starts a new
      one), as does a worker lost meanwhile, a change of environments, or
      more than ``MAX_SESSION_DESCRIPTORS`` distinct stages (processors of
      stages no longer used are released that way).

    Where Beam differs from what this needs
    (:func:`beam_zdl.compat.handler_managers_reusable`), every pipeline gets
    its own manager, as before.

Crash and replay
    A worker that dies (EOF on its protocol pipe) fails the pipeline it served
    at once: the runner's pending control requests are aborted with
    :class:`~beam_zdl.errors.WorkerLostError` (without that, a stage with no
    outputs would wait forever for an answer). A replacement process starts,
    and :class:`WarmRunner` runs the same pipeline (same batch, same input) again,
    up to ``MAX_ATTEMPTS`` times; a sink keyed by the batch id makes the
    repeat idempotent, exactly as a replay after a driver crash.

Shutdown and orphans
    The pool is closed when ``run_micro_batches`` returns or raises (also on
    Ctrl-C): stdin of every worker is closed, and a worker exits at EOF of
    stdin, also in the middle of a harness. A SIGKILLed driver closes those
    pipes too, so no worker outlives it. Workers ignore SIGINT: Ctrl-C lets
    the current batch finish (the driver's StopFlag), then the pool closes.

Reading speed
    Workers freeze what they imported out of the cyclic GC and collect the
    young generation every ``GC_YOUNG_THRESHOLD`` allocations (the driver too,
    for the run: :func:`young_gc`); at Python's default, GC was half of the
    read's CPU per record.

Forking was considered and not used: a worker runs gRPC threads, and gRPC and
``fork`` do not mix; a fork server adds a process to the tree (memory) and
saves only the one start-up per run.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import gc
import hashlib
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, Optional

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.portability.fn_api_runner.worker_handlers import (
    FNAPI_RUNNER_CAPABILITIES, GrpcWorkerHandler, WorkerHandlerManager)

import apache_beam as beam

import beam_zdl.compat as compat
from beam_zdl.errors import WorkerLostError

__all__ = ["WorkerPool", "WarmRunner", "warm_workers", "warm_runner", "young_gc",
           "PayloadImpulse", "feeds_payload_impulses", "MAX_ATTEMPTS", "WORKER_URN",
           "GC_YOUNG_THRESHOLD", "MAX_SESSION_DESCRIPTORS", "WORKER_MALLOC_ARENAS",
           "worker_env"]

_LOGGER = logging.getLogger(__name__)

WORKER_URN = "beam:env:beam_zdl_warm_worker:v1"
# Runs of one pipeline when workers keep dying: a crash loop fails the batch (it stays
# pending and is replayed on the next start) instead of spinning forever.
MAX_ATTEMPTS = 3
# How long a finished pipeline waits for a worker to report its harness closed before the
# worker is replaced; a harness closes in milliseconds once the runner hangs up.
_DONE_TIMEOUT_S = 60.0
# Allocations between two collections of the youngest generation (Python's default: 700).
GC_YOUNG_THRESHOLD = 20_000
_CLOSE_TIMEOUT_S = 10.0
# glibc's malloc arenas in a worker process, unless the environment sets its own
# MALLOC_ARENA_MAX (see worker_env).
WORKER_MALLOC_ARENAS = 2
# Distinct stage descriptors one runner session serves before it is closed and a new one
# opened: each holds a cached BundleProcessor per worker (its DoFns set up), and a
# build_fn that changes its pipeline every batch adds stages without end.
MAX_SESSION_DESCRIPTORS = 128
_DESCRIPTOR_ID_PREFIX = "zdl-"
# The annotation a PayloadImpulse carries its bytes in, from the pipeline to the runner.
_PAYLOAD_ANNOTATION = "beam_zdl_impulse_payload"
_PAR_DO_URNS = frozenset([common_urns.primitives.PAR_DO.urn,
                          common_urns.sdf_components.PAIR_WITH_RESTRICTION.urn,
                          common_urns.sdf_components.SPLIT_AND_SIZE_RESTRICTIONS.urn,
                          common_urns.sdf_components.PROCESS_SIZED_ELEMENTS_AND_RESTRICTIONS.urn,
                          common_urns.sdf_components.TRUNCATE_SIZED_RESTRICTION.urn])

_POOLS: dict[str, "WorkerPool"] = {}
_ACTIVE: contextvars.ContextVar[Optional["WorkerPool"]] = contextvars.ContextVar(
    "beam_zdl_worker_pool", default=None)
_RUNNER: contextvars.ContextVar[Optional["WarmRunner"]] = contextvars.ContextVar(
    "beam_zdl_warm_runner", default=None)
_ids = itertools.count()


def worker_env() -> dict[str, str]:
    """The environment of a warm worker process: the driver's, with glibc's malloc arenas
    capped at ``WORKER_MALLOC_ARENAS`` unless ``MALLOC_ARENA_MAX`` is set already.

    glibc gives each thread that allocates its own arena, up to 8 per core; a worker's
    gRPC, librdkafka and harness threads each kept a few MB in theirs. Only the processes
    beam_zdl starts get this; the driver's allocator is the user's to set.
    """
    env = dict(os.environ)
    env.setdefault("MALLOC_ARENA_MAX", str(WORKER_MALLOC_ARENAS))
    return env


class _Worker:
    """One warm worker process and the handler it serves, if any."""

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.index = index
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "beam_zdl.worker_pool"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, bufsize=0, env=worker_env())
        self.pid = self.proc.pid
        self._started = time.monotonic()
        self.handler: Optional[_WarmWorkerHandler] = None  # the handler leasing it
        self.idle = threading.Event()
        self.idle.set()
        self.dead = False
        self._pool = pool
        self._reader = threading.Thread(target=self._read, name=f"beam-zdl-worker-{index}",
                                        daemon=True)
        self._reader.start()

    def send(self, request: dict[str, str]) -> None:
        self.idle.clear()
        assert self.proc.stdin is not None  # Popen(stdin=PIPE)
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
        except OSError:
            pass  # it died: its reader reports the loss

    def _read(self) -> None:
        assert self.proc.stdout is not None  # Popen(stdout=PIPE)
        for line in self.proc.stdout:
            if line.startswith(b"done"):
                self.idle.set()
            elif line.startswith(b"ready"):
                _LOGGER.info("warm SDK worker pid %d ready after %.2f s", self.pid,
                             time.monotonic() - self._started)
        self.dead = True
        # Counted as lost before anyone waiting for "done" wakes up (see WarmRunner).
        self._pool._on_exit(self)
        self.idle.set()


class _DriverWorker:
    """The pool's worker that runs in the driver process itself: a harness thread.

    A driver that waits for its batch has a core to spare, and a process that imports Beam
    costs ~140 MB before it reads anything; so one of the ``--direct_num_workers`` is the
    driver. It cannot die on its own: a crash of its harness is the driver's crash, and the
    batch is replayed from its recorded plan at the next start.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = os.getpid()
        self.handler: Optional[_WarmWorkerHandler] = None
        self.idle = threading.Event()
        self.idle.set()
        self.dead = False

    def send(self, request: dict[str, str]) -> None:
        self.idle.clear()
        threading.Thread(target=self._run, args=(request,), name="beam-zdl-driver-worker",
                         daemon=True).start()

    def _run(self, request: dict[str, str]) -> None:
        from apache_beam.runners.worker.sdk_worker import SdkHarness
        try:
            SdkHarness(request["control"], worker_id=request["worker_id"],
                       runner_capabilities=frozenset(FNAPI_RUNNER_CAPABILITIES)).run()
        except Exception:  # the runner sees the failed pipeline
            _LOGGER.exception("in-driver SDK worker: harness for %s failed",
                              request["worker_id"])
        finally:
            self.idle.set()


class WorkerPool:
    """Warm SDK worker processes for the pipelines of one run (see the module doc).

    Args:
        size: workers to start now (``--direct_num_workers``); more start on demand if a
            pipeline asks for more at once.
        driver_reads: with ``size`` >= 2, one of them is the driver itself (a harness
            thread); False makes all of them processes.
    """

    def __init__(self, size: int, driver_reads: bool = True) -> None:
        self.id = f"{os.getpid()}-{next(_ids)}"
        self.lost = 0  # workers that died while the pool was open
        self._lock = threading.Lock()
        self._closed = False
        self._workers: list[_Worker] = []
        self._count = itertools.count()
        self._driver_worker = (_DriverWorker(next(self._count)) if size > 1 and driver_reads
                               else None)
        with self._lock:
            for _ in range(size - (self._driver_worker is not None)):
                self._workers.append(_Worker(self, next(self._count)))
        _POOLS[self.id] = self
        _LOGGER.info("started %d warm SDK worker processes (pids %s)%s", len(self._workers),
                     ",".join(str(w.pid) for w in self._workers),
                     " and one in the driver" if self._driver_worker else "")

    def pids(self) -> list[int]:
        """The live worker processes' ids (not the driver's, which may serve too)."""
        with self._lock:
            return [w.pid for w in self._workers if not w.dead]

    def lease(self, handler: "_WarmWorkerHandler") -> "_Worker | _DriverWorker":
        """An idle worker, now serving ``handler``'s runner (a new one if none is idle)."""
        with self._lock:
            if self._closed:
                raise WorkerLostError("the warm worker pool is closed")
            driver = self._driver_worker
            worker: _Worker | _DriverWorker | None
            if driver is not None and driver.handler is None:
                worker = driver
            else:
                worker = next((w for w in self._workers if w.handler is None and not w.dead),
                              None)
            if worker is None:
                worker = _Worker(self, next(self._count))
                self._workers.append(worker)
            worker.handler = handler
        # A worker still closing its previous harness reads this once that is done.
        worker.send({"control": handler.control_address, "worker_id": handler.worker_id})
        return worker

    def release(self, worker: "_Worker | _DriverWorker") -> None:
        """Called once the runner closed the worker's connections: wait for it to be idle."""
        if isinstance(worker, _DriverWorker):
            worker.idle.wait()  # its harness ends when the runner hangs up
        elif not worker.idle.wait(_DONE_TIMEOUT_S) and not worker.dead:
            _LOGGER.warning("warm worker pid %d did not finish its harness within %.0f s; "
                            "replacing it", worker.pid, _DONE_TIMEOUT_S)
            worker.proc.kill()
            worker.idle.wait(_CLOSE_TIMEOUT_S)
        with self._lock:
            worker.handler = None

    def _on_exit(self, worker: _Worker) -> None:
        """A worker's protocol pipe reached EOF: it exited or was killed."""
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
            handler, closed = worker.handler, self._closed
            if not closed:
                self.lost += 1
                self._workers.append(_Worker(self, next(self._count)))
        if closed:
            return
        code = worker.proc.wait()
        _LOGGER.error("warm SDK worker pid %d died (exit %s)%s; a replacement started",
                      worker.pid, code, " while running a pipeline" if handler else "")
        if handler is not None:
            handler.worker_lost(WorkerLostError(
                f"SDK worker process {worker.pid} died (exit {code}) while running a batch; "
                "the batch is run again from its recorded plan"))

    def close(self) -> None:
        """Stop every worker: EOF on stdin, then SIGKILL what is left after a grace period."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
        _POOLS.pop(self.id, None)
        for w in workers:
            with contextlib.suppress(OSError):
                if w.proc.stdin is not None:
                    w.proc.stdin.close()
        deadline = time.monotonic() + _CLOSE_TIMEOUT_S
        for w in workers:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            with contextlib.suppress(OSError):
                if w.proc.stdout is not None:
                    w.proc.stdout.close()
        _LOGGER.info("stopped %d warm SDK worker processes", len(workers))


def _running_mode(options: PipelineOptions) -> Optional[str]:
    """``in_memory`` or ``multi_processing`` when ``options`` run on the FnApiRunner in one
    of these modes (the ones a :class:`WarmRunner` serves), else None."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
    if options.view_as(StandardOptions).runner not in (None, "DirectRunner", "direct",
                                                       "FnApiRunner"):
        return None
    mode: Optional[str] = options.view_as(DirectOptions).direct_running_mode
    return mode if mode in ("in_memory", "multi_processing") else None


def _pool_size(options: PipelineOptions) -> Optional[int]:
    """Workers the options ask for when they run on the FnApiRunner in processes, else None."""
    from apache_beam.options.pipeline_options import DirectOptions
    if _running_mode(options) != "multi_processing":
        return None
    return options.view_as(DirectOptions).direct_num_workers or os.cpu_count() or 1


@contextlib.contextmanager
def young_gc() -> Iterator[None]:
    """Python's cyclic GC collects its youngest generation less often inside the block.

    Reading allocates a few objects per record (record, headers list, WindowedValue), all
    freed by reference counting, yet every 700 allocations trigger a collection, and the
    older generations' collections walk the whole heap of Beam's modules: measured, that
    was half of a reader's CPU per record (5.6 us against 2.5). The threshold is restored
    on exit; nothing else about collection changes.
    """
    before = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


@contextlib.contextmanager
def warm_workers(options: PipelineOptions,
                 driver_reads: bool = True) -> Iterator[Optional[WorkerPool]]:
    """For the batches run inside the block: a pool of warm workers when ``options`` run
    them in worker processes (``--direct_running_mode=multi_processing``), one
    :class:`WarmRunner` session that keeps its harnesses and bundle processors from batch
    to batch (see the module doc), and a GC tuned for reading (:func:`young_gc`) in this
    process, which reads when the workers are in process; Beam's DoFn introspection
    answers once per class (:func:`beam_zdl.compat.cached_dofn_specs`), here and in the
    workers."""
    if _ACTIVE.get() is not None or _RUNNER.get() is not None:
        with young_gc(), compat.cached_dofn_specs():
            yield _ACTIVE.get()
        return
    size = _pool_size(options)
    pool = WorkerPool(size, driver_reads=driver_reads) if size is not None else None
    mode = _running_mode(options)
    runner = WarmRunner(pool, mode) if mode else None
    pool_token = _ACTIVE.set(pool)
    runner_token = _RUNNER.set(runner)
    try:
        with young_gc(), compat.cached_dofn_specs():
            yield pool
    finally:
        _RUNNER.reset(runner_token)
        _ACTIVE.reset(pool_token)
        try:
            if runner is not None:
                runner.close()  # before the pool: its harnesses end when the runner hangs up
        finally:
            if pool is not None:
                pool.close()


def warm_runner(options: PipelineOptions) -> Optional["WarmRunner"]:
    """The run's :class:`WarmRunner` when ``options`` run in the mode it serves, else None
    (outside :func:`warm_workers`)."""
    runner = _RUNNER.get()
    if runner is None or _running_mode(options) != runner.mode:
        return None
    return runner


class _WarmWorkerHandler(GrpcWorkerHandler):
    """Serves a pipeline with a leased warm worker instead of a new process (the handler of
    ``WORKER_URN``, registered with Beam when a :class:`WarmRunner` is made)."""

    def __init__(self, payload: bytes, state: Any, provision_info: Any,
                 grpc_server: Any) -> None:
        super().__init__(state, provision_info, grpc_server)
        self._pool = _POOLS.get(payload.decode())
        self._worker: _Worker | _DriverWorker | None = None
        self._closed = threading.Event()

    def start_worker(self) -> None:
        if self._pool is None:
            raise WorkerLostError("the warm worker pool of this pipeline was closed")
        self._worker = self._pool.lease(self)

    def stop_worker(self) -> None:
        self._closed.set()
        if self._worker is not None and self._pool is not None:
            self._pool.release(self._worker)
            self._worker = None

    def worker_lost(self, error: WorkerLostError) -> None:
        """Fail the runner's requests to the dead worker instead of waiting for answers."""
        # Requests pushed after a first abort would wait forever too: keep failing them
        # until the runner closes this handler.
        def abort() -> None:
            while not self._closed.is_set():
                with contextlib.suppress(RuntimeError):  # futures added meanwhile
                    compat.abort_control_requests(self, error)
                self._closed.wait(0.2)
        threading.Thread(target=abort, name="beam-zdl-abort", daemon=True).start()


class PayloadImpulse(beam.Impulse):
    """An Impulse whose one element is ``payload`` instead of ``b""``, on a
    :class:`WarmRunner` (see :func:`feeds_payload_impulses`).

    The runner feeds an Impulse's element to its stage as data, so bytes that change
    from batch to batch (a batch's ranges) leave the stage's content, and its descriptor,
    the same: the stage's bundle processors are reused like any unchanged stage's
    (see the module doc). The bytes travel from the pipeline to the runner as an
    annotation of the transform, which the runner removes.
    """

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self._payload = payload

    def annotations(self) -> dict[str, Any]:
        return {**super().annotations(), _PAYLOAD_ANNOTATION: self._payload}


def feeds_payload_impulses(runner: Any) -> bool:
    """Whether ``runner`` feeds a :class:`PayloadImpulse` its payload (a
    :class:`WarmRunner` on a Beam that :func:`beam_zdl.compat.impulse_payloads_supported`);
    on any other runner such an Impulse emits ``b""``."""
    return isinstance(runner, WarmRunner) and compat.impulse_payloads_supported()


def _take_payloads(pipeline_proto: Any) -> dict[str, bytes]:
    """The payloads of the pipeline's PayloadImpulses by their names, removed from it."""
    payloads: dict[str, bytes] = {}
    for transform in pipeline_proto.components.transforms.values():
        if _PAYLOAD_ANNOTATION in transform.annotations:
            payloads[transform.unique_name] = transform.annotations[_PAYLOAD_ANNOTATION]
            del transform.annotations[_PAYLOAD_ANNOTATION]
    return payloads


class _SessionHandlers(WorkerHandlerManager):
    """A WorkerHandlerManager that serves several pipelines (see the module doc).

    Beam's ``run_stages`` closes its manager at the end of every pipeline: here that is a
    no-op, and :meth:`shutdown` closes it for real.
    """

    def __init__(self, environments: Any, provision_info: Any, lost: int) -> None:
        super().__init__(environments, provision_info)
        self.lost = lost  # the pool's lost count when the session opened
        self.environments = _fingerprints(environments)
        self.descriptors: set[str] = set()
        self._pipeline = 0

    def begin(self, pipeline: int) -> None:
        """Before each pipeline: nothing an earlier one wrote is left in the runner's state."""
        compat.clear_runner_state(self.state_servicer)
        self._pipeline = pipeline

    def register_process_bundle_descriptor(self, descriptor: Any) -> None:
        # Beam numbers a pipeline's stages from 0, so ids repeat across pipelines; the
        # harnesses, which live on, must tell stages apart by content. Beam registers a
        # stage's descriptor before its first request names it, and the request reads the
        # id from this same object.
        if not descriptor.id.startswith(_DESCRIPTOR_ID_PREFIX):
            descriptor.id = ""
            digest = hashlib.sha256(descriptor.SerializeToString(deterministic=True))
            if _reads_side_inputs(descriptor):
                # A DoFn invoker keeps the values of globally windowed side inputs from
                # bundle to bundle (right within one pipeline): such a stage is not shared.
                digest.update(b"pipeline %d" % self._pipeline)
            descriptor.id = _DESCRIPTOR_ID_PREFIX + digest.hexdigest()[:32]
            self.descriptors.add(descriptor.id)
        super().register_process_bundle_descriptor(descriptor)

    def close_all(self) -> None:
        """Called by Beam at the end of every pipeline: the workers stay (see :meth:`shutdown`)."""

    def shutdown(self) -> None:
        """Close the workers' connections and the servers (Beam's ``close_all``)."""
        super().close_all()


def _reads_side_inputs(descriptor: Any) -> bool:
    for transform in descriptor.transforms.values():
        if transform.spec.urn in _PAR_DO_URNS and beam_runner_api_pb2.ParDoPayload.FromString(
                transform.spec.payload).side_inputs:
            return True
    return False


def _fingerprints(environments: Any) -> dict[str, bytes]:
    return {k: v.SerializeToString(deterministic=True) for k, v in environments.items()}


@compat.hooks_bundle_managers
class WarmRunner(FnApiRunner):
    """An FnApiRunner for the batches of one run: its worker processes come from a
    :class:`WorkerPool` (with ``multi_processing``), and its workers, harnesses and bundle
    processors are kept from one pipeline to the next (see the module doc).

    A pipeline during which a worker died is run again, same proto, up to
    ``MAX_ATTEMPTS`` times (see the module doc). Pipelines run one at a time; one started
    while another runs gets a manager of its own, as with Beam's FnApiRunner.

    Args:
        pool: the warm worker processes, or None for the in-process worker.
        mode: the ``--direct_running_mode`` it serves.
    """

    def __init__(self, pool: Optional[WorkerPool], mode: str) -> None:
        super().__init__()
        compat.register_worker_handler(WORKER_URN, bytes, _WarmWorkerHandler)
        self._pool = pool
        self.mode = mode
        self._session: Optional[_SessionHandlers] = None
        self._busy = threading.Lock()
        self._pipelines = itertools.count()
        self._token_prefix: Optional[bytes] = None  # set while a session serves a pipeline

    def _lost(self) -> int:
        return self._pool.lost if self._pool is not None else 0

    def run_via_runner_api(self, pipeline_proto: Any, options: Any) -> Any:
        if self._pool is not None:
            for env in pipeline_proto.components.environments.values():
                if env.urn == python_urns.SUBPROCESS_SDK:  # what multi_processing asked for
                    env.urn = WORKER_URN
                    env.payload = self._pool.id.encode()
        payloads = _take_payloads(pipeline_proto)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            lost = self._lost()
            try:
                with compat.impulse_payloads(payloads):
                    return super().run_via_runner_api(copy.deepcopy(pipeline_proto), options)
            except Exception:
                # A failed pipeline may leave a dead worker or a half-run bundle behind:
                # close the session (waiting for each worker's "done" or death, so a death
                # is counted by now); the next attempt opens a new one. (A pipeline that
                # ran beside the session's, on a manager of its own, leaves it alone.)
                if self._busy.acquire(blocking=False):
                    try:
                        self.close()
                    finally:
                        self._busy.release()
                if self._pool is None or self._lost() == lost or attempt == MAX_ATTEMPTS:
                    raise
                _LOGGER.warning("a warm SDK worker died while running this pipeline; running "
                                "it again with a replacement (attempt %d of %d)",
                                attempt + 1, MAX_ATTEMPTS)
        raise AssertionError("unreachable")

    def run_stages(self, stage_context: Any, stages: Any) -> Any:
        if not compat.handler_managers_reusable() or not self._busy.acquire(blocking=False):
            return super().run_stages(stage_context, stages)
        try:
            session = self._open_session(stage_context.components.environments)
            pipeline = next(self._pipelines)
            session.begin(pipeline)
            self._token_prefix = b"zdl-%d-" % pipeline
            with compat.reuse_handler_manager(session):
                result = super().run_stages(stage_context, stages)
            if len(session.descriptors) > MAX_SESSION_DESCRIPTORS:
                self.close()
            return result
        finally:
            self._token_prefix = None
            self._busy.release()

    def _open_session(self, environments: Any) -> _SessionHandlers:
        session = self._session
        if session is not None and (session.lost != self._lost()
                                    or session.environments != _fingerprints(environments)):
            self.close()  # a worker died since the last pipeline, or the environments changed
            session = None
        if session is None:
            session = self._session = _SessionHandlers(
                environments, compat.runner_provision_info(self), self._lost())
        return session

    def bundle_manager_made(self, manager: Any) -> None:
        """Each stage's bundle manager, before its first bundle (see
        :func:`beam_zdl.compat.hooks_bundle_managers`): a session's pipeline gets cache
        tokens of its own."""
        if self._token_prefix is not None:
            compat.prefix_cache_tokens(manager, self._token_prefix)

    def close(self) -> None:
        """Close the session's workers and servers (a new session opens on the next run)."""
        session, self._session = self._session, None
        if session is not None:
            session.shutdown()


# --- the worker process ------------------------------------------------------------------

def _serve() -> None:
    """A warm worker's main loop (see the module doc)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    protocol = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from apache_beam.runners.worker.sdk_worker import SdkHarness

    import beam_zdl.direct  # noqa: F401 - unpickling the read's DoFn then costs nothing
    # What is imported now lives as long as the process: keep it out of every collection,
    # and collect the young generation less often (see young_gc).
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    protocol.write(b"ready\n")

    profile_dir = os.environ.get("BEAM_ZDL_WORKER_PROFILE")  # cProfile each harness

    def run(request: dict[str, str]) -> None:
        profiler = None
        if profile_dir:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        try:
            SdkHarness(request["control"], worker_id=request["worker_id"],
                       runner_capabilities=frozenset(FNAPI_RUNNER_CAPABILITIES)).run()
        except Exception:  # the runner sees the failed pipeline; stay warm for the next
            _LOGGER.exception("warm SDK worker: harness for %s failed", request["worker_id"])
        if profiler is not None:
            profiler.disable()
            assert profile_dir is not None  # a profiler runs only with one
            profiler.dump_stats(os.path.join(
                profile_dir, f"worker-{os.getpid()}-{request['worker_id']}.pstats"))
        protocol.write(b"done\n")

    harness = None
    with compat.cached_dofn_specs():  # for the process's life (see compat)
        for line in sys.stdin.buffer:
            if harness is not None:
                harness.join()
            harness = threading.Thread(target=run, args=(json.loads(line),), daemon=True)
            harness.start()
    # EOF: the driver closed the pool or died. Leave at once, also mid-harness.
    os._exit(0)


if __name__ == "__main__":
    _serve()
