"""Small helpers shared by the harnesses that run a real server process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

from beam_zdl.errors import ZdlError

__all__ = ["free_port", "wait_until", "ServerProcess"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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

