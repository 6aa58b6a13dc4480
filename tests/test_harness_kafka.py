"""LocalKafka itself: a real broker that keeps data and group offsets across a crash."""

import uuid

import pytest
from confluent_kafka import Consumer

from beam_zdl.testing import LocalKafka


def _read_all(bootstrap: str, topic: str, expected: int, group: str | None = None) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap,
                         "group.id": group or f"g-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    records = []
    try:
        idle = 0
        while len(records) < expected and idle < 100:
            batch = consumer.consume(1000, timeout=0.2)
            idle = 0 if batch else idle + 1
            for msg in batch:
                assert msg.error() is None, msg.error()
                records.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
        if group:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return records


def test_10k_records_round_trip_exactly(kafka):
    topic = kafka.create_topic(partitions=4)
    sent = {(str(i).encode(), f"value-{i}".encode()) for i in range(10_000)}
    assert kafka.produce(topic, sent) == 10_000

    got = _read_all(kafka.bootstrap_servers, topic, 10_000)

    assert len(got) == 10_000
    assert {(k, v) for _, _, k, v in got} == sent
    assert sum(kafka.end_offsets(topic).values()) == 10_000
    assert len({p for p, _, _, _ in got}) == 4


@pytest.mark.slow  # make test kills the broker in test_finished's mid-run test
@pytest.mark.skipif("KAFKA_BOOTSTRAP_SERVERS" in __import__("os").environ,
                    reason="an external cluster cannot be killed by the suite")
def test_killed_broker_keeps_data_and_committed_offsets():
    with LocalKafka() as broker:
        topic = broker.create_topic(partitions=2)
        broker.produce(topic, ((str(i).encode(), b"v") for i in range(500)))
        group = f"g-{uuid.uuid4().hex}"
        assert len(_read_all(broker.bootstrap_servers, topic, 500, group=group)) == 500
        before = broker.committed(group, topic)
        assert sum(before.values()) == 500

        broker.kill()
        assert not broker.alive()
        broker.restart()

        assert broker.end_offsets(topic) == {0: before[0], 1: before[1]}
        assert broker.committed(group, topic) == before
        assert len(_read_all(broker.bootstrap_servers, topic, 500)) == 500
