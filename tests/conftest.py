"""Session-scoped real components: one Kafka broker (or $KAFKA_BOOTSTRAP_SERVERS),
the GCS emulator, a MiniDFSCluster and a Schema Registry (or $SCHEMA_REGISTRY_URL),
started once and shared by the tests.

Components start lazily, on the first test that asks for them: a test that
uses only ``any_storage_uri[local]`` starts neither GCS nor HDFS.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import uuid

import pytest

from beam_zdl.testing import LocalKafka
from beam_zdl.testing.gcs import LocalGcs
from beam_zdl.testing.hdfs import LocalHdfs
from beam_zdl.testing.schema_registry import LocalSchemaRegistry

STORAGE_KINDS = ["local", "gcs", "hdfs"]


@pytest.fixture(scope="session")
def kafka():
    with LocalKafka() as broker:
        yield broker


@pytest.fixture(scope="session")
def gcs():
    """The GCS emulator; ``STORAGE_EMULATOR_HOST`` points at it while it runs."""
    with LocalGcs() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def gcs_bucket(gcs) -> str:
    """One bucket for the session; each test works under its own uuid prefix."""
    return gcs.create_bucket()


@pytest.fixture(scope="session")
def hdfs():
    """A MiniDFSCluster (1 NameNode, 1 DataNode); ``hdfs.url`` is its hdfs:// root."""
    with LocalHdfs() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def schema_registry():
    """Apicurio Registry's Confluent-compatible API (``schema_registry.url``), in memory."""
    with LocalSchemaRegistry() as registry:
        yield registry


@pytest.fixture(params=STORAGE_KINDS)
def any_storage_uri(request, tmp_path) -> str:
    """A fresh, empty storage root URI on each backend (ids: local, gcs, hdfs).

    local: a folder under ``tmp_path`` (not yet created); gcs:
    ``gs://<session bucket>/<uuid>``; hdfs: ``<hdfs.url>/<uuid>``. The GCS and
    HDFS servers start only when a test with that id runs.
    """
    unique = uuid.uuid4().hex
    if request.param == "local":
        return str(tmp_path / f"storage-{unique[:8]}")
    if request.param == "gcs":
        emulator = request.getfixturevalue("gcs")
        bucket = request.getfixturevalue("gcs_bucket")
        if not emulator.alive():  # an earlier test killed it: bring it back
            emulator.restart()
            emulator.create_bucket(bucket)
        return f"gs://{bucket}/{unique}"
    cluster = request.getfixturevalue("hdfs")
    if not cluster.alive():  # an earlier test killed it: restart on its storage
        cluster.restart()
    return f"{cluster.url}/{unique}"


# --- the kind of each test: unit, integration or crash --------------------------------------
# Set here for every test that does not say it itself (a pytest.mark.unit / integration /
# crash of its own, on the test or its module): `pytest -m unit` runs the tests that need
# no broker, storage server or runner process, in seconds (docs/development.md).
KINDS = ("unit", "integration", "crash")
# Fixtures that start a real component: a test using one (directly or through another
# fixture) is an integration test.
_COMPONENT_FIXTURES = {"kafka", "gcs", "gcs_bucket", "hdfs", "schema_registry", "flink",
                       "cluster"}
# ... or that starts one of its own (a harness of beam_zdl.testing, or a test's subclass)
_STARTS_COMPONENT = re.compile(
    r"\b(Local(Kafka|Gcs|Hdfs|Flink|SchemaRegistry)|_NoTransactionsKafka)\(")
# Files that run a tool on the checkout (pip and a venv, mkdocs, mypy): integration too.
_TOOL_FILES = {"test_wheel.py", "test_docs.py", "test_types.py"}
# A test that SIGKILLs a real process (a crash point, a killed driver, worker, receiver or
# broker) says so in its name or docstring, or sets a crash point.
_KILLS = re.compile(r"sigkill|(?<![a-z])kill(ed|s)?(?![a-z])", re.IGNORECASE)
_CRASH_POINT = re.compile(r"crash_at=|BEAM_ZDL_CRASH_AT=|_crash_and_recover\(")


def _kind(item: pytest.Item) -> str:
    function = getattr(item, "function", None)
    source = ""
    if function is not None:
        with contextlib.suppress(OSError, TypeError):
            source = inspect.getsource(function)
    said = f"{getattr(function, '__name__', item.name)} {getattr(function, '__doc__', '') or ''}"
    if _KILLS.search(said) or _CRASH_POINT.search(source):
        return "crash"
    callspec = getattr(item, "callspec", None)
    remote = callspec is not None and callspec.params.get("any_storage_uri") in ("gcs", "hdfs")
    if remote or _COMPONENT_FIXTURES & set(getattr(item, "fixturenames", ())) or \
            _STARTS_COMPONENT.search(source) or item.path.name in _TOOL_FILES:
        return "integration"
    return "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(kind) for kind in KINDS):
            item.add_marker(getattr(pytest.mark, _kind(item)))
