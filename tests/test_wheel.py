"""The package as a user installs it: ``make dist``'s sdist and wheel, the wheel installed
with README's own line (``pip install dist/beam_zdl-*.whl``) into a venv outside the
checkout, then ``beam-zdl --version``, ``import beam_zdl`` and a direct-mode pipeline on a
real broker, all with that venv's Python.

Installing Apache Beam and the other dependencies into an empty venv takes about 45 s
(from pip's download cache), so the venv is kept under ``$BEAM_ZDL_CACHE/wheel-venv/``,
keyed by the wheel's dependency list and the Python version: a new dependency makes a new
venv. The freshly built wheel itself is installed every time (the previous one removed
first), and the venv is made in a temporary folder and renamed, so a half-made one is
never reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Iterator

import beam_zdl
from beam_zdl.cli import main

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("BEAM_ZDL_CACHE", ROOT / ".cache"))


def _build(out: Path) -> tuple[Path, Path]:
    """`python -m build`: the sdist, then the wheel built from that sdist (as `make dist`)."""
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    (sdist,) = out.glob("beam_zdl-*.tar.gz")
    (wheel,) = out.glob("beam_zdl-*.whl")
    return sdist, wheel


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(name).decode())
    return sorted(meta.get_all("Requires-Dist") or [])


def _venv_path(requires: list[str]) -> Path:
    """The venv of this dependency list and this Python."""
    key = hashlib.sha256(json.dumps([sys.version_info[:2], requires]).encode()).hexdigest()
    return CACHE / "wheel-venv" / key[:16]


def _venv(venv: Path) -> Path:
    """Make the venv once (in a temporary folder, renamed when made)."""
    if (venv / "bin" / "python").exists():
        return venv
    tmp = venv.with_name(venv.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True)
    os.rename(tmp, venv)  # before anything is installed: scripts name their interpreter by path
    return venv


@contextlib.contextmanager
def _locked(venv: Path) -> Iterator[None]:
    """One test at a time in a venv (checkouts that share .cache may run this together)."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def test_wheel_installs_and_runs_a_pipeline_outside_the_checkout(tmp_path: Path, kafka) -> None:
    sdist, wheel = _build(tmp_path / "dist")
    version = beam_zdl.__version__
    assert wheel.name == f"beam_zdl-{version}-py3-none-any.whl"
    assert sdist.name == f"beam_zdl-{version}.tar.gz"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    # the generated protobuf modules ship (no protoc at build or install time), and so do
    # the license, the typing marker and the test harness' Maven poms
    assert {"beam_zdl/v1/wal_pb2.py", "beam_zdl/v1/checkpoint_pb2.py", "beam_zdl/py.typed",
            "beam_zdl/testing/java/kafka/pom.xml",
            f"beam_zdl-{version}.dist-info/licenses/LICENSE"} <= names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
    assert {"protos/beam_zdl/v1/wal.proto", "LICENSE", "CHANGELOG.md", "README.md",
            "beam_zdl/v1/wal_pb2.py"} <= members

    venv = _venv_path(_requires(wheel))
    with _locked(venv):
        _install_and_run(wheel, _venv(venv), kafka.bootstrap_servers, tmp_path)


def _install_and_run(wheel: Path, venv: Path, bootstrap_servers: str, tmp_path: Path) -> None:
    version = beam_zdl.__version__
    python, cli = str(venv / "bin" / "python"), str(venv / "bin" / "beam-zdl")
    pip = (python, "-m", "pip")  # the venv was renamed: its own pip script names the old path
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", BEAM_ZDL_CACHE=str(CACHE),
               KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers)
    work = tmp_path / "user"  # outside the checkout: the checkout's beam_zdl is not on the path
    work.mkdir()

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    run(*pip, "uninstall", "-y", "-q", "beam_zdl")  # so the fresh wheel is installed, not kept
    started = time.monotonic()
    run(*pip, "install", "-q", str(wheel))  # README's install line
    installed = time.monotonic()
    run(*pip, "check")

    assert run(cli, "--version").strip() == f"beam-zdl {version}"
    imported = run(python, "-c", "import beam_zdl, sys; print(beam_zdl.__file__); "
                                 "print(beam_zdl.__version__)").split()
    assert imported[0].startswith(str(venv)), imported
    assert imported[1] == version

    script = work / "wheel_pipeline.py"
    shutil.copy(ROOT / "tests" / "wheel_pipeline.py", script)
    result = json.loads(run(python, str(script), str(work)).strip().splitlines()[-1])
    finished = time.monotonic()
    assert result["file"].startswith(str(venv)) and result["version"] == version
    assert result["records"] == 400 and result["batches"] == 2  # 150 per partition per batch
    assert result["counts"] == {"alpha": 100, "beta": 100, "gamma": 100, "delta": 100}
    print(f"wheel {wheel.stat().st_size / 1024:.0f} KiB; pip install {installed - started:.1f} s; "
          f"install to a finished pipeline {finished - started:.1f} s")


def test_one_version_one_license(capsys) -> None:
    """``beam_zdl.__version__`` is the version of the metadata, of ``beam-zdl --version`` and
    of the newest CHANGELOG entry; the license metadata is LICENSE's Apache-2.0."""
    version = beam_zdl.__version__
    assert importlib.metadata.version("beam_zdl") == version
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"beam-zdl {version}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = [line for line in changelog.splitlines() if line.startswith("## [")
                and not line.startswith("## [Unreleased]")]
    assert releases[0].startswith(f"## [{version}] - ")
    meta = importlib.metadata.metadata("beam_zdl")
    assert meta["License-Expression"] == "Apache-2.0"
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert meta["Requires-Python"] == ">=3.11"
