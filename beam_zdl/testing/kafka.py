"""LocalKafka: a real single-node Apache Kafka broker (KRaft) for tests and demos.

The broker's jars are resolved with Maven (see ``jars.py``); the broker runs
as a child JVM on free loopback ports with its data in a temporary folder.
With ``KAFKA_BOOTSTRAP_SERVERS`` set, nothing is started and that cluster is
used instead (``kill``/``restart`` are then refused).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any, Iterable, Tuple

from beam_zdl.errors import ZdlError
import beam_zdl.testing.jars as jars
from beam_zdl.testing._process import LocalServer, ServerProcess, free_port, wait_until

__all__ = ["LocalKafka"]

_LOGGER = logging.getLogger(__name__)

_LOG4J2 = """\
status = error
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka.server.KafkaRaftServer
logger.kafka.level = info
"""

# (key, value) or (key, value, partition) or (key, value, partition, headers)
Record = Tuple[Any, ...]


class LocalKafka(LocalServer):
    """A real Kafka broker on loopback, or the cluster in $KAFKA_BOOTSTRAP_SERVERS.

    Use as a context manager, or call ``start()`` and ``stop()``; after ``kill()``,
    ``restart()`` brings the broker back on its data.
    """

    EXTERNAL_ENV = "KAFKA_BOOTSTRAP_SERVERS"
    KIND = "cluster"
    LOG_NAME = "broker.log"

    def __init__(self, workdir: str | os.PathLike[str] | None = None,
                 heap_mb: int = 768, start_timeout_s: float = 90.0) -> None:
        super().__init__(workdir, prefix="localkafka-")
        self.heap_mb = heap_mb
        self.start_timeout_s = start_timeout_s
        self._port = free_port()
        self._controller_port = free_port()
        self._formatted = False

    # -- lifecycle ---------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return self.external or f"127.0.0.1:{self._port}"

    def start(self) -> "LocalKafka":
        """Start the broker (formatting its storage the first time) and wait until it serves."""
        if self.external:
            self._wait_ready()
            return self
        if self._proc and self._proc.alive():
            return self
        classpath = jars.classpath("kafka")
        java = jars.java_binary()
        props = self._write_config()
        jvm = [java, f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
               "-cp", classpath]
        if not self._formatted:
            cluster_id = _kafka_uuid()
            fmt = ServerProcess(jvm + ["kafka.tools.StorageTool", "format",
                                       f"--cluster-id={cluster_id}",
                                       "-c", str(props), "--ignore-formatted"],
                                self.workdir / "format.log")
            fmt.start()
            if fmt.wait() != 0:
                raise ZdlError("formatting Kafka storage failed:\n" +
                               (self.workdir / "format.log").read_text()[-3000:])
            self._formatted = True
        self._proc = ServerProcess(jvm + ["kafka.Kafka", str(props)], self.log_file)
        self._proc.start()
        self._wait_ready()
        return self

    # -- helpers -----------------------------------------------------------

    def admin(self) -> Any:
        from confluent_kafka.admin import AdminClient
        return AdminClient({"bootstrap.servers": self.bootstrap_servers})

    def create_topic(self, name: str | None = None, partitions: int = 1,
                     **configs: str) -> str:
        """Create a topic (a uuid name when none is given) and wait until it serves."""
        from confluent_kafka.admin import NewTopic
        name = name or f"t-{uuid.uuid4().hex[:12]}"
        topic_configs = {k.replace("_", "."): str(v) for k, v in configs.items()}
        admin = self.admin()
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1,
                      config=topic_configs)], operation_timeout=30)
        futures[name].result(timeout=60)
        wait_until(lambda: self._topic_ready(name, partitions), 30,
                   f"topic {name} on {self.bootstrap_servers}")
        return name

    def produce(self, topic: str, records: Iterable[Record],
                config: dict[str, Any] | None = None) -> int:
        """Produce records: ``(key, value)``, optionally ``partition``, ``headers`` and a
        timestamp in epoch milliseconds.

        Returns how many were acknowledged; raises if any delivery failed.
        """
        from confluent_kafka import Producer
        producer = Producer({"bootstrap.servers": self.bootstrap_servers,
                             "linger.ms": 5, "enable.idempotence": True,
                             "batch.size": 512 * 1024, **(config or {})})
        failures: list[str] = []
        acked = 0

        def on_delivery(err: Any, msg: Any) -> None:
            nonlocal acked
            if err is not None:
                failures.append(str(err))
            else:
                acked += 1

        for record in records:
            key, value, *rest = record
            kwargs: dict[str, Any] = {}
            if rest and rest[0] is not None:
                kwargs["partition"] = rest[0]
            if len(rest) > 1 and rest[1]:
                kwargs["headers"] = rest[1]
            if len(rest) > 2 and rest[2] is not None:
                kwargs["timestamp"] = rest[2]
            while True:
                try:
                    producer.produce(topic, value=value, key=key,
                                     on_delivery=on_delivery, **kwargs)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        remaining = producer.flush(120)
        if failures or remaining:
            raise ZdlError(f"producing to {topic} failed: {remaining} undelivered, "
                           f"errors: {failures[:5]}")
        return acked

    def produce_transactions(
            self, topic: str, transactions: Iterable[tuple[bool, list[Record]]],
    ) -> set[tuple[str, int, int]]:
        """Produce each list of records in one transaction: committed when its flag is
        True, aborted otherwise. Returns ``(topic, partition, offset)`` of every record
        of a committed transaction.

        The producer is flushed before each transaction ends: librdkafka against Kafka
        4.1 can fail ending one whose records are still in flight (INVALID_TXN_STATE).
        """
        from confluent_kafka import Producer
        producer = Producer({"bootstrap.servers": self.bootstrap_servers, "linger.ms": 5,
                             "transactional.id": f"beam-zdl-test-{uuid.uuid4().hex[:8]}"})
        producer.init_transactions(60)
        committed: set[tuple[str, int, int]] = set()
        for commit, records in transactions:
            delivered: list[tuple[str, int, int]] = []
            failures: list[str] = []

            def on_delivery(err: Any, msg: Any) -> None:
                if err is not None:
                    failures.append(str(err))
                else:
                    delivered.append((msg.topic(), msg.partition(), msg.offset()))

            producer.begin_transaction()
            for key, value, *rest in records:
                kwargs = {"partition": rest[0]} if rest and rest[0] is not None else {}
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery,
                                 **kwargs)
            remaining = producer.flush(60)
            if failures or remaining:
                raise ZdlError(f"producing a transaction to {topic} failed: {remaining} "
                               f"undelivered, errors: {failures[:5]}")
            if commit:
                producer.commit_transaction(60)
                committed.update(delivered)
            else:
                producer.abort_transaction(60)
        return committed

    def end_offsets(self, topic: str) -> dict[int, int]:
        """High watermark of each partition of ``topic``."""
        from confluent_kafka import Consumer, TopicPartition
        consumer = Consumer({"bootstrap.servers": self.bootstrap_servers,
                             "group.id": "beam-zdl-localkafka-probe"})
        try:
            meta = consumer.list_topics(topic, timeout=30).topics[topic]
            return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                    for p in sorted(meta.partitions)}
        finally:
            consumer.close()

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offset per partition (-1001 where none)."""
        from confluent_kafka import Consumer, TopicPartition
        consumer = Consumer({"bootstrap.servers": self.bootstrap_servers,
                             "group.id": group, "enable.auto.commit": False})
        try:
            meta = consumer.list_topics(topic, timeout=30).topics[topic]
            tps = consumer.committed([TopicPartition(topic, p) for p in meta.partitions],
                                     timeout=30)
            return {tp.partition: tp.offset for tp in tps}
        finally:
            consumer.close()

    # -- internals ---------------------------------------------------------

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        (self.workdir / "log4j2.properties").write_text(_LOG4J2)
        props = self.workdir / "server.properties"
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self._controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self._port},"
            f"CONTROLLER://127.0.0.1:{self._controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self._port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "group.consumer.heartbeat.interval.ms=1000",
            "group.consumer.min.heartbeat.interval.ms=500",
            "group.consumer.session.timeout.ms=6000",
            "group.consumer.min.session.timeout.ms=6000",
            "group.min.session.timeout.ms=1000",
            "log.segment.bytes=16777216",
            "log.retention.check.interval.ms=1000",
            "log.cleaner.backoff.ms=500",
            "log.initial.task.delay.ms=500",
            "auto.create.topics.enable=false",
            "",
        ]))
        return props

    def _wait_ready(self) -> None:
        def ready() -> bool:
            from confluent_kafka.admin import AdminClient
            admin = AdminClient({"bootstrap.servers": self.bootstrap_servers,
                                 "socket.connection.setup.timeout.ms": 1000,
                                 "log_level": 0})
            admin.list_topics(timeout=2)
            # The group coordinator must answer too, or the first commit stalls.
            admin.list_consumer_groups(request_timeout=2).result(timeout=3)
            return True

        alive = None if self.external else (lambda: self._proc is not None and self._proc.alive())
        wait_until(ready, self.start_timeout_s,
                   f"Kafka at {self.bootstrap_servers}", log=None if self.external else self.log_file,
                   alive=alive)

    def _topic_ready(self, name: str, partitions: int) -> bool:
        meta = self.admin().list_topics(name, timeout=5).topics.get(name)
        return (meta is not None and meta.error is None and len(meta.partitions) == partitions
                and all(p.leader >= 0 for p in meta.partitions.values()))


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
