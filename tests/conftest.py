"""Session-scoped real components: one Kafka broker (or $KAFKA_BOOTSTRAP_SERVERS),
the GCS emulator and a MiniDFSCluster, started once and shared by the tests."""

from __future__ import annotations

import pytest

from beam_zdl.testing import LocalKafka


@pytest.fixture(scope="session")
def kafka():
    with LocalKafka() as broker:
        yield broker
