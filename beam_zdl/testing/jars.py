"""Java components for the test harnesses, resolved with Maven into a cache.

Each component is a folder under ``java/`` holding a ``pom.xml`` (and, where
needed, a single-file Java program run with ``java File.java``). Its runtime
classpath is copied into ``<cache>/jars/<component>`` once; later runs reuse it.

A component with a ``src/`` folder is *built* instead: ``mvn package`` with its build
directory in ``<cache>/jars/<component>`` (the Schema Registry: a Quarkus app that Maven
Central serves only as a library, see ``java/schema-registry/pom.xml``);
:func:`runner_jar` finds the runnable jar it made.

The cache is ``$BEAM_ZDL_CACHE`` if set, else ``.cache`` of the checkout the
package lives in, else ``~/.cache/beam_zdl``.

``make jars`` (or ``python -c 'from beam_zdl.testing.jars import main; main()'``)
resolves every component ahead of time.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from beam_zdl.errors import ZdlError

__all__ = ["cache_dir", "classpath", "java_binary", "component_dir", "resolve", "runner_jar"]

_LOGGER = logging.getLogger(__name__)
_JAVA_DIR = Path(__file__).parent / "java"


def cache_dir() -> Path:
    """Where Maven's repository and the copied jars live."""
    if os.environ.get("BEAM_ZDL_CACHE"):
        return Path(os.environ["BEAM_ZDL_CACHE"])
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout / ".cache"
    return Path.home() / ".cache" / "beam_zdl"


def component_dir(component: str) -> Path:
    """The folder holding a component's pom.xml and Java sources."""
    path = _JAVA_DIR / component
    if not (path / "pom.xml").exists():
        raise ZdlError(f"unknown Java component {component!r}: no {path}/pom.xml")
    return path


def java_binary() -> str:
    """The ``java`` to run, from $JAVA_HOME or PATH, or a clear error."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise ZdlError(
            "Java was not found (no $JAVA_HOME/bin/java, no java on PATH). "
            "The test harnesses run Kafka and HDFS from their jars: install a "
            "JDK 17 (e.g. apt-get install openjdk-17-jdk-headless) and Maven.")
    return found


def resolve(component: str) -> Path:
    """Resolve (or build) a component's jars with Maven once; return the jar folder."""
    out = cache_dir() / "jars" / component
    marker = out / ".complete"
    folder = component_dir(component)
    pom = folder / "pom.xml"
    # The marker holds the inputs it was made from: a changed pom or source rebuilds.
    inputs = pom.read_text() + "".join(p.read_text() for p in sorted(folder.glob("src/*")))
    if marker.exists() and marker.read_text() == inputs:
        return out
    mvn = shutil.which("mvn")
    if not mvn:
        raise ZdlError(
            f"Maven (mvn) was not found on PATH; it resolves the {component} "
            "jars for the test harness. Install Maven 3.8+ "
            "(e.g. apt-get install maven) and a JDK 17.")
    java_binary()
    if out.exists():
        shutil.rmtree(out)
    _LOGGER.info("resolving %s jars with Maven into %s", component, out)
    cmd = [mvn, "-q", "-B", f"-Dmaven.repo.local={cache_dir() / 'm2'}", "-f", str(pom)]
    if (folder / "src").is_dir():
        cmd += ["package", f"-DoutDir={out}"]
    else:
        cmd += ["dependency:copy-dependencies", f"-DoutputDirectory={out}",
                "-DincludeScope=runtime"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ZdlError(
            f"Maven could not resolve the {component} jars (exit "
            f"{proc.returncode}) from {pom}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    marker.write_text(inputs)
    return out


def classpath(component: str) -> str:
    """The resolved classpath of a component, as one ``java -cp`` string."""
    folder = resolve(component)
    return os.pathsep.join(sorted(str(p) for p in folder.glob("*.jar")))


def runner_jar(component: str) -> Path:
    """The runnable jar a built component (one with ``src/``) made, building it if needed."""
    found = sorted(resolve(component).glob("*-runner.jar"))
    if not found:
        raise ZdlError(f"building the {component} component made no *-runner.jar in "
                       f"{cache_dir() / 'jars' / component}: delete that folder and run "
                       "`make jars` again to rebuild it")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    """Resolve the named components (default: all) and print where they are."""
    logging.basicConfig(level=logging.INFO)
    names = argv if argv is not None else sys.argv[1:]
    for name in names or sorted(p.name for p in _JAVA_DIR.iterdir() if p.is_dir()):
        print(f"{name}: {resolve(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
