"""Small helpers shared by the harnesses that run a real server process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from beam_zdl.errors import ZdlError

__all__ = ["free_port", "port_answers", "wait_until", "ServerProcess", "LocalServer"]

_Server = TypeVar("_Server", bound="LocalServer")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_answers(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, what: str,
               log: Path | None = None, alive: Callable[[], bool] | None = None) -> None:
    """Poll ``check`` until it is true; raise naming ``what`` and the log tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            break
        try:
            if check():
                return
        except Exception:  # the server is not up yet: poll again
            pass
        time.sleep(0.1)
    tail = ""
    if log is not None and log.exists():
        tail = "\n--- last lines of " + str(log) + " ---\n" + "\n".join(
            log.read_text(errors="replace").splitlines()[-40:])
    state = "exited" if alive is not None and not alive() else f"not ready after {timeout_s:.0f} s"
    raise ZdlError(f"{what} {state}{tail}")


class ServerProcess:
    """A server child process (JVM or native) with its output in a log file.

    It runs in its own process group, so ``kill`` (SIGKILL) and ``stop``
    (SIGTERM) reach every process it started.
    """

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log = log
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)

    def start_serving(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Start, then wait until ``ready()``; on failure kill it (no half-started server
        is left behind) and raise naming ``what`` with the log tail."""
        self.start()
        try:
            wait_until(ready, timeout_s, what, log=self.log, alive=self.alive)
        except BaseException:
            self.kill()
            raise

    def wait(self, timeout_s: float | None = None) -> int:
        """Wait for the process to exit; return its exit code."""
        if self._proc is None:
            raise ZdlError(f"{self.args[0]} was never started")
        return self._proc.wait(timeout_s)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the server's process group (when it runs)."""
        if self._proc is not None and self.alive():
            os.killpg(self._proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        if self._proc is not None and self.alive():
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self._proc is None or not self.alive():
            return
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()



class LocalServer:
    """The lifecycle of a harness that runs one server process, or uses an external
    server named by an environment variable instead (then ``kill``/``restart`` are refused).

    Subclasses set ``EXTERNAL_ENV`` (the variable), ``KIND`` (what messages call the
    external server), ``LOG_NAME`` (the log file in ``workdir``), implement ``start``,
    and keep their :class:`ServerProcess` in ``self._proc``.
    """

    EXTERNAL_ENV = ""
    KIND = "server"
    LOG_NAME = "server.log"
    STOP_TIMEOUT_S = 30.0

    def __init__(self, workdir: str | os.PathLike[str] | None, prefix: str) -> None:
        self.external = os.environ.get(self.EXTERNAL_ENV) or None
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=prefix))
        self._proc: ServerProcess | None = None

    @property
    def log_file(self) -> Path:
        return self.workdir / self.LOG_NAME

    def __enter__(self: _Server) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self: _Server) -> _Server:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server cleanly and delete its folder if it is ours."""
        if self._proc:
            self._proc.stop(self.STOP_TIMEOUT_S)
            self._proc = None
        if self._own_dir and not self.external:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def pause(self) -> None:
        """SIGSTOP the server: it keeps its connections but answers nothing (a hung
        broker); :meth:`resume` lets it go on."""
        self._require_local("pause")
        if self._proc:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a server :meth:`pause` stopped."""
        self._require_local("resume")
        if self._proc:
            self._proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server, as a crash or an outage would; its folder stays."""
        self._require_local("kill")
        if self._proc:
            self._proc.kill()

    def restart(self: _Server) -> _Server:
        """Start again on the same ports and folder (after ``kill``)."""
        self._require_local("restart")
        if self._proc and self._proc.alive():
            self._proc.stop(self.STOP_TIMEOUT_S)
        return self.start()

    def alive(self) -> bool:
        return bool(self.external) or bool(self._proc and self._proc.alive())

    def _require_local(self, what: str) -> None:
        if self.external:
            raise ZdlError(f"cannot {what} the external {self.KIND} in "
                           f"{self.EXTERNAL_ENV}={self.external}")
