"""beam_zdl: zero-data-loss Kafka ingestion for Apache Beam's Python SDK.

Direct mode reads planned Kafka offset ranges; WAL mode reads a write-ahead
log written by a reliable receiver. Both record each batch's input before it
runs and replay it identically after a crash.

Public names load lazily, so ``import beam_zdl.wal`` (the CLI, storage tools)
does not pay for importing Apache Beam.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from beam_zdl.lean import install_if_asked

# BEAM_ZDL_LEAN_IMPORTS=1: leave out Beam's unused IOs before anything imports Beam.
install_if_asked()

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time names load on first use
    from beam_zdl.decode import DeadLetter, DecodedRecord, DecodeRecords
    from beam_zdl.batch_progress import (BatchProgress, PartitionProgress,
                                                    ProgressListener)
    from beam_zdl.batch import Batch
    from beam_zdl.microbatch.loop import RunSummary
    from beam_zdl.microbatch.run import run_micro_batches
    from beam_zdl.errors import (BatchFailedError, CheckpointConflictError,
                                 CheckpointCorruptionError, ConfigError, ConfigMismatchError,
                                 DataLossError, PartitionsUnavailableError,
                                 SchemaRegistryUnavailableError, SinkConflictError,
                                 SinkFencedError, TopicNotFoundError, WalCorruptionError,
                                 WalOverlapError, ZdlError)
    from beam_zdl.io import ReadFromKafka, ReadFromWal
    from beam_zdl.kafka_sink import WriteToKafka
    from beam_zdl.options import ZdlOptions
    from beam_zdl.records import KafkaHeader, KafkaRecord

# The one version: pyproject.toml reads it (setuptools dynamic `attr`, parsed without
# importing), so the package metadata, `beam-zdl --version` and CHANGELOG.md agree.
__version__ = "0.1.0"

_PUBLIC = {
    "Batch": "beam_zdl.batch",
    "RunSummary": "beam_zdl.microbatch.loop",
    "BatchProgress": "beam_zdl.batch_progress",
    "PartitionProgress": "beam_zdl.batch_progress",
    "ProgressListener": "beam_zdl.batch_progress",
    "run_micro_batches": "beam_zdl.microbatch.run",
    "ReadFromKafka": "beam_zdl.io",
    "ReadFromWal": "beam_zdl.io",
    "WriteToKafka": "beam_zdl.kafka_sink",
    "DecodeRecords": "beam_zdl.decode",
    "DecodedRecord": "beam_zdl.decode",
    "DeadLetter": "beam_zdl.decode",
    "KafkaRecord": "beam_zdl.records",
    "KafkaHeader": "beam_zdl.records",
    "ZdlOptions": "beam_zdl.options",
    "ZdlError": "beam_zdl.errors",
    "ConfigError": "beam_zdl.errors",
    "ConfigMismatchError": "beam_zdl.errors",
    "DataLossError": "beam_zdl.errors",
    "WalCorruptionError": "beam_zdl.errors",
    "CheckpointConflictError": "beam_zdl.errors",
    "CheckpointCorruptionError": "beam_zdl.errors",
    "PartitionsUnavailableError": "beam_zdl.errors",
    "SchemaRegistryUnavailableError": "beam_zdl.errors",
    "TopicNotFoundError": "beam_zdl.errors",
    "WalOverlapError": "beam_zdl.errors",
    "SinkFencedError": "beam_zdl.errors",
    "SinkConflictError": "beam_zdl.errors",
    "BatchFailedError": "beam_zdl.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'beam_zdl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_PUBLIC))
