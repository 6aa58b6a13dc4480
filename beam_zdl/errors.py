"""The errors beam_zdl raises.

Every message says what was wrong, where (topic/partition/offset, segment
URI/byte, flag name, storage path) and what to do about it.
"""

__all__ = [
    "ZdlError",
    "ConfigError",
    "DataLossError",
    "WalCorruptionError",
    "CheckpointConflictError",
    "ConfigMismatchError",
    "StorageError",
    "ObjectExistsError",
    "KafkaUnavailableError",
    "PartitionsUnavailableError",
]


class ZdlError(Exception):
    """Base class of every error raised by beam_zdl."""


class ConfigError(ZdlError, ValueError):
    """A flag or argument has a bad value; the message names the flag."""


class DataLossError(ZdlError):
    """Records that should be read no longer exist (retention, truncation)."""


class WalCorruptionError(ZdlError):
    """A WAL frame failed its length or CRC check; names segment and byte."""


class CheckpointConflictError(ZdlError):
    """Another driver owns the checkpoint (fenced by a newer epoch) or wrote first."""


class ConfigMismatchError(ZdlError):
    """A restart's configuration differs from the one in the checkpoint."""


class StorageError(ZdlError):
    """A durable-storage operation failed permanently."""


class ObjectExistsError(StorageError):
    """A create-once write found the object already there."""


class KafkaUnavailableError(ZdlError):
    """Kafka could not be reached with the configured --bootstrap_servers."""


class PartitionsUnavailableError(ZdlError):
    """An ``available_now`` run could not finish: other group members held partitions
    past ``--drain_timeout_s``; names the partitions and the members."""
