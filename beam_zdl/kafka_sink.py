"""WriteToKafka: exactly-once output to Kafka from ``run_micro_batches``.

A replayed batch (``Batch.replay``) writes its output again. A plain producer
in ``build_fn`` therefore duplicates it; :class:`WriteToKafka` does not. Each
batch is written by a fixed number of *shards*, each shard in one Kafka
transaction that also records "shard ``s`` of sink ``id`` wrote batch ``b``".
A replay skips the shards whose record is there and writes the others again,
so a ``read_committed`` consumer sees every output record once.

Progress record
---------------

The record is a consumer-group offset committed *inside* the shard's
transaction (``send_offsets_to_transaction``): group
``beam-zdl-sink-<sink_id>-<shard>``, partition 0 of the progress topic (the
output topic unless ``progress_topic=`` names another one; the offset only
needs an existing partition), offset ``batch_id + 1``, metadata
``sink=<id> shard=<s> batch=<b> records=<n> input=<crc32 of the batch's
planned ranges/segments>``. Kafka makes it visible exactly
when the shard's records are (both or neither), and a ``committed()`` call
reads it back. Batches of one sink complete in order, so an offset
``batch_id + 1`` means this shard of this batch is already committed.

Protocol of one batch (``exactly_once``)
---------------------------------------

The sink's steps are named, not numbered: the numbers Step 0–5 belong to the batch
loop (:mod:`beam_zdl.microbatch.loop`), and all of these happen inside its Step 3 (run),
except *complete*, which is its Step 4.

* **shard** — in the pipeline, every element becomes an output record
  ``(key, value, headers)``, is checked against the size limit (the topic's
  ``max.message.bytes`` and the producer's ``message.max.bytes``) and is
  assigned to shard ``crc32(key, value) % shards`` — the same shard on every
  replay of the same input.
* **barrier** — a ``GroupByKey`` on the shard, so no shard writes
  anything before every record of the batch was sharded (a record too large
  fails the batch before any transaction starts).
* **fence** — per shard, a producer with the fixed ``transactional.id``
  ``beam-zdl-sink-<sink_id>-<shard>`` calls ``init_transactions()``: this
  fences every earlier producer with that id (a zombie driver's writer: its
  later commit fails) and completes or aborts the transaction it left open.
* **check progress** — read the shard's progress record (after *fence*, so no older
  writer can still commit). ``batch_id + 1`` (for the same input
  fingerprint): the shard is already in Kafka; skip it. Past it, or this
  batch for another input: the batch fails, writing nothing — a run's batches
  reach a shard in order, so only a zombie driver or a second pipeline with
  the same ``sink_id`` (or a new ``--checkpoint_dir``) gets there.
* **produce** — ``begin_transaction()``; produce the shard's records; ``flush()``.
  A record that fails (too large for the broker, topic gone, ...) aborts
  the transaction and fails the batch naming topic and partition.
* **record progress** — ``send_offsets_to_transaction()``: the progress record, offset
  ``batch_id + 1``, in the same transaction.
* **commit** — ``flush()`` again (librdkafka against Kafka 4.1 fails ending a
  transaction with records in flight: fatal ``INVALID_TXN_STATE``), then
  ``commit_transaction()``. Crash point ``after_shard_commit``.
* **complete** — the driver writes the batch's completion only after the runner
  reports DONE, i.e. after every shard committed or was skipped.

A crash before *commit* leaves an open transaction: its records are invisible to
``read_committed`` consumers, and the replay's *fence* aborts it. A crash after
*commit* of some shards and before *complete*: the batch is replayed and *check
progress* skips those shards. Shards are separate transactions, so a reader can see
the output of some shards of a batch before the others (never part of one shard);
each record still appears once.

Without ``exactly_once`` (no ``batch``), records go through an idempotent
producer (``enable.idempotence``, ``acks=all``) flushed at the end of every
bundle: at-least-once; a replayed batch writes again.

Streaming (``--streaming``) and ``exactly_once``: refused with a
:class:`~beam_zdl.errors.ConfigError`. A transaction would have to stay open
until the runner finalizes the bundle, and a job restarted without runner
state could not tell which open transactions to commit; micro-batches know
exactly (the checkpoint's pending batch).
"""

from __future__ import annotations

import logging
import zlib
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, List, Mapping, Optional,
                    Tuple)

import apache_beam as beam
from apache_beam.metrics import Metrics

import beam_zdl.kafka as kafka
import beam_zdl.metrics as metrics
import beam_zdl.secrets as secrets
from beam_zdl.chaos import crash_point
from beam_zdl.errors import (ConfigError, KafkaUnavailableError, SinkConflictError, SinkFencedError,
                             ZdlError)

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

__all__ = ["WriteToKafka", "ShardWriter", "OutputRecord", "shard_of", "progress_group",
           "transactional_id", "read_progress", "input_fingerprint"]

_LOGGER = logging.getLogger(__name__)

_TIMEOUT_S = 60.0
_BYTES_SERIALIZER = "org.apache.kafka.common.serialization.ByteArraySerializer"
_DEFAULT_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes default
# Bytes a record adds beyond key, value and headers, and a record batch's own header:
# enough that a record passing the check also fits a batch the broker accepts.
_RECORD_OVERHEAD = 128

# (key, value, headers); a header's value may be None, like a record's key and value.
OutputRecord = Tuple[Optional[bytes], Optional[bytes], List[Tuple[str, Optional[bytes]]]]


def transactional_id(sink_id: str, shard: int) -> str:
    """The fixed ``transactional.id`` of one shard of a sink (*fence*)."""
    return f"beam-zdl-sink-{sink_id}-{shard}"


def progress_group(sink_id: str, shard: int) -> str:
    """The consumer group whose offset is the shard's progress record (*record progress*)."""
    return f"beam-zdl-sink-{sink_id}-{shard}"


def shard_of(record: OutputRecord, shards: int) -> int:
    """The shard of an output record: the same in every process and on every replay."""
    key, value, _ = record
    return zlib.crc32(key or b"", zlib.crc32(value or b"")) % shards


def _as_bytes(what: str, data: Any) -> Optional[bytes]:
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise ConfigError(f"WriteToKafka: a record {what} must be bytes, str or None, not "
                      f"{type(data).__name__}; pass key_fn/value_fn that return bytes")


def to_record(element: Any, key_fn: Optional[Callable[[Any], Any]] = None,
              value_fn: Optional[Callable[[Any], Any]] = None) -> OutputRecord:
    """One element as ``(key, value, headers)``.

    With ``key_fn``/``value_fn``: their results (the element itself is the value
    when only ``key_fn`` is given). Else an object with ``key`` and ``value``
    attributes (a :class:`~beam_zdl.KafkaRecord`, any such NamedTuple; its
    ``headers`` too), a ``(key, value)`` pair, or a bare value.
    """
    headers = None
    if key_fn is not None or value_fn is not None:
        key = key_fn(element) if key_fn is not None else None
        value = value_fn(element) if value_fn is not None else element
    elif hasattr(element, "key") and hasattr(element, "value"):
        key, value = element.key, element.value
        headers = getattr(element, "headers", None)
    elif isinstance(element, tuple) and len(element) == 2:
        key, value = element
    else:
        key, value = None, element
    return (_as_bytes("key", key), _as_bytes("value", value),
            [(str(k), _as_bytes("header value", v)) for k, v in headers or ()])


def record_size(record: OutputRecord) -> int:
    """Bytes the record takes in a record batch, rounded up."""
    key, value, headers = record
    return (len(key or b"") + len(value or b"") + _RECORD_OVERHEAD
            + sum(len(k) + len(v or b"") + 8 for k, v in headers))


def _check_size(record: OutputRecord, limit: int, topic: str) -> OutputRecord:
    size = record_size(record)
    if size > limit:
        key = record[0][:40] if record[0] else None
        raise ZdlError(
            f"a record for topic {topic!r} is too large: about {size} bytes (key {key!r}) "
            f"with a limit of {limit} bytes (the smaller of the topic's max.message.bytes "
            "and the producer's message.max.bytes). Nothing of this batch was written; it "
            "stays pending and is replayed on the next start: raise the topic's "
            "max.message.bytes (and message.max.bytes in producer_config), or shrink the "
            "record")
    return record


def read_progress(consumer: Any, progress_topic: str,
                  timeout_s: float = _TIMEOUT_S) -> tuple[Optional[int], str]:
    """The batch id the shard's progress record says was last committed (None if none),
    and the record's metadata (``sink=... shard=... batch=... records=... input=...``).

    ``consumer`` belongs to the shard's :func:`progress_group`; with
    ``isolation.level=read_committed`` librdkafka asks for stable offsets, so a
    transaction still completing is waited for, never missed.
    """
    from confluent_kafka import KafkaException, TopicPartition
    try:
        found = kafka.committed(consumer, [TopicPartition(progress_topic, 0)], timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailableError(
            f"could not read the sink's progress record (group offsets on "
            f"{progress_topic}[0]): {exc.args[0]}; the batch stays pending") from exc
    offset = found[0].offset
    return (offset - 1 if offset > 0 else None), (found[0].metadata or "")


def input_fingerprint(batch: Any) -> str:
    """A CRC32 of a batch's planned input (offset ranges, WAL segments), or "" for a bare
    batch id: the progress record carries it, so a record written by another pipeline
    with the same ``sink_id`` is told apart from this one's."""
    ranges = getattr(batch, "ranges", None)
    if ranges is None:
        return ""
    text = ";".join(f"{r.topic}/{r.partition}/{r.start}/{r.stop}" for r in sorted(ranges))
    text += "|" + ";".join(sorted(getattr(batch, "segments", ()) or ()))
    return f"{zlib.crc32(text.encode()):08x}"


def _field(metadata: str, name: str) -> str:
    for item in metadata.split():
        key, _, value = item.partition("=")
        if key == name:
            return value
    return ""


class ShardWriter:
    """Writes one shard of a sink in Kafka transactions (*fence* to *commit* in the module doc).

    Args:
        topic: the output topic.
        bootstrap_servers: Kafka brokers.
        producer_config: extra confluent-kafka producer settings.
        sink_id: names the transactional.id and progress group; stable across restarts.
        shard: the shard number.
        progress_topic: the topic whose partition 0 carries the progress offsets.
        timeout_s: how long each Kafka call may take.
    """

    def __init__(self, topic: str, bootstrap_servers: str, producer_config: Mapping[str, Any],
                 sink_id: str, shard: int, progress_topic: str,
                 timeout_s: float = _TIMEOUT_S) -> None:
        self.topic, self.sink_id, self.shard = topic, sink_id, shard
        self.bootstrap_servers = bootstrap_servers
        self.progress_topic = progress_topic
        self.timeout_s = timeout_s
        self.transactional_id = transactional_id(sink_id, shard)
        self._settings = {"linger.ms": 5, "delivery.report.only.error": True,
                          **kafka.check_producer_config(producer_config)}
        self._producer: Any = None
        self._consumer: Any = None
        self._failures: list[str] = []
        self._written = 0

    # fence
    def open(self) -> None:
        """Fence every older writer of this shard and end the transaction it left open."""
        from confluent_kafka import Consumer, KafkaException, Producer
        self._producer = Producer(kafka.producer_settings(
            self.bootstrap_servers, self._settings, **{"transactional.id": self.transactional_id}))
        try:
            self._producer.init_transactions(self.timeout_s)
        except KafkaException as exc:
            raise ZdlError(
                f"Kafka at {self.bootstrap_servers} refused transactions for "
                f"transactional.id {self.transactional_id} (topic {self.topic!r}): "
                f"{exc.args[0]}. The brokers need a working transaction state log "
                "(transaction.state.log.replication.factor and min.isr no larger than the "
                "live brokers) and this principal needs WRITE on the transactional id. "
                "Nothing was written; the batch stays pending.") from exc
        self._consumer = Consumer({**kafka.connection_settings(self.bootstrap_servers,
                                                               self._settings),
                                   "group.id": progress_group(self.sink_id, self.shard),
                                   "enable.auto.commit": False,
                                   "isolation.level": "read_committed"})

    # check progress
    def last_batch(self) -> tuple[Optional[int], str]:
        """The last batch id this shard committed (read after :meth:`open`), or None, and
        its progress record's metadata."""
        return read_progress(self._consumer, self.progress_topic, self.timeout_s)

    # produce
    def begin(self) -> None:
        self._failures, self._written = [], 0
        self._producer.begin_transaction()

    def produce(self, records: Iterable[OutputRecord]) -> int:
        """Produce ``records`` into the open transaction and flush; raise on any failure."""
        producer = self._producer
        for key, value, headers in records:
            while True:
                try:
                    producer.produce(self.topic, value=value, key=key, headers=headers or None,
                                     on_delivery=self._on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
                except Exception as exc:  # noqa: BLE001 - KafkaException or a bad argument
                    self._abort(f"{self.topic}: {exc}")
            self._written += 1
        self._flush()
        return self._written

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def _flush(self) -> None:
        remaining = self._producer.flush(self.timeout_s)
        if remaining or self._failures:
            what = "; ".join(self._failures[:5]) or f"{remaining} records not delivered"
            self._abort(what)

    def _abort(self, what: str) -> None:
        """Abort the open transaction (after a flush) and raise naming what failed."""
        from confluent_kafka import KafkaException
        try:
            self._producer.flush(self.timeout_s)
            self._producer.abort_transaction(self.timeout_s)
            outcome = "its transaction was aborted"
        except KafkaException as exc:
            outcome = (f"aborting its transaction failed too ({exc.args[0]}); the next "
                       "writer of this shard aborts it")
        raise ZdlError(
            f"writing shard {self.shard} of sink {self.sink_id!r} failed: {what}. Nothing "
            f"of this shard is visible to read_committed consumers ({outcome}); the batch "
            "stays pending and is replayed on the next start.")

    # record progress, commit
    def commit(self, batch_id: int, fingerprint: str = "") -> None:
        """Add the progress record to the transaction and commit both."""
        from confluent_kafka import KafkaException, TopicPartition
        progress = TopicPartition(self.progress_topic, 0, batch_id + 1,
                                  f"sink={self.sink_id} shard={self.shard} batch={batch_id} "
                                  f"records={self._written} input={fingerprint or '-'}")
        try:
            self._producer.send_offsets_to_transaction(
                [progress], self._consumer.consumer_group_metadata(), self.timeout_s)
            self._producer.flush(self.timeout_s)
        except KafkaException as exc:
            self._check_fenced(exc.args[0])
            self._abort(f"recording batch {batch_id} in the progress record: {exc.args[0]}")
        for attempt in range(1, 4):
            try:
                self._producer.commit_transaction(self.timeout_s)
                return
            except KafkaException as exc:
                err = exc.args[0]
                self._check_fenced(err)
                if err.retriable() and attempt < 3:
                    continue  # a commit that timed out may be retried (librdkafka)
                if err.txn_requires_abort():
                    self._abort(f"committing batch {batch_id}: {err}")
                raise ZdlError(
                    f"committing shard {self.shard} of sink {self.sink_id!r} (batch "
                    f"{batch_id}) ended undecided: {err}. The next writer of this shard "
                    "completes or aborts it (init_transactions), and the batch, which stays "
                    "pending, then skips the shard if it committed.") from exc

    def _check_fenced(self, err: Any) -> None:
        if err.fatal() and err.name() in ("_FENCED", "PRODUCER_FENCED",
                                          "INVALID_PRODUCER_EPOCH"):
            raise SinkFencedError(
                f"shard {self.shard} of sink {self.sink_id!r} (transactional.id "
                f"{self.transactional_id}) was fenced by a newer writer: another driver took "
                "over this sink, so this one is a zombie. Its transaction did not commit; "
                "nothing of it is visible.")

    def write_batch(self, batch_id: int, records: Iterable[OutputRecord],
                    fingerprint: str = "") -> Optional[int]:
        """*check progress* to *commit* for one batch: records written, or None when already
        committed.

        Raises:
            SinkConflictError: the progress record is past this batch, or holds this batch for
                another input: a zombie driver, or another pipeline (or a new
                ``--checkpoint_dir``) writing with this ``sink_id``. Nothing is written.
        """
        last, metadata = self.last_batch()
        theirs = _field(metadata, "input")
        if last is not None and (last > batch_id or (
                last == batch_id and fingerprint and theirs not in ("", "-", fingerprint))):
            raise SinkConflictError(
                f"shard {self.shard} of sink {self.sink_id!r} already committed batch {last} "
                f"({metadata!r}), so it cannot write batch {batch_id}"
                + (f" (input {fingerprint})" if fingerprint else "") + ". A run's batches "
                "reach a shard in order, so either this driver is a zombie (a newer one "
                "took over) or another pipeline, or this one started over with a new "
                "--checkpoint_dir, writes with the same sink_id: give each its own "
                "sink_id. Nothing was written; the batch stays pending.")
        if last == batch_id:
            _LOGGER.info("sink %s shard %d: batch %d already committed; skipped",
                         self.sink_id, self.shard, batch_id)
            return None
        self.begin()
        written = self.produce(records)
        crash_point("before_shard_commit")
        self.commit(batch_id, fingerprint)
        crash_point("after_shard_commit")
        return written

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._producer = None


class _WriteShardsFn(beam.DoFn):
    """Writes each ``(shard, records)`` group in one transaction (exactly_once)."""

    def __init__(self, topic: str, bootstrap_servers: str, producer_config: dict[str, Any],
                 sink_id: str, progress_topic: str, batch_id: int, fingerprint: str,
                 timeout_s: float) -> None:
        self._args = (topic, bootstrap_servers, producer_config, sink_id)
        self._progress_topic = progress_topic
        self._batch_id = batch_id
        self._fingerprint = fingerprint
        self._timeout_s = timeout_s
        self._written = Metrics.counter(metrics.NAMESPACE, "sink_records_written")
        self._committed = Metrics.counter(metrics.NAMESPACE, "sink_shards_committed")
        self._skipped = Metrics.counter(metrics.NAMESPACE, "sink_shards_skipped")

    def process(
            self, element: tuple[int, Iterable[OutputRecord]],
    ) -> Iterator[tuple[int, Optional[int]]]:
        shard, records = element
        writer = ShardWriter(*self._args, shard=shard, progress_topic=self._progress_topic,
                             timeout_s=self._timeout_s)
        try:
            writer.open()
            written = writer.write_batch(self._batch_id, records, self._fingerprint)
        finally:
            writer.close()
        if written is None:
            self._skipped.inc()
        else:
            self._committed.inc()
            self._written.inc(written)
        yield shard, written


class _WriteAtLeastOnceFn(beam.DoFn):
    """An idempotent producer, flushed at the end of every bundle."""

    def __init__(self, topic: str, settings: dict[str, Any], timeout_s: float) -> None:
        self._topic, self._settings, self._timeout_s = topic, settings, timeout_s
        self._written = Metrics.counter(metrics.NAMESPACE, "sink_records_written")

    def setup(self) -> None:
        from confluent_kafka import Producer
        self._producer: Any = Producer(kafka.producer_settings(
            self._settings["bootstrap.servers"], self._settings))
        self._failures: list[str] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def process(self, record: OutputRecord) -> None:
        key, value, headers = record
        while True:
            try:
                self._producer.produce(self._topic, value=value, key=key,
                                       headers=headers or None, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._written.inc()

    def finish_bundle(self) -> None:
        remaining = self._producer.flush(self._timeout_s)
        if remaining or self._failures:
            what = "; ".join(self._failures[:5]) or f"{remaining} records not delivered"
            self._failures = []
            raise ZdlError(f"writing to topic {self._topic!r} failed: {what}; the bundle "
                           "fails (records of it may already be written: at-least-once)")

    def teardown(self) -> None:
        if getattr(self, "_producer", None) is not None:
            self._producer.flush(self._timeout_s)


class WriteToKafka(beam.PTransform[beam.PCollection[Any], beam.PCollection[Any]]):
    """Writes a PCollection to a Kafka topic; exactly-once inside ``run_micro_batches``.

    Elements are :class:`~beam_zdl.KafkaRecord`-like objects (``key``, ``value``,
    optional ``headers``), ``(key, value)`` pairs, bare values, or anything
    ``key_fn``/``value_fn`` turn into bytes or str. The output partition is
    chosen by the producer's partitioner from the key.

    Beam's shape works too: ``WriteToKafka(producer_config, topic)`` with the brokers
    in ``producer_config["bootstrap.servers"]``; Beam's ``key_serializer`` /
    ``value_serializer`` are accepted as ByteArraySerializer (records are bytes or
    str; use ``key_fn``/``value_fn`` to convert), ``with_headers=False`` drops the
    elements' headers.

    Args:
        topic: the output topic (must exist).
        bootstrap_servers: Kafka brokers (or ``producer_config["bootstrap.servers"]``).
        producer_config: extra confluent-kafka producer settings (security,
            ``compression.type``, ``message.max.bytes``, ...); values may be
            ``${env:NAME}`` / ``${file:PATH}`` references, resolved where the
            producer is created (see :mod:`beam_zdl.secrets`). ``transactional.id``,
            ``enable.idempotence=false`` and ``acks`` other than ``all`` are refused
            (see ``beam_zdl.kafka.GUARDED_PRODUCER``).
        key_fn: element → key (bytes, str or None).
        value_fn: element → value (bytes, str or None).
        batch: the :class:`~beam_zdl.Batch` (or its id) ``build_fn`` was given;
            inside ``run_micro_batches``' ``build_fn`` it is found without being
            passed.
        exactly_once: default True when there is a batch (given, or inside
            ``build_fn``), else False (idempotent producer, at-least-once).
        sink_id: names the transactional ids and progress groups: keep it across
            restarts and upgrades, and give two pipelines writing one topic
            different ids. Defaults to ``topic``.
        shards: how many transactions write a batch (in parallel on runners
            with several workers). Keep it across restarts.
        progress_topic: an existing topic whose partition 0 carries the progress
            offsets; defaults to ``topic``.
        timeout_s: how long each Kafka call may take.
        connect_timeout_s: when the pipeline is built, how long to wait for the brokers'
            first answer before failing with the reason (0: ``timeout_s``).
        with_headers: as Beam's: ``False`` writes no headers (default: the elements'
            headers, if they have any).

    Raises:
        ConfigError: ``exactly_once`` without ``batch``, or with ``--streaming``;
            a bad argument or a guarded producer setting.
        TopicNotFoundError: (when the pipeline is built) the topic does not exist.
    """

    def __init__(self, topic: Any = None, bootstrap_servers: Optional[str] = None, *,
                 producer_config: Optional[Mapping[str, Any]] = None,
                 key_fn: Optional[Callable[[Any], Any]] = None,
                 value_fn: Optional[Callable[[Any], Any]] = None,
                 batch: Any = None, exactly_once: Optional[bool] = None,
                 sink_id: Optional[str] = None, shards: int = 4,
                 progress_topic: Optional[str] = None, timeout_s: float = _TIMEOUT_S,
                 connect_timeout_s: float = kafka.CONNECT_TIMEOUT_S,
                 with_headers: Optional[bool] = None,
                 key_serializer: str = _BYTES_SERIALIZER,
                 value_serializer: str = _BYTES_SERIALIZER,
                 expansion_service: Any = None) -> None:
        super().__init__()
        if isinstance(topic, Mapping):  # Beam's WriteToKafka(producer_config, topic)
            if producer_config is not None:
                raise ConfigError("WriteToKafka: producer_config given twice (first "
                                  "argument and producer_config=)")
            producer_config, topic, bootstrap_servers = topic, bootstrap_servers, None
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"WriteToKafka needs topic= (an existing topic's name), got "
                              f"{topic!r}")
        for name, value in (("key_serializer", key_serializer),
                            ("value_serializer", value_serializer)):
            if value != _BYTES_SERIALIZER:
                raise ConfigError(f"WriteToKafka({name}={value!r}): beam_zdl writes bytes "
                                  "(str is encoded as UTF-8); convert elements with key_fn= / "
                                  "value_fn=")
        if expansion_service is not None:
            raise ConfigError("WriteToKafka(expansion_service=...): beam_zdl writes Kafka in "
                              "Python; there is no expansion service")
        config = dict(producer_config or {})
        servers = config.pop("bootstrap.servers", None)
        if servers is not None and bootstrap_servers is not None and servers != bootstrap_servers:
            raise ConfigError(f"WriteToKafka: producer_config['bootstrap.servers']={servers!r} "
                              f"and bootstrap_servers={bootstrap_servers!r} disagree; give one")
        bootstrap_servers = bootstrap_servers or servers
        if not bootstrap_servers:
            raise ConfigError("WriteToKafka needs the brokers: bootstrap_servers='host:port' "
                              "or producer_config={'bootstrap.servers': 'host:port'}")
        self._topic = topic
        self._bootstrap_servers = str(bootstrap_servers)
        self._producer_config = kafka.check_producer_config(config)
        self._connect_timeout_s = float(connect_timeout_s)
        self._with_headers = with_headers is not False
        self._key_fn, self._value_fn = key_fn, value_fn
        if batch is None:
            from beam_zdl.batch import current_batch
            batch = current_batch()  # inside run_micro_batches' build_fn: its batch
        self._batch_id = None if batch is None else int(getattr(batch, "batch_id", batch))
        self._fingerprint = input_fingerprint(batch)
        self._exactly_once = (self._batch_id is not None) if exactly_once is None \
            else bool(exactly_once)
        self._sink_id = sink_id or topic
        self._shards = int(shards)
        self._progress_topic = progress_topic or topic
        self._timeout_s = float(timeout_s)
        if self._exactly_once and self._batch_id is None:
            raise ConfigError(
                "WriteToKafka(exactly_once=True) needs batch=: use it in run_micro_batches' "
                "build_fn(records, batch) and pass batch=batch (each batch's transactions "
                "are keyed by its id)")
        if self._shards < 1:
            raise ConfigError(f"WriteToKafka: shards must be >= 1, got {shards}")
        for key in secrets.literal_secrets(self._producer_config):
            _LOGGER.warning("WriteToKafka: producer_config[%r] holds a literal secret, which "
                            "runners keep in job descriptions; use ${env:NAME} or "
                            "${file:PATH} instead", key)

    @classmethod
    def from_options(cls, options: PipelineOptions, topic: str,
                     **kwargs: Any) -> "WriteToKafka":
        """``bootstrap_servers`` from ``--bootstrap_servers``; the rest as keywords."""
        return cls(topic, options.get_all_options()["bootstrap_servers"], **kwargs)

    def display_data(self) -> dict[str, Any]:
        import json
        return {"topic": self._topic, "bootstrap_servers": self._bootstrap_servers,
                "producer_config": json.dumps(secrets.redact(self._producer_config),
                                              sort_keys=True),
                "sink_id": self._sink_id, "shards": self._shards,
                "exactly_once": self._exactly_once,
                "batch_id": -1 if self._batch_id is None else self._batch_id}

    def expand(self, pcoll: beam.PCollection[Any]) -> beam.PCollection[Any]:
        from apache_beam.options.pipeline_options import StandardOptions
        if self._exactly_once and pcoll.pipeline.options.view_as(StandardOptions).streaming:
            raise ConfigError(
                "WriteToKafka(exactly_once=True) runs only in run_micro_batches' bounded "
                "batches, not with --streaming: a Kafka transaction cannot stay open until "
                "the runner finalizes a bundle, and a job restarted without runner state "
                "could not tell which open transactions to commit. Use run_micro_batches, "
                "or exactly_once=False (at-least-once) in streaming")
        limit = self._size_limit()
        topic, key_fn, value_fn = self._topic, self._key_fn, self._value_fn
        headers = self._with_headers

        def as_record(element: Any) -> OutputRecord:
            record = to_record(element, key_fn, value_fn)
            return _check_size(record if headers else (record[0], record[1], []), limit, topic)

        # Only failed deliveries call back into Python: one call per record costs throughput.
        settings = {"bootstrap.servers": self._bootstrap_servers, "linger.ms": 5,
                    "delivery.report.only.error": True,
                    **self._producer_config, "message.max.bytes": limit}
        if not self._exactly_once:
            settings.update({"enable.idempotence": True, "acks": "all"})
            written: beam.PCollection[Any] = (
                pcoll
                | "ToRecord" >> beam.Map(as_record)
                | "Write" >> beam.ParDo(_WriteAtLeastOnceFn(topic, settings, self._timeout_s)))
            return written
        settings.pop("bootstrap.servers")
        shards = self._shards
        assert self._batch_id is not None  # __init__ refuses exactly_once without a batch

        def keyed(element: Any) -> tuple[int, OutputRecord]:
            record = as_record(element)
            return shard_of(record, shards), record

        committed: beam.PCollection[Any] = (
            pcoll
            | "ToShardedRecord" >> beam.Map(keyed)
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(_WriteShardsFn(
                topic, self._bootstrap_servers, settings, self._sink_id,
                self._progress_topic, self._batch_id, self._fingerprint,
                self._timeout_s)))
        return committed

    def _size_limit(self) -> int:
        """The smaller of the topic's max.message.bytes and the producer's message.max.bytes;
        also checks that the topic (and the progress topic) exist."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import ConfigResource
        admin, reasons = kafka.new_admin(self._bootstrap_servers, self._producer_config)
        wait_s = self._connect_timeout_s if self._connect_timeout_s > 0 else self._timeout_s
        for name in {self._topic, self._progress_topic}:
            try:
                kafka.topic_partitions(
                    admin, name, wait_s, self._bootstrap_servers,
                    "WriteToKafka writes to an existing topic: create it first. Nothing was "
                    "written; in run_micro_batches the batch stays pending.")
            except KafkaException as exc:
                admin.poll(0)  # serves the error callbacks: the reason
                raise kafka.unreachable_error(
                    self._bootstrap_servers, wait_s, reasons, exc.args[0],
                    flag="WriteToKafka: bootstrap_servers",
                    timeout_flag="WriteToKafka(connect_timeout_s=...)", default=None) from exc
        limit = int(self._producer_config.get("message.max.bytes", _DEFAULT_MAX_BYTES))
        try:
            resource = ConfigResource(ConfigResource.Type.TOPIC, self._topic)
            configs = admin.describe_configs([resource])[resource].result(self._timeout_s)
            limit = min(limit, int(configs["max.message.bytes"].value))
        except Exception as exc:  # noqa: BLE001 - without it, the producer's limit applies
            _LOGGER.info("could not read max.message.bytes of topic %s (%s); using the "
                         "producer's message.max.bytes=%d", self._topic, exc, limit)
        del admin
        return limit
