"""Real-component harnesses for tests and demos: Kafka, GCS emulator, HDFS, Flink, a Schema
Registry."""

from beam_zdl.testing.flink_cluster import LocalFlink
from beam_zdl.testing.gcs import LocalGcs
from beam_zdl.testing.hdfs import LocalHdfs
from beam_zdl.testing.kafka import LocalKafka
from beam_zdl.testing.schema_registry import LocalSchemaRegistry

__all__ = ["LocalKafka", "LocalGcs", "LocalHdfs", "LocalFlink", "LocalSchemaRegistry"]
