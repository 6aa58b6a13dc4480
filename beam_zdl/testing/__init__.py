"""Real-component harnesses for tests and demos: Kafka, GCS emulator, HDFS, Flink."""

from beam_zdl.testing.flink_cluster import LocalFlink
from beam_zdl.testing.gcs import LocalGcs
from beam_zdl.testing.hdfs import LocalHdfs
from beam_zdl.testing.kafka import LocalKafka

__all__ = ["LocalKafka", "LocalGcs", "LocalHdfs", "LocalFlink"]
