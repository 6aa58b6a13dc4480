"""DecodeRecords on a real broker and a real Schema Registry (Apicurio, Confluent API).

Records are written with confluent-kafka's own serializers, read by beam_zdl's
ReadFromKafka (or run_micro_batches), decoded, and the real outputs inspected:
decoded values, dead letters with their exact offsets, the dead-letter metric,
a dead-letter topic written by WriteToKafka, and a registry outage that fails
the batch (dead-lettering nothing) and is replayed once the registry is back.
"""

from __future__ import annotations

import importlib
import json
import sys
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.transforms.display import DisplayData
from hypothesis import given, settings, strategies as st

import beam_zdl
from beam_zdl.coordinator import CheckpointCoordinator
from beam_zdl.decode import (DEAD_LETTER_HEADER_PREFIX, DEAD_LETTERS, DecodeRecordsFn,
                             JsonSchema, Protobuf)
from beam_zdl.errors import ConfigError, ZdlError
from beam_zdl.options import ZdlOptions
from beam_zdl.records import KafkaHeader, KafkaRecord
from beam_zdl.runners import pipeline_runner
from beam_zdl.testing._process import free_port

PROTOS = Path(__file__).resolve().parent / "protos"

USER_SCHEMA = json.dumps({"type": "record", "name": "User", "fields": [
    {"name": "name", "type": "string"}, {"name": "age", "type": "int"}]})
POINT_SCHEMA = json.dumps({"$schema": "http://json-schema.org/draft-07/schema#",
                           "title": "Point", "type": "object",
                           "properties": {"x": {"type": "integer"}}, "required": ["x"]})
UNKNOWN_SCHEMA_ID = (999_999).to_bytes(4, "big")


@pytest.fixture(scope="module")
def order_pb2(tmp_path_factory):
    """tests/protos/decode_test.proto compiled with protoc (grpcio-tools) and imported."""
    from grpc_tools import protoc
    out = tmp_path_factory.mktemp("protos")
    assert protoc.main(["protoc", f"-I{PROTOS}", f"--python_out={out}",
                        str(PROTOS / "decode_test.proto")]) == 0
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("decode_test_pb2")
    finally:
        sys.path.remove(str(out))
        sys.modules.pop("decode_test_pb2", None)


def _serialize(serializer, topic: str, obj) -> bytes:
    from confluent_kafka.serialization import MessageField, SerializationContext
    return serializer(obj, SerializationContext(topic, MessageField.VALUE))


def _read(kafka, topic: str):
    return beam_zdl.ReadFromKafka(
        consumer_config={"bootstrap.servers": kafka.bootstrap_servers,
                         "group.id": f"g-{topic}", "auto.offset.reset": "earliest"},
        topics=[topic])


class _WriteEach(beam.DoFn):
    """One JSON file per element, written at once: what a failed bundle emitted stays seen."""

    def __init__(self, out_dir: Path) -> None:
        self._out_dir = str(out_dir)

    def process(self, row) -> None:
        Path(self._out_dir).mkdir(parents=True, exist_ok=True)
        (Path(self._out_dir) / f"{uuid.uuid4().hex}.json").write_text(json.dumps(row))


def _rows(out_dir: Path) -> list:
    return sorted(json.loads(p.read_text()) for p in Path(out_dir).glob("*.json"))


def _dead_row(d) -> list:
    return [d.topic, d.offset, d.field, d.error_type, d.key.hex() if d.key else None,
            d.value.hex() if d.value else None]


def _consume_all(kafka, topic: str) -> list:
    """Every committed record of partition 0, up to its end offset (transaction markers
    take offsets too, so the position, not a count, says when to stop)."""
    import time
    from confluent_kafka import Consumer, TopicPartition
    end = kafka.end_offsets(topic)[0]
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                         "group.id": f"read-{topic}", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    partition = TopicPartition(topic, 0, 0)
    consumer.assign([partition])
    deadline = time.monotonic() + 60
    try:
        messages = []
        while consumer.position([partition])[0].offset < end:
            assert time.monotonic() < deadline, f"{topic} not read to offset {end} in 60 s"
            messages += [m for m in consumer.consume(10, timeout=1) if m.error() is None]
        return messages
    finally:
        consumer.close()


def test_avro_protobuf_json_schema_decode_and_bad_records_are_dead_letters_at_their_offsets(
        kafka, schema_registry, order_pb2, tmp_path):
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.schema_registry.json_schema import JSONSerializer
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    client = schema_registry.client()
    avro_t, proto_t, json_t, dlq_t = (kafka.create_topic() for _ in range(4))

    user = AvroSerializer(client, USER_SCHEMA)
    ann, bob, cy = (_serialize(user, avro_t, {"name": n, "age": a})
                    for n, a in [("ann", 3), ("bob", 4), ("cy", 5)])
    avro_records = [
        (b"k0", ann), (b"k1", bob),
        (b"k2", ann[:5] + b"\xff\xff\xff\xff"),        # 2: corrupted body, known schema id
        (b"k3", b"\x00" + UNKNOWN_SCHEMA_ID + ann[5:]),  # 3: schema id the registry lacks
        (b"k4", b"\x07" + ann[1:]),                      # 4: wrong magic byte
        (b"k5", None),                                   # 5: tombstone: decodes to None
        (b"\xff", bob),                                  # 6: key is not UTF-8
        (b"k7", cy)]
    order = ProtobufSerializer(order_pb2.Order, client, {"use.deprecated.format": False})
    o1 = _serialize(order, proto_t, order_pb2.Order(id="o1", cents=250))
    o2 = _serialize(order, proto_t, order_pb2.Order(id="o2", cents=-7, tags=["a", "b"]))
    proto_records = [(None, o1), (None, b"\x05" + o1[1:]), (None, o2),
                     (None, b"\x00" + UNKNOWN_SCHEMA_ID + o2[5:])]
    point = JSONSerializer(POINT_SCHEMA, client)
    p1 = _serialize(point, json_t, {"x": 1})
    json_records = [(None, p1), (None, p1[:5] + b'{"x": "one"}'),  # 1: fails the schema
                    (None, _serialize(point, json_t, {"x": 2}))]
    for topic, records in [(avro_t, avro_records), (proto_t, proto_records),
                           (json_t, json_records)]:
        kafka.produce(topic, records)

    url = schema_registry.url
    options = ZdlOptions([])
    pipeline = beam.Pipeline(runner=pipeline_runner(options), options=options)
    avro = (pipeline | "ReadAvro" >> _read(kafka, avro_t)
            | "Avro" >> beam_zdl.DecodeRecords(value="avro", key="string",
                                               schema_registry_url=url))
    proto = (pipeline | "ReadProto" >> _read(kafka, proto_t)
             | "Proto" >> beam_zdl.DecodeRecords(value=Protobuf(order_pb2.Order),
                                                 schema_registry_url=url))
    points = (pipeline | "ReadJson" >> _read(kafka, json_t)
              | "Json" >> beam_zdl.DecodeRecords(value=JsonSchema(),
                                                 schema_registry_url=url))
    decoded = (
        (avro.records | "A" >> beam.Map(lambda r: [r.topic, r.offset, r.key, r.value]),
         proto.records | "P" >> beam.Map(lambda r: [r.topic, r.offset, None,
                                                    [r.value.id, r.value.cents,
                                                     list(r.value.tags)]]),
         points.records | "J" >> beam.Map(lambda r: [r.topic, r.offset, None, r.value]))
        | "Decoded" >> beam.Flatten() | "WriteDecoded" >> beam.ParDo(_WriteEach(tmp_path / "ok")))
    dead = ((avro.dead_letters, proto.dead_letters, points.dead_letters)
            | "Dead" >> beam.Flatten())
    dead | "DeadRows" >> beam.Map(_dead_row) | "WriteDead" >> beam.ParDo(_WriteEach(tmp_path / "dead"))
    (avro.dead_letters | beam.Map(beam_zdl.DeadLetter.to_kafka_record)
     | beam_zdl.WriteToKafka(dlq_t, kafka.bootstrap_servers))
    result = pipeline.run()
    result.wait_until_finish()

    assert _rows(tmp_path / "ok") == sorted([
        [avro_t, 0, "k0", {"name": "ann", "age": 3}], [avro_t, 1, "k1", {"name": "bob", "age": 4}],
        [avro_t, 5, "k5", None], [avro_t, 7, "k7", {"name": "cy", "age": 5}],
        [proto_t, 0, None, ["o1", 250, []]], [proto_t, 2, None, ["o2", -7, ["a", "b"]]],
        [json_t, 0, None, {"x": 1}], [json_t, 2, None, {"x": 2}]])
    raw = {(avro_t, o): r for o, r in enumerate(avro_records)}
    raw.update({(proto_t, o): r for o, r in enumerate(proto_records)})
    raw.update({(json_t, o): r for o, r in enumerate(json_records)})
    expected_dead = [(avro_t, 2, "value", "IndexError"), (avro_t, 3, "value", "SchemaRegistryError"),
                     (avro_t, 4, "value", "SerializationError"),
                     (avro_t, 6, "key", "UnicodeDecodeError"),
                     (proto_t, 1, "value", "SerializationError"),
                     (proto_t, 3, "value", "SchemaRegistryError"),
                     (json_t, 1, "value", "SerializationError")]
    assert _rows(tmp_path / "dead") == sorted(
        [topic, offset, field, error, *(b.hex() if b else None for b in raw[topic, offset])]
        for topic, offset, field, error in expected_dead)
    # One counter per DecodeRecords step: their sum counts every dead letter.
    assert sum(c.committed for c in result.metrics().query()["counters"]
               if (c.key.metric.namespace, c.key.metric.name)
               == ("beam_zdl", "dead_letter_records")) == len(expected_dead)

    # The dead-letter topic: raw key and value as read, the failure in headers.
    written = sorted(_consume_all(kafka, dlq_t),
                     key=lambda m: int(dict(m.headers())[DEAD_LETTER_HEADER_PREFIX + "offset"]))
    assert [(m.key(), m.value()) for m in written] == [raw[avro_t, o] for o in (2, 3, 4, 6)]
    headers = [dict(m.headers()) for m in written]
    assert [(h[DEAD_LETTER_HEADER_PREFIX + "topic"], h[DEAD_LETTER_HEADER_PREFIX + "field"])
            for h in headers] == [(avro_t.encode(), b"value")] * 3 + [(avro_t.encode(), b"key")]
    assert b"404" in headers[1][DEAD_LETTER_HEADER_PREFIX + "error"]


def test_registry_outage_fails_the_batch_dead_letters_nothing_and_the_replay_decodes(
        kafka, schema_registry, tmp_path):
    from confluent_kafka.schema_registry.avro import AvroSerializer
    topic = kafka.create_topic()
    user = AvroSerializer(schema_registry.client(), USER_SCHEMA)
    kafka.produce(topic, [(None, _serialize(user, topic, {"name": f"u{i}", "age": i}))
                          for i in range(3)])
    # Nothing listens there: the registry is down. Credentials in the URL must not leak.
    down = f"http://alice:s3cret@127.0.0.1:{free_port()}"
    registry = {"url": down}

    def build(records, batch):
        result = records | beam_zdl.DecodeRecords(
            value="avro", schema_registry_url=registry["url"],
            schema_registry_config={"max.retries": 1, "retries.wait.ms": 50})
        result.records | "Ok" >> beam.Map(lambda r: [r.offset, r.value]) \
            | "WriteOk" >> beam.ParDo(_WriteEach(tmp_path / "ok"))
        result.dead_letters | "Dead" >> beam.Map(_dead_row) \
            | "WriteDead" >> beam.ParDo(_WriteEach(tmp_path / "dead"))

    options = ZdlOptions([f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
                          f"--checkpoint_dir={tmp_path / 'ckpt'}", f"--consumer_group=g-{topic}",
                          "--starting_offsets=earliest"])
    with pytest.raises(beam_zdl.SchemaRegistryUnavailableError) as failed:
        beam_zdl.run_micro_batches(build, options)

    message = str(failed.value)
    assert f"Schema Registry at http://<redacted>@127.0.0.1:{down.rsplit(':', 1)[1]}" in message
    assert f"{topic}/0/0" in message and "replayed" in message and "s3cret" not in message
    assert _rows(tmp_path / "dead") == [] and _rows(tmp_path / "ok") == []
    assert len(CheckpointCoordinator(str(tmp_path / "ckpt")).pending()) == 1

    registry["url"] = schema_registry.url
    summary = beam_zdl.run_micro_batches(build, options)

    assert summary.records == 3
    assert _rows(tmp_path / "ok") == [[i, {"name": f"u{i}", "age": i}] for i in range(3)]
    assert _rows(tmp_path / "dead") == []
    assert CheckpointCoordinator(str(tmp_path / "ckpt")).pending() == []


# -- the plain decoders, on the real DoFn (no broker needed) -----------------------------

def _decode(record: KafkaRecord, **decoders) -> list:
    fn = DecodeRecordsFn(**decoders)
    fn.setup()
    return list(fn.process(record))


def _record(value, key=None, offset=7) -> KafkaRecord:
    return KafkaRecord("t", 3, offset, key, value, 1234, [KafkaHeader("h", b"1")])


def _one_decoded(out):
    assert len(out) == 1 and isinstance(out[0], beam_zdl.DecodedRecord), out
    return out[0]


def _one_dead(out):
    assert len(out) == 1 and out[0].tag == DEAD_LETTERS, out
    return out[0].value


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_string_decodes_utf8_and_dead_letters_the_rest_with_its_coordinates(data):
    out = _decode(_record(data, key=b"k"), value="string", key="string")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        dead = _one_dead(out)
        assert (dead.topic, dead.partition, dead.offset, dead.timestamp_ms) == ("t", 3, 7, 1234)
        assert (dead.key, dead.value, dead.field, dead.error_type) == \
            (b"k", data, "value", "UnicodeDecodeError")
        assert dead.headers == [KafkaHeader("h", b"1")]
        return
    decoded = _one_decoded(out)
    assert (decoded.key, decoded.value, decoded.id) == ("k", text, "t/3/7")


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text()
                     | st.floats(allow_nan=False, allow_infinity=False),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(_JSON)
def test_json_round_trips_any_json_value(value):
    decoded = _one_decoded(_decode(_record(json.dumps(value).encode()), value="json"))
    assert decoded.value == value and decoded.key is None


@pytest.mark.parametrize("data, error_type", [
    (b"{'single': 'quotes'}", "JSONDecodeError"), (b"[1,", "JSONDecodeError"),
    (b"\xfe\xff", "UnicodeDecodeError")])
def test_json_dead_letters_what_is_not_json(data, error_type):
    assert _one_dead(_decode(_record(data), value="json")).error_type == error_type


def test_bytes_and_tombstones_pass_through():
    decoded = _one_decoded(_decode(_record(b"\x00raw", key=b"\xff"), value="bytes"))
    assert (decoded.key, decoded.value) == (b"\xff", b"\x00raw")
    assert _one_decoded(_decode(_record(None), value="json", key="json")).value is None


def test_a_user_callable_decodes_its_failures_are_dead_letters_and_zdl_errors_fail():
    assert _one_decoded(_decode(_record(b"42"), value=int)).value == 42
    dead = _one_dead(_decode(_record(b"forty-two", offset=9), value=int))
    assert (dead.offset, dead.error_type, dead.value) == (9, "ValueError", b"forty-two")
    assert "forty-two" in dead.error

    def outage(data: bytes):
        raise ZdlError("my lookup service is down")
    with pytest.raises(ZdlError, match="my lookup service is down"):
        _decode(_record(b"x"), value=outage)


def test_a_key_failure_is_a_dead_letter_of_field_key():
    dead = _one_dead(_decode(_record(b"{}", key=b"not json"), value="json", key="json"))
    assert (dead.field, dead.key, dead.value) == ("key", b"not json", b"{}")


def test_results_unpack_in_beam_order_records_then_dead_letters():
    with beam.Pipeline() as p:
        records, dead = (p | beam.Create([_record(b'{"a": 1}'), _record(b"nope", offset=8)])
                         | beam_zdl.DecodeRecords(value="json"))
        from apache_beam.testing.util import assert_that, equal_to
        assert_that(records | "O" >> beam.Map(lambda r: (r.offset, r.value)),
                    equal_to([(7, {"a": 1})]), label="Records")
        assert_that(dead | "D" >> beam.Map(lambda d: (d.offset, d.field)),
                    equal_to([(8, "value")]), label="DeadLetters")


def test_secrets_are_redacted_in_display_data():
    transform = beam_zdl.DecodeRecords(
        value="avro", key="string", schema_registry_url="https://bob:hunter2@registry.test:8081",
        schema_registry_config={"basic.auth.user.info": "alice:s3cret",
                                "bearer.auth.token": "tok-123", "timeout": 5,
                                "ssl.key.password": "${env:SR_KEY_PASSWORD}"})
    items = {item.key: item.value for item in DisplayData.create_from(transform).items}
    shown = json.dumps(items)
    for secret in ("hunter2", "alice:s3cret", "tok-123"):
        assert secret not in shown
    assert items["schema_registry_url"] == "https://<redacted>@registry.test:8081"
    config = json.loads(items["schema_registry_config"])
    assert config == {"basic.auth.user.info": "<redacted>", "bearer.auth.token": "<redacted>",
                      "timeout": 5, "ssl.key.password": "${env:SR_KEY_PASSWORD}"}
    assert (items["key"], items["value"]) == ("string", "avro")


@pytest.mark.parametrize("kwargs, message", [
    (dict(value="protobuf", schema_registry_url="http://r"), r"Protobuf\(MyMessage\)"),
    (dict(value="avro"), "pass schema_registry_url="),
    (dict(key=JsonSchema()), "pass schema_registry_url="),
    (dict(value="yaml"), r"DecodeRecords\(value='yaml'\) is not a decoder"),
    (dict(value=3), r"not int"),
    (dict(value="avro", schema_registry_url="http://a",
          schema_registry_config={"url": "http://b"}), "disagree"),
])
def test_bad_arguments_are_named_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        beam_zdl.DecodeRecords(**kwargs)


def test_the_readme_example_decodes_and_sends_dead_letters_to_a_topic(
        kafka, schema_registry, tmp_path):
    """examples/decode_dead_letters.py, which docs/decoding.md shows, as it is."""
    import importlib.util
    from confluent_kafka.schema_registry.avro import AvroSerializer
    spec = importlib.util.spec_from_file_location(
        "decode_dead_letters", Path(__file__).resolve().parents[1] / "examples"
        / "decode_dead_letters.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    topic, dlq = kafka.create_topic(), kafka.create_topic()
    user = AvroSerializer(schema_registry.client(), USER_SCHEMA)
    good = _serialize(user, topic, {"name": "ann", "age": 3})
    kafka.produce(topic, [(b"a", good), (b"b", b"not avro"), (b"c", good)])

    summary = example.main([
        f"--bootstrap_servers={kafka.bootstrap_servers}", f"--topics={topic}",
        f"--checkpoint_dir={tmp_path / 'ckpt'}", "--starting_offsets=earliest",
        f"--schema_registry_url={schema_registry.url}", f"--dead_letter_topic={dlq}",
        f"--output_dir={tmp_path / 'out'}"])

    assert summary.records == 3
    [written] = (tmp_path / "out").glob("batch-*.jsonl")
    assert [json.loads(line) for line in written.read_text().splitlines()] == [
        {"id": f"{topic}/0/{o}", "key": k, "value": {"name": "ann", "age": 3}}
        for o, k in [(0, "a"), (2, "c")]]
    [dead] = _consume_all(kafka, dlq)
    headers = dict(dead.headers())
    assert (dead.key(), dead.value()) == (b"b", b"not avro")
    assert headers[DEAD_LETTER_HEADER_PREFIX + "offset"] == b"1"
    assert headers[DEAD_LETTER_HEADER_PREFIX + "error_type"] == b"SerializationError"


@pytest.mark.slow
def test_a_killed_registry_process_fails_decoding_and_a_restarted_empty_one_dead_letters(
        tmp_path):
    """The outage for real: the registry process SIGKILLed, then back without its schemas."""
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from beam_zdl.testing.schema_registry import LocalSchemaRegistry
    with LocalSchemaRegistry(workdir=tmp_path) as registry:
        data = _serialize(AvroSerializer(registry.client(), USER_SCHEMA), "t",
                          {"name": "ann", "age": 3})
        record = KafkaRecord("t", 0, 5, None, data, 0, [])
        assert _one_decoded(_decode(record, value="avro", registry_url=registry.url)).value == \
            {"name": "ann", "age": 3}

        registry.kill()
        with pytest.raises(beam_zdl.SchemaRegistryUnavailableError,
                           match=f"{registry.url}.* could not be reached .* t/0/5"):
            _decode(record, value="avro", registry_url=registry.url,
                    registry_config={"max.retries": 1, "retries.wait.ms": 50})

        registry.restart()  # in-memory storage: schema id 1 is unknown now
        dead = _one_dead(_decode(record, value="avro", registry_url=registry.url))
        assert (dead.offset, dead.error_type) == (5, "SchemaRegistryError")
        assert "404" in dead.error
