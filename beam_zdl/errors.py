"""The errors beam_zdl raises.

Every message says what was wrong, where (topic/partition/offset, segment
URI/byte, flag name, storage path) and what to do about it. Each class is a case a
caller can act on differently; all derive from :class:`ZdlError`. Where a Kafka error
caused one, it is chained (``__cause__``): its ``retriable()`` / ``fatal()`` say whether
trying again can help.
"""

__all__ = [
    "ZdlError",
    "ConfigError",
    "DataLossError",
    "WalCorruptionError",
    "WalOverlapError",
    "CheckpointConflictError",
    "CheckpointCorruptionError",
    "UnsupportedCheckpointFormatError",
    "ConfigMismatchError",
    "StorageError",
    "ObjectExistsError",
    "KafkaUnavailableError",
    "TopicNotFoundError",
    "PartitionsUnavailableError",
    "SinkFencedError",
    "SinkConflictError",
    "SchemaRegistryUnavailableError",
    "WorkerLostError",
    "BatchFailedError",
]


class ZdlError(Exception):
    """Base class of every error raised by beam_zdl."""


class ConfigError(ZdlError, ValueError):
    """A flag or argument has a bad value; the message names the flag."""


class DataLossError(ZdlError):
    """Records that should be read no longer exist (retention, truncation)."""


class WalCorruptionError(ZdlError):
    """A WAL frame failed its length or CRC check; names segment and byte."""


class WalOverlapError(ZdlError):
    """Two WAL segments hold the same offsets of a partition (a receiver wrote after losing
    its partitions); names both segments and the offsets. Nothing is planned."""


class CheckpointConflictError(ZdlError):
    """Another driver owns the checkpoint (fenced by a newer epoch) or wrote first."""


class CheckpointCorruptionError(ZdlError):
    """A checkpoint file failed its magic, format-version, length or CRC32C check, or its
    checked payload could not be decoded.

    The message names the file, what is wrong and what to do. Deliberately *not* a
    :class:`StorageError`: callers that treat a StorageError as "removed by retention
    meanwhile" must never skip a damaged file.

    Attributes:
        uri: the damaged file.
        reason: what is wrong with it.
        advice: what to do about it.
    """

    def __init__(self, uri: str, reason: str, advice: str) -> None:
        super().__init__(f"checkpoint file {uri} cannot be used: {reason}. {advice}")
        self.uri = uri
        self.reason = reason
        self.advice = advice

    def __reduce__(self) -> "tuple[type[CheckpointCorruptionError], tuple[str, str, str]]":
        return type(self), (self.uri, self.reason, self.advice)


class UnsupportedCheckpointFormatError(CheckpointCorruptionError):
    """A checkpoint file is in a format this code does not read: the unframed format 1 of
    older beam_zdl versions (migrate it with ``beam-zdl migrate``), or a newer one."""


class ConfigMismatchError(ZdlError):
    """A restart's configuration differs from the one in the checkpoint."""


class StorageError(ZdlError):
    """A durable-storage operation failed permanently."""


class ObjectExistsError(StorageError):
    """A create-once write found the object already there."""


class KafkaUnavailableError(ZdlError):
    """Kafka could not be reached with the configured --bootstrap_servers."""


class TopicNotFoundError(ZdlError):
    """A topic to read or write does not exist (or has no partitions) on the brokers;
    names the topic and the brokers."""


class PartitionsUnavailableError(ZdlError):
    """An ``available_now`` run could not finish: other group members held partitions
    past ``--drain_timeout_s``; names the partitions and the members."""


class SinkFencedError(ZdlError):
    """A :class:`~beam_zdl.WriteToKafka` shard writer was fenced by a newer writer of the
    same transactional id: another driver took over the sink, this one is a zombie. Its
    transaction did not commit."""


class SinkConflictError(ZdlError):
    """A :class:`~beam_zdl.WriteToKafka` shard's progress record is past this batch, or
    holds it for another input: a zombie driver, or another pipeline writing with the same
    ``sink_id``. Nothing was written."""


class SchemaRegistryUnavailableError(ZdlError):
    """The Schema Registry could not be reached or answered an error that is not about the
    record (5xx, 408, 429, 401/403) while decoding; names the registry URL and the
    topic/partition/offset. The batch fails and is replayed: nothing is dead-lettered."""


class WorkerLostError(ZdlError):
    """An SDK worker process died while running a batch; the batch is run again from its
    recorded plan (see :mod:`beam_zdl.worker_pool`)."""


class BatchFailedError(ZdlError):
    """A batch's pipeline failed on a runner that reports a failure as text, not as the
    worker's exception (Flink, or any runner behind a Beam job service): names the batch,
    the runner and its job, and carries the runner's reason. The batch stays pending and
    is replayed with the same input on the next start, as after a failure on the local
    runner.

    Attributes:
        batch_id: the batch.
        runner: the runner's name.
        job_id: the runner's job id ("" when unknown).
        reason: the runner's own text, whole (Java and Python tracebacks).
        summary: the part of ``reason`` the message quotes (the worker's exception).
    """

    def __init__(self, batch_id: int, runner: str, job_id: str, reason: str,
                 summary: str) -> None:
        job = f" (job {job_id})" if job_id else ""
        super().__init__(
            f"batch {batch_id} failed on {runner}{job}: {summary}. The batch stays pending "
            "and is replayed with the same input on the next start: fix the cause first "
            "(the error's `reason` holds the runner's whole text; the runner's logs say "
            "more)")
        self.batch_id = batch_id
        self.runner = runner
        self.job_id = job_id
        self.reason = reason
        self.summary = summary

    def __reduce__(self) -> "tuple[type[BatchFailedError], tuple[int, str, str, str, str]]":
        return type(self), (self.batch_id, self.runner, self.job_id, self.reason, self.summary)
