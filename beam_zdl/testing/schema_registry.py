"""LocalSchemaRegistry: a real Confluent-compatible Schema Registry for tests and demos.

Apicurio Registry (in-memory storage) runs as a child JVM on a free loopback
port; its Confluent-compatible API is at ``/apis/ccompat/v7``, which is what
:attr:`LocalSchemaRegistry.url` names, so confluent-kafka's
``SchemaRegistryClient``, serializers and deserializers talk to it as to
Confluent's own registry. The registry is built from Maven Central once into
the cache (see ``java/schema-registry/pom.xml`` for why it is built and which
version); it starts in about 15 s on 2 cores. Schemas live in memory: a
restart forgets them.

With ``SCHEMA_REGISTRY_URL`` set, nothing is started and that registry is used
instead (``kill``/``restart`` are then refused).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import requests

import beam_zdl.testing.jars as jars
from beam_zdl.testing._process import LocalServer, ServerProcess, free_port, wait_until

__all__ = ["LocalSchemaRegistry"]

_LOGGER = logging.getLogger(__name__)

_API = "/apis/ccompat/v7"


class LocalSchemaRegistry(LocalServer):
    """Apicurio Registry on 127.0.0.1, or the registry in $SCHEMA_REGISTRY_URL.

    Use as a context manager, or call ``start()`` and ``stop()``. ``kill()``
    SIGKILLs it (an outage); ``restart()`` starts it again on the same port,
    empty (storage is in memory).

    Args:
        workdir: the folder of its log; a new temporary folder (deleted on
            ``stop``) when None.
        heap_mb: the JVM's maximum heap.
        start_timeout_s: how long to wait for the registry to answer.
    """

    EXTERNAL_ENV = "SCHEMA_REGISTRY_URL"
    KIND = "registry"
    LOG_NAME = "schema-registry.log"
    STOP_TIMEOUT_S = 15.0

    def __init__(self, workdir: str | os.PathLike[str] | None = None, heap_mb: int = 384,
                 start_timeout_s: float = 120.0) -> None:
        super().__init__(workdir, prefix="localschemaregistry-")
        self.heap_mb = heap_mb
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.startup_s: float | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        """The Confluent-compatible API: what ``SchemaRegistryClient({'url': ...})`` takes."""
        return self.external or f"http://127.0.0.1:{self.port}{_API}"

    def start(self) -> "LocalSchemaRegistry":
        """Start the registry (building it the first time) and wait until it answers.

        Returns:
            self, for chaining.

        Raises:
            ZdlError: Java or Maven is missing, the build failed, or the registry exits or
                does not answer within ``start_timeout_s`` (the message holds its log tail).
        """
        if self.external:
            wait_until(self._ready, self.start_timeout_s, f"Schema Registry at {self.url}")
            return self
        if self._proc and self._proc.alive():
            return self
        runner = jars.runner_jar("schema-registry")  # before the clock: a first build is slow
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # C1-only JIT and one GC thread: the registry is small, and on 2 cores a start
        # spent compiling competes with the tests.
        self._proc = ServerProcess(
            [jars.java_binary(), f"-Xmx{self.heap_mb}m", "-XX:TieredStopAtLevel=1",
             "-XX:+UseSerialGC", "-Djava.awt.headless=true",
             "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}",
             "-jar", str(runner)],
            self.log_file)
        self._proc.start_serving(self._ready, self.start_timeout_s,
                                 f"Schema Registry at {self.url}")
        self.startup_s = time.monotonic() - began
        _LOGGER.info("Schema Registry serving at %s after %.1f s", self.url, self.startup_s)
        return self

    # -- helpers -----------------------------------------------------------

    def client(self, **config: object) -> Any:
        """A confluent-kafka ``SchemaRegistryClient`` for this registry."""
        from confluent_kafka.schema_registry import SchemaRegistryClient
        return SchemaRegistryClient({"url": self.url, **config})

    # -- internals ---------------------------------------------------------

    def _ready(self) -> bool:
        return requests.get(f"{self.url}/subjects", timeout=2).status_code == 200
