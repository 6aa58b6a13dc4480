"""DecodeRecords: Kafka bytes to values, with undecodable records in a dead-letter output.

``records | DecodeRecords(value=..., key=...)`` returns Beam's tagged-output
tuple (the shape of ``ParDo(...).with_outputs()``): ``result.records`` holds
:class:`DecodedRecord` elements, ``result.dead_letters`` :class:`DeadLetter`
elements; ``records, dead_letters = result`` unpacks in that order.

Decoders (for ``key=`` and ``value=``)
--------------------------------------

==================  ============================================================
``"bytes"``         the bytes as they are (the default for ``key``)
``"string"``        UTF-8 text, strict
``"json"``          ``json.loads`` of UTF-8 text
``"avro"``          Confluent wire format (magic byte 0, 4-byte schema id),
                    writer schema from the Schema Registry; a ``dict``.
                    :class:`Avro` takes a reader schema
``"json_schema"``   Confluent wire format, JSON validated against the registered
                    schema; :class:`JsonSchema` takes a local schema
:class:`Protobuf`   Confluent wire format into the given generated message class
a callable          ``fn(data: bytes) -> value``
==================  ============================================================

A null key or value (a tombstone) stays ``None``; no decoder sees it.

What is a dead letter and what fails the batch
----------------------------------------------

A record whose bytes cannot be decoded goes to ``dead_letters`` with its
coordinates, raw bytes, the field (``key``/``value``) and the error, and is
counted in the ``dead_letter_records`` metric: bad bytes, a wrong magic byte,
a schema id the registry does not know (HTTP 404), invalid UTF-8 or JSON, a
user decoder's exception. Nothing is dropped.

A Schema Registry that cannot be reached, times out, or answers 5xx/408/429
(or 401/403: wrong credentials) says nothing about the record: dead-lettering
would route every record to the dead letters while the registry is down. The
bundle fails with :class:`~beam_zdl.errors.SchemaRegistryUnavailableError`
instead; in ``run_micro_batches`` the batch stays pending and is replayed with
the same offsets. A user decoder may raise any :class:`~beam_zdl.errors.ZdlError`
to the same effect.

Schema Registry settings (``schema_registry_config``) are confluent-kafka's
``SchemaRegistryClient`` settings; secrets (``basic.auth.user.info``,
``bearer.auth.token``, ...) may be ``${env:NAME}`` / ``${file:PATH}``
references, are resolved on the workers in ``setup``, and are redacted in
display data, logs and errors.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterator, List, Mapping, NamedTuple, Optional, Union
from urllib.parse import urlsplit, urlunsplit

import apache_beam as beam
from apache_beam.metrics import Metrics

import beam_zdl.metrics as metrics
import beam_zdl.secrets as secrets
from beam_zdl.errors import ConfigError, SchemaRegistryUnavailableError, ZdlError
from beam_zdl.records import KafkaHeader, KafkaRecord

__all__ = ["DecodeRecords", "DecodedRecord", "DeadLetter", "Avro", "Protobuf", "JsonSchema",
           "DEAD_LETTERS", "DEAD_LETTER_HEADER_PREFIX"]

_LOGGER = logging.getLogger(__name__)

#: The tag of the dead-letter output (``result.dead_letters``).
DEAD_LETTERS = "dead_letters"
#: Headers :meth:`DeadLetter.to_kafka_record` adds: ``<prefix>topic``, ``partition``,
#: ``offset``, ``field``, ``error_type``, ``error``.
DEAD_LETTER_HEADER_PREFIX = "beam_zdl.dead_letter."

# Registry answers that say "the registry cannot serve now" (retry later), not "this
# record is bad". 401/403: the credentials are wrong for every record alike.
_REGISTRY_DOWN_STATUS = {401, 403, 408, 429}


class DecodedRecord(NamedTuple):
    """A decoded record; ``(topic, partition, offset)`` stays the idempotency key."""
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: Any
    value: Any
    headers: List[KafkaHeader]

    @property
    def id(self) -> str:
        """``topic/partition/offset``, as :attr:`KafkaRecord.id`."""
        return f"{self.topic}/{self.partition}/{self.offset}"


class DeadLetter(NamedTuple):
    """A record that could not be decoded: the raw record and why.

    ``field`` is ``"key"`` or ``"value"``; ``error_type`` the exception's class
    name; ``error`` its message.
    """
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: List[KafkaHeader]
    field: str
    error_type: str
    error: str

    @property
    def id(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    def to_kafka_record(self) -> KafkaRecord:
        """The raw record with the failure in extra headers, for a dead-letter topic.

        :class:`~beam_zdl.WriteToKafka` writes its key, value and headers:
        ``dead_letters | beam.Map(DeadLetter.to_kafka_record) | WriteToKafka(...)``.
        The headers (prefix :data:`DEAD_LETTER_HEADER_PREFIX`) carry the original
        topic, partition, offset, the field, the error type and message, so the
        dead-letter topic can be replayed or inspected without this code.
        """
        failure = {"topic": self.topic, "partition": str(self.partition),
                   "offset": str(self.offset), "field": self.field,
                   "error_type": self.error_type, "error": self.error}
        extra = [KafkaHeader(DEAD_LETTER_HEADER_PREFIX + name, text.encode("utf-8"))
                 for name, text in failure.items()]
        return KafkaRecord(self.topic, self.partition, self.offset, self.key, self.value,
                           self.timestamp_ms, list(self.headers) + extra)


beam.coders.registry.register_coder(DeadLetter, beam.coders.RowCoder)
# key and value are whatever a decoder returns (dicts, protobuf messages, ...): pickled.
beam.coders.registry.register_coder(DecodedRecord, beam.coders.PickleCoder)


class Avro(NamedTuple):
    """Confluent-framed Avro; ``reader_schema`` (Avro JSON) projects the writer's data."""
    reader_schema: Optional[str] = None


class JsonSchema(NamedTuple):
    """Confluent-framed JSON Schema; ``schema`` validates locally instead of the registered
    schema."""
    schema: Optional[str] = None


class Protobuf(NamedTuple):
    """Confluent-framed Protobuf decoded into ``message_type``, a generated message class."""
    message_type: Any  # a generated class: a google.protobuf.message.Message subclass


Decoder = Union[str, Avro, JsonSchema, Protobuf, Callable[[bytes], Any]]
_PLAIN = ("bytes", "string", "json")
_BY_NAME = {"avro": Avro(), "json_schema": JsonSchema()}


def _spec(argument: str, decoder: Decoder) -> Any:
    """A validated decoder spec: a plain name, a registry spec, or a callable."""
    if isinstance(decoder, str):
        if decoder in _PLAIN:
            return decoder
        if decoder in _BY_NAME:
            return _BY_NAME[decoder]
        if decoder == "protobuf":
            raise ConfigError(f"DecodeRecords({argument}='protobuf') needs the message class: "
                              f"pass {argument}=beam_zdl.decode.Protobuf(MyMessage)")
        raise ConfigError(f"DecodeRecords({argument}={decoder!r}) is not a decoder: use one "
                          "of 'bytes', 'string', 'json', 'avro', 'json_schema', "
                          "Protobuf(MessageClass) or a callable taking bytes")
    if isinstance(decoder, (Avro, JsonSchema, Protobuf)) or callable(decoder):
        return decoder
    raise ConfigError(f"DecodeRecords({argument}=...) must be a decoder name, Avro(), "
                      f"JsonSchema(), Protobuf(MessageClass) or a callable, not "
                      f"{type(decoder).__name__}")


def _needs_registry(spec: Any) -> bool:
    return isinstance(spec, (Avro, JsonSchema, Protobuf))


def _describe(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Protobuf):
        return f"protobuf:{spec.message_type.DESCRIPTOR.full_name}"
    if isinstance(spec, Avro):
        return "avro" + (" (reader schema)" if spec.reader_schema else "")
    if isinstance(spec, JsonSchema):
        return "json_schema" + (" (local schema)" if spec.schema else "")
    return getattr(spec, "__qualname__", type(spec).__name__)


def shown_url(url: str) -> str:
    """A registry URL as shown to people: any ``user:password@`` is redacted."""
    parts = []
    for one in url.split(","):
        split = urlsplit(one.strip())
        if split.username is not None or split.password is not None:
            host = split.hostname or ""
            port = f":{split.port}" if split.port else ""
            split = split._replace(netloc=f"{secrets.REDACTED}@{host}{port}")
        parts.append(urlunsplit(split))
    return ",".join(parts)


class DecodeRecordsFn(beam.DoFn):
    """Decodes one :class:`~beam_zdl.KafkaRecord`: main output or dead letter, never dropped.

    Takes :class:`DecodeRecords`' arguments (``registry_url``/``registry_config`` are its
    ``schema_registry_url``/``schema_registry_config``) and validates them alike.
    """

    def __init__(self, value: Decoder = "bytes", key: Decoder = "bytes",
                 registry_url: Optional[str] = None,
                 registry_config: Optional[Mapping[str, Any]] = None) -> None:
        self._value_spec = _spec("value", value)
        self._key_spec = _spec("key", key)
        config = dict(registry_config or {})
        if registry_url is None:
            registry_url = config.pop("url", None)
        elif config.pop("url", registry_url) != registry_url:
            raise ConfigError("DecodeRecords: schema_registry_config['url'] and "
                              "schema_registry_url= disagree; give the URL once")
        if registry_url is not None and not isinstance(registry_url, str):
            raise ConfigError("DecodeRecords(schema_registry_url=...) must be a URL string, "
                              f"not {type(registry_url).__name__}")
        if (_needs_registry(self._value_spec) or _needs_registry(self._key_spec)) and \
                not registry_url:
            raise ConfigError("DecodeRecords: the avro, json_schema and protobuf decoders "
                              "read schemas from a Schema Registry: pass "
                              "schema_registry_url='http://host:port'")
        for setting in secrets.literal_secrets(config):
            _LOGGER.warning("DecodeRecords: schema_registry_config[%r] holds a literal secret, "
                            "which runners keep in job descriptions; use ${env:NAME} or "
                            "${file:PATH} instead", setting)
        self._registry_url = registry_url
        self._registry_config = config
        self._dead = Metrics.counter(metrics.NAMESPACE, metrics.DEAD_LETTER_RECORDS)

    def display_data(self) -> dict[str, str]:
        shown = {"key": _describe(self._key_spec), "value": _describe(self._value_spec)}
        if self._registry_url:
            shown["schema_registry_url"] = shown_url(self._registry_url)
            shown["schema_registry_config"] = json.dumps(
                secrets.redact(self._registry_config), sort_keys=True)
        return shown

    def setup(self) -> None:
        self._client = None
        if _needs_registry(self._key_spec) or _needs_registry(self._value_spec):
            from confluent_kafka.schema_registry import SchemaRegistryClient
            settings = secrets.resolve(self._registry_config, source="schema_registry_config")
            self._client = SchemaRegistryClient({**settings, "url": self._registry_url})
        self._decoders = {"key": self._decoder(self._key_spec),
                          "value": self._decoder(self._value_spec)}

    def _decoder(self, spec: Any) -> Callable[[bytes, KafkaRecord, str], Any]:
        if spec == "bytes":
            return lambda data, record, field: data
        if spec == "string":
            return lambda data, record, field: data.decode("utf-8")
        if spec == "json":
            return lambda data, record, field: json.loads(data.decode("utf-8"))
        if not _needs_registry(spec):
            return lambda data, record, field: spec(data)
        from confluent_kafka.serialization import MessageField, SerializationContext
        deserializer = self._deserializer(spec)
        fields = {"key": MessageField.KEY, "value": MessageField.VALUE}

        def registry_decode(data: bytes, record: KafkaRecord, field: str) -> Any:
            context = SerializationContext(record.topic, fields[field],
                                           [(h.key, h.value) for h in record.headers])
            return deserializer(data, context)
        return registry_decode

    def _deserializer(self, spec: Any) -> Any:
        if isinstance(spec, Avro):
            from confluent_kafka.schema_registry.avro import AvroDeserializer
            return AvroDeserializer(self._client, schema_str=spec.reader_schema)
        if isinstance(spec, JsonSchema):
            from confluent_kafka.schema_registry.json_schema import JSONDeserializer
            return JSONDeserializer(spec.schema, schema_registry_client=self._client)
        from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
        return ProtobufDeserializer(spec.message_type, {"use.deprecated.format": False},
                                    schema_registry_client=self._client)

    def process(self, record: KafkaRecord) -> Iterator[Any]:
        decoded: dict[str, Any] = {}
        for field in ("key", "value"):
            data = getattr(record, field)
            if data is None:
                decoded[field] = None
                continue
            try:
                decoded[field] = self._decoders[field](data, record, field)
            except ZdlError:
                raise
            except Exception as exc:  # classified: registry down fails, the rest dead-letters
                self._raise_if_registry_down(exc, record, field)
                self._dead.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter(
                    record.topic, record.partition, record.offset, record.timestamp_ms,
                    record.key, record.value, list(record.headers), field,
                    type(exc).__name__, str(exc) or repr(exc)))
                return
        yield DecodedRecord(record.topic, record.partition, record.offset, record.timestamp_ms,
                            decoded["key"], decoded["value"], list(record.headers))

    def _raise_if_registry_down(self, exc: Exception, record: KafkaRecord, field: str) -> None:
        from confluent_kafka.schema_registry.error import SchemaRegistryError
        if isinstance(exc, SchemaRegistryError):
            status = exc.http_status_code
            if status < 500 and status not in _REGISTRY_DOWN_STATUS:
                return  # 404 unknown schema id, 422 bad reference, ...: the record is bad
            what = f"answered HTTP {status} ({exc.error_message})"
        elif isinstance(exc, _transport_errors()):
            what = f"could not be reached ({type(exc).__name__}: {exc})"
        else:
            return
        raise SchemaRegistryUnavailableError(
            f"the Schema Registry at {shown_url(self._registry_url or '')} {what} while "
            f"decoding the {field} of {record.topic}/{record.partition}/{record.offset}. "
            "The record is not dead-lettered: the bundle fails, and a micro-batch stays "
            "pending and is replayed from the same offsets on the next run. Check that the "
            "registry is up and that schema_registry_url= and the credentials in "
            "schema_registry_config are right, then run again") from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The network-level errors of the registry's HTTP client (httpx2, which
    confluent-kafka's schemaregistry extra installs on Python >= 3.10)."""
    import httpx2
    return (httpx2.TransportError, OSError)


class DecodeRecords(beam.PTransform[beam.PCollection[KafkaRecord], beam.pvalue.DoOutputsTuple]):
    """Decodes :class:`~beam_zdl.KafkaRecord` keys and values; undecodable records become
    dead letters.

    Example::

        result = records | beam_zdl.DecodeRecords(
            value="avro", key="string", schema_registry_url="http://registry:8081")
        result.records       # DecodedRecord(topic, partition, offset, timestamp_ms,
                             #               key, value, headers)
        result.dead_letters  # DeadLetter(..., field, error_type, error)

    Args:
        value: the value's decoder (see the module docstring); default ``"bytes"``.
        key: the key's decoder; default ``"bytes"``.
        schema_registry_url: the Confluent-compatible Schema Registry (one URL or a
            comma-separated list), needed by ``avro``, ``json_schema`` and
            :class:`Protobuf`.
        schema_registry_config: more ``SchemaRegistryClient`` settings
            (``basic.auth.user.info``, ``ssl.ca.location``, ``timeout``, ...); secrets
            may be ``${env:NAME}`` / ``${file:PATH}`` references.

    Returns (from ``expand``):
        Beam's tagged-output tuple: ``.records`` (:class:`DecodedRecord`) and
        ``.dead_letters`` (:class:`DeadLetter`).

    Raises:
        ConfigError: an unknown decoder, or a registry decoder without
            ``schema_registry_url``, at construction.
        SchemaRegistryUnavailableError: when the pipeline runs, if the registry is
            unreachable or answers 5xx (the batch fails; records are not dead-lettered).
    """

    def __init__(self, value: Decoder = "bytes", key: Decoder = "bytes", *,
                 schema_registry_url: Optional[str] = None,
                 schema_registry_config: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        self._fn = DecodeRecordsFn(value, key, schema_registry_url, schema_registry_config)

    def display_data(self) -> dict[str, str]:
        return self._fn.display_data()

    def expand(self, records: beam.PCollection[KafkaRecord]) -> beam.pvalue.DoOutputsTuple:
        outputs: beam.pvalue.DoOutputsTuple = records | "Decode" >> beam.ParDo(
            self._fn).with_outputs(DEAD_LETTERS, main="records")
        return outputs
