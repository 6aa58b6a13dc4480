"""KafkaRecord: the element type both modes produce.

A typed ``NamedTuple`` so Beam infers a schema for it (``RowCoder``): it can
be used with ``beam.Select``, SQL and schema-aware transforms, and crosses
process boundaries compactly. ``headers`` is a list of ``(key, value)``
pairs as Kafka carries them: keys repeat and order matters.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import apache_beam as beam

__all__ = ["KafkaHeader", "KafkaRecord"]


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
