"""Session-scoped real components: one Kafka broker (or $KAFKA_BOOTSTRAP_SERVERS),
the GCS emulator, a MiniDFSCluster and a Schema Registry (or $SCHEMA_REGISTRY_URL),
started once and shared by the tests.

Components start lazily, on the first test that asks for them: a test that
uses only ``any_storage_uri[local]`` starts neither GCS nor HDFS.
"""

from __future__ import annotations

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
