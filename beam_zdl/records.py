"""KafkaRecord: the element type both modes produce, and every conversion into it.

A typed ``NamedTuple`` so Beam infers a schema for it (``RowCoder``): it can
be used with ``beam.Select``, SQL and schema-aware transforms, and crosses
process boundaries compactly. ``headers`` is a list of ``(key, value)``
pairs as Kafka carries them: keys repeat and order matters.

Every reader builds its records here: :func:`from_message` (a confluent-kafka
message: direct and streaming reads) and :func:`from_columns` (the columns of a WAL
block, which :func:`beam_zdl.wal_read.from_block` restores first: this module knows
nothing of the WAL). They are the per-record hot path, so they
build the tuple with ``tuple.__new__`` (NamedTuple's Python-level ``__new__``
costs more than the rest of the conversion). The opposite direction, a
message into the WAL, is :meth:`beam_zdl.wal.WalWriter.append_message`: the
receiver writes WAL without importing Beam.
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Sequence

import apache_beam as beam

__all__ = ["KafkaHeader", "KafkaRecord", "from_message", "append_windowed", "batch_of",
           "from_columns",
           "payload_bytes"]


class KafkaHeader(NamedTuple):
    """One record header: a string key and bytes value (a ``(str, bytes)`` pair)."""
    key: str
    value: Optional[bytes]


class KafkaRecord(NamedTuple):
    """One Kafka record, identified by ``(topic, partition, offset)``."""
    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    timestamp_ms: int
    headers: List[KafkaHeader]

    @property
    def id(self) -> str:
        """``topic/partition/offset``: unique, a natural idempotency key."""
        return f"{self.topic}/{self.partition}/{self.offset}"


beam.coders.registry.register_coder(KafkaHeader, beam.coders.RowCoder)
beam.coders.registry.register_coder(KafkaRecord, beam.coders.RowCoder)


_new = tuple.__new__


def from_message(msg: Any) -> KafkaRecord:
    """The record of a confluent-kafka ``Message`` (one without an error)."""
    headers = msg.headers()
    return _new(KafkaRecord, (msg.topic(), msg.partition(), msg.offset(), msg.key(),
                              msg.value(), msg.timestamp()[1],
                              [KafkaHeader(k, v) for k, v in headers] if headers else []))


def append_windowed(out: List[Any], messages: List[Any], topic: str, partition: int,
                    windows: Any, make: Callable[[Any, int, Any], Any]) -> int:
    """Append the records of ``messages`` (error-free, all of ``topic[partition]``) to
    ``out`` as WindowedValues (``make(record, timestamp_micros, windows)``); return their
    key plus value bytes.

    The direct reader's per-record path: one loop, no call per record, the partition's
    names not asked of every message (0.5 us a record less than ``from_message``).
    """
    emit = out.append
    nbytes = 0
    for msg in messages:
        key, value, headers, timestamp = msg.key(), msg.value(), msg.headers(), msg.timestamp()[1]
        if key is not None:
            nbytes += len(key)
        if value is not None:
            nbytes += len(value)
        emit(make(_new(KafkaRecord, (topic, partition, msg.offset(), key, value, timestamp,
                                     [KafkaHeader(k, v) for k, v in headers] if headers else [])),
                  timestamp * 1000, windows))
    return nbytes


def batch_of(messages: List[Any], topic: str, partition: int) -> tuple[List[KafkaRecord], int, int]:
    """The records of ``messages`` (error-free, all of ``topic[partition]``) as a list,
    with their key plus value bytes and their earliest timestamp (ms).

    The direct reader's per-record path with ``--record_batches``: as
    :func:`append_windowed`, without a WindowedValue per record.
    """
    out: List[KafkaRecord] = []
    emit = out.append
    nbytes = 0
    earliest = None
    for msg in messages:
        key, value, headers, timestamp = msg.key(), msg.value(), msg.headers(), msg.timestamp()[1]
        if key is not None:
            nbytes += len(key)
        if value is not None:
            nbytes += len(value)
        if earliest is None or timestamp < earliest:
            earliest = timestamp
        emit(_new(KafkaRecord, (topic, partition, msg.offset(), key, value, timestamp,
                                [KafkaHeader(k, v) for k, v in headers] if headers else [])))
    return out, nbytes, earliest or 0


def from_columns(topic: str, partition: int, offsets: Sequence[int],
                 timestamps_ms: Sequence[int], keys: Sequence[Optional[bytes]],
                 values: Sequence[Optional[bytes]],
                 headers: Optional[Sequence[Sequence[Any]]]) -> List[KafkaRecord]:
    """The records of one partition's columns, record ``i`` from each column's item ``i``.

    Args:
        keys, values: with their nulls (None) restored.
        headers: None when no record has headers; else, per record, its header messages
            (``key``, optional ``value``: ``beam_zdl.v1.wal_pb2.Header``).

    One loop over the columns: ~0.5 us a record (a WalRecord each cost ~5 us).
    """
    if headers is None:
        return [_new(KafkaRecord, (topic, partition, offset, key, value, ts, []))
                for offset, key, value, ts in zip(offsets, keys, values, timestamps_ms)]
    return [_new(KafkaRecord, (topic, partition, offset, key, value, ts, [
        KafkaHeader(h.key, h.value if h.HasField("value") else None) for h in hdrs]))
            for offset, key, value, ts, hdrs in zip(offsets, keys, values, timestamps_ms,
                                                    headers)]


def payload_bytes(record: KafkaRecord) -> int:
    """Key plus value length: what the ``bytes`` counter counts."""
    key, value = record.key, record.value
    return (len(key) if key is not None else 0) + (len(value) if value is not None else 0)
