"""The WAL-mode receiver as a child process of the micro-batch driver.

``run_micro_batches`` with ``--zdl_mode=wal`` runs its
:class:`~beam_zdl.receiver.Receiver` here, in a process of its own
(``python -m beam_zdl.receiver_process``), not as a thread of the driver: the
receiver's loop is busy for as long as records arrive, and as a thread it held
the driver's GIL, which the driver needs to plan batches and to run one of
the batch's workers (a harness thread, as in direct mode). This module imports
no Apache Beam (~35 MB resident, as ``beam-zdl receive``).

Protocol
    The driver writes one JSON line on the child's stdin: the validated
    options (:class:`~beam_zdl.config.ZdlConfig`, secrets included: a pipe,
    never the command line, which ``ps`` shows), the checkpoint directory,
    whether to drain, the end offsets to drain to, the driver's pid and its
    log level. Closing stdin then asks the receiver to stop: it seals and
    commits what it holds, leaves the group and exits. The child answers on
    its stdout (re-pointed: anything else printing to fd 1 goes to stderr),
    one JSON line per message: a log record, ``done`` (drained or not) or
    ``error`` (the exception's class and message).

Living and dying with the driver
    The child asks Linux to SIGKILL it when the driver dies
    (``PR_SET_PDEATHSIG``), so a SIGKILLed driver takes its receiver with it,
    as it did the thread; stdin's EOF is the fallback elsewhere. The child
    ignores SIGINT: Ctrl-C reaches the whole process group, and stopping is
    the driver's to decide (it closes stdin). A crash point
    (:mod:`beam_zdl.chaos`) that SIGKILLs the child SIGKILLs the driver too,
    so a crash test kills the whole run as before.

Errors
    An exception in the child comes back as the same class with the same
    message (:meth:`ReceiverProcess.error`); a child that dies without one is
    a :class:`~beam_zdl.errors.ZdlError` naming its exit status. Its log
    records are re-emitted by the driver's loggers of the same names.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any, Callable, Optional

from beam_zdl.config import ZdlConfig
from beam_zdl.errors import ZdlError

__all__ = ["ReceiverProcess"]

_LOGGER = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Allocations between two collections of the youngest generation (Python's default: 700),
# as the driver's young_gc (beam_zdl.worker_pool) sets it while batches run, which the
# receiver had as a thread there: it allocates a few short-lived objects per record, all
# freed by reference counting; measured, 0.7 CPU-s less per 1M records (4.2 against 3.5).
_GC_YOUNG_THRESHOLD = 20_000
_STATUS_EVERY_S = 1.0  # the child reports buffered bytes and positions this often
# The LogRecord attributes a formatter may use, sent with each record of the child.
_RECORD_FIELDS = ("name", "levelno", "levelname", "pathname", "filename", "module", "lineno",
                  "funcName", "created", "msecs", "thread", "threadName",
                  "processName", "process")


class ReceiverProcess:
    """A :class:`~beam_zdl.receiver.Receiver` running in a child process (see the module doc).

    Args:
        config: validated options (``--zdl_mode=wal``).
        checkpoint_dir: a checkpoint whose plans also count for resume positions.
        drain: stop once drained to ``targets`` (``--trigger=available_now``).
        targets: the end offsets to drain to.
    """

    def __init__(self, config: ZdlConfig, *, checkpoint_dir: Optional[str], drain: bool,
                 targets: Optional[dict[tuple[str, int], int]]) -> None:
        self._spec = {
            "config": dataclasses.asdict(config),
            "checkpoint_dir": checkpoint_dir,
            "drain": drain,
            "targets": [[t, p, o] for (t, p), o in sorted((targets or {}).items())]
            if targets is not None else None,
            "parent_pid": os.getpid(),
            "log_level": logging.getLogger("beam_zdl").getEffectiveLevel(),
        }
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._reader: Optional[threading.Thread] = None
        self._exited = threading.Event()
        self._error: Optional[BaseException] = None
        self.drained = False
        self.stats: dict[str, float] = {}  # ReceiverStats' fields: every second, and at exit
        # The child's last status (every _STATUS_EVERY_S): buffered bytes, next offsets.
        self.buffered_bytes: Optional[int] = None
        self.positions: dict[tuple[str, int], int] = {}

    @property
    def pid(self) -> Optional[int]:
        """The child's pid once started."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the child and hand it its options."""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "beam_zdl.receiver_process"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, bufsize=0)
        assert self._proc.stdin is not None  # Popen(stdin=PIPE)
        self._proc.stdin.write((json.dumps(self._spec) + "\n").encode())
        self._spec = {}  # the secrets need not stay here
        _LOGGER.info("WAL receiver process pid %d started", self._proc.pid)
        self._reader = threading.Thread(target=self._read, name="beam-zdl-receiver",
                                        daemon=True)
        self._reader.start()

    @property
    def running(self) -> bool:
        """Started and not yet exited (every segment it sealed is durable once False)."""
        return self._proc is not None and not self._exited.is_set()

    def error(self) -> Optional[BaseException]:
        """What the child failed with, if it failed."""
        return self._error

    def stop(self) -> None:
        """Ask the child to seal, commit and leave the group; wait until it exits."""
        if self._proc is None:
            return
        assert self._proc.stdin is not None  # Popen(stdin=PIPE)
        try:
            self._proc.stdin.close()
        except OSError:
            pass  # it exited already
        try:
            self._exited.wait()
        except BaseException:  # a second Ctrl-C while it seals: leave now, as a thread did
            self._proc.kill()
            raise

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None  # Popen(stdout=PIPE)
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "log" in message:
                _emit(message["log"])
            elif "status" in message:
                status = message["status"]
                self.buffered_bytes = int(status["buffered_bytes"])
                self.positions = {(t, int(p)): int(o) for t, p, o in status["next"]}
                self.stats = status["stats"]
            elif "done" in message:
                self.drained = bool(message["done"]["drained"])
                self.stats = message["done"]["stats"]
            elif "error" in message:
                self._error = _rebuild(message["error"])
        code = proc.wait()
        if code == -signal.SIGKILL and os.environ.get("BEAM_ZDL_CRASH_AT"):
            # A crash point killed the receiver: the run dies with it, as it did when the
            # receiver was a thread of this process.
            _LOGGER.error("the WAL receiver process reached a crash point: SIGKILL the driver "
                          "too (BEAM_ZDL_CRASH_AT=%s)", os.environ["BEAM_ZDL_CRASH_AT"])
            os.kill(os.getpid(), signal.SIGKILL)
        if code != 0 and self._error is None:
            how = (f"was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0
                   else f"exited with status {code}")
            self._error = ZdlError(
                f"the WAL receiver process (pid {proc.pid}) {how} without reporting an error. "
                "Nothing sealed is lost: what it held unsealed is read again from Kafka at the "
                "next start. Check its log lines above and the system log (out of memory?), "
                "then run again.")
            _LOGGER.error("%s", self._error)
        self._exited.set()


def _emit(fields: dict[str, Any]) -> None:
    """Re-emit a log record of the child through this process's logger of the same name."""
    logger = logging.getLogger(fields.get("name") or "beam_zdl.receiver")
    if not logger.isEnabledFor(int(fields.get("levelno", logging.INFO))):
        return
    now = time.time()
    record = logging.makeLogRecord({**fields, "args": None})
    # relativeCreated counts from this process's start, not the child's.
    record.relativeCreated -= (now - float(fields.get("created") or now)) * 1000
    logger.handle(record)


def _rebuild(error: dict[str, str]) -> BaseException:
    """The child's exception, as the same class with the same message when possible."""
    name, module, message = error["type"], error["module"], error["message"]
    try:
        cls = getattr(importlib.import_module(module), name)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                exc: Exception = cls(message)
            except TypeError:  # a constructor of other arguments: same class, same message
                exc = cls.__new__(cls)
                Exception.__init__(exc, message)
            return exc
    except Exception:  # not importable or not constructible from a message
        pass
    return ZdlError(f"the WAL receiver failed: {module}.{name}: {message}")


# --- the child ---------------------------------------------------------------------------

class _PipeHandler(logging.Handler):
    """Sends each log record to the driver as one JSON line."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {k: getattr(record, k, None) for k in _RECORD_FIELDS}
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            fields["msg"] = message
            self._send({"log": fields})
        except Exception:
            self.handleError(record)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        _LOGGER.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): the receiver stops when "
                        "the driver closes its stdin, not when the driver is killed",
                        ctypes.get_errno())


def _main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _die_with_parent()
    protocol: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with lock:
            protocol.write(json.dumps(message) + "\n")

    spec = json.loads(sys.stdin.readline() or "null")
    if not spec or os.getppid() != spec["parent_pid"]:
        return 1  # the driver died before the death signal was armed
    root = logging.getLogger()
    root.handlers[:] = [_PipeHandler(send)]
    root.setLevel(spec["log_level"])
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, name="beam-zdl-receiver-stdin", daemon=True).start()
    from beam_zdl.receiver import Receiver
    gc.freeze()  # what is imported lives as long as the process: out of every collection
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    options = dict(spec["config"], topics=tuple(spec["config"]["topics"]))
    config = ZdlConfig(**options)
    targets = ({(t, p): o for t, p, o in spec["targets"]}
               if spec["targets"] is not None else None)
    try:
        receiver = Receiver(config, checkpoint_dir=spec["checkpoint_dir"])

        def status() -> None:  # for the driver's BatchProgress
            send({"status": {"buffered_bytes": receiver.buffered_bytes, "next": [
                [t, p, o] for (t, p), o in sorted(receiver.positions().items())],
                "stats": dataclasses.asdict(receiver.stats)}})

        def report_status() -> None:
            while True:
                status()
                if stop.wait(_STATUS_EVERY_S):
                    return

        threading.Thread(target=report_status, name="beam-zdl-receiver-status",
                         daemon=True).start()
        stats = receiver.run(stop, drain_to_end=spec["drain"], targets=targets)
    except BaseException as exc:
        _LOGGER.error("WAL receiver failed: %s", exc)
        send({"error": {"type": type(exc).__name__, "module": type(exc).__module__,
                        "message": str(exc)}})
        return 1
    status()
    send({"done": {"drained": receiver.drained, "stats": dataclasses.asdict(stats)}})
    return 0


if __name__ == "__main__":
    sys.exit(_main())
